//! The blast-radius guard. Before a converge executes destructive actions (suspend, revoke, end
//! sessions) for a user, the guard counts the distinct users whose destructive actions ran in the
//! tenant's sliding 15-minute window. If this user would push the count past
//! `max_destructive_per_15m`, or past `max_destructive_percent_per_15m` of the tenant's users once
//! the count is above `percent_applies_above`, the guard trips: this user's destructive actions,
//! and every later one, are held in the quarantine (recorded, not executed) until an admin
//! releases (they run) or discards (they are dropped, audited) them.
//!
//! Units: the guard counts users, not individual actions. One deactivation suspends several
//! factors and ends sessions; the thresholds read as "how many people may lose access in 15
//! minutes", which is what a misconfigured IdP scope gets wrong. The percentage base is the
//! tenant's active users plus the users already counted in the window (those were mostly active
//! before the window began, and a mass deactivation must not shrink its own denominator).
//!
//! Not here: planning (see `plan.rs`) or executing actions; SQL (`store.rs`).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::AnyConnection;

use super::store::{self, CountRange, GuardBase, GuardRow, QuarantineEntry, WindowTally};
use crate::audit::{self, AuditActor, AuditEntry};
use crate::policy::GuardRule;
use crate::store::{ts_from, Db, StoreError};

/// The sliding window.
pub const WINDOW_MINUTES: i64 = 15;

/// What the guard decided for one converge's destructive actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Execute,
    /// Hold them back. `tripped_now`: this decision tripped the guard (alert once).
    Quarantine {
        tripped_now: bool,
        reason: String,
    },
}

/// Whether `count` distinct users (this one included) out of a base of `base` users passes the
/// tenant's bounds; the reason when it does.
pub fn exceeds(count: i64, base: i64, rule: &GuardRule) -> Option<String> {
    let max = i64::try_from(rule.max_destructive_per_15m).unwrap_or(i64::MAX);
    if count > max {
        return Some(format!(
            "{count} users with destructive actions in {WINDOW_MINUTES} minutes exceeds \
             max_destructive_per_15m = {max}"
        ));
    }
    let floor = i64::try_from(rule.percent_applies_above).unwrap_or(i64::MAX);
    let percent = rule.max_destructive_percent_per_15m;
    if count > floor && (count as f64) * 100.0 > percent * (base.max(1) as f64) {
        return Some(format!(
            "{count} of {base} users with destructive actions in {WINDOW_MINUTES} minutes \
             exceeds max_destructive_percent_per_15m = {percent} (applies above {floor})"
        ));
    }
    None
}

/// Where the tenant's window starts now: 15 minutes ago, or the last release/discard if later.
fn window_start(row: &GuardRow, now: DateTime<Utc>) -> String {
    let sliding = ts_from(now - Duration::minutes(WINDOW_MINUTES));
    match &row.window_start {
        Some(w) if *w > sliding => w.clone(),
        _ => sliding,
    }
}

/// What a guard check decided, and whether the tenant's percentage base should be counted
/// again: the caller does that after its transaction ([`refresh_base_soon`]), so no count ever
/// runs under the guard's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub verdict: Verdict,
    pub base_stale: bool,
}

impl Checked {
    /// A verdict with nothing else to do.
    pub fn verdict(verdict: Verdict) -> Checked {
        Checked {
            verdict,
            base_stale: false,
        }
    }
}

/// Decides, inside the converge's decision transaction, whether `user_id`'s `destructive`
/// actions may run; counts them when they may. `bypass`: an admin released this user's
/// quarantined actions (they run and do not count).
pub async fn check(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
    destructive: usize,
    rule: &GuardRule,
    bypass: bool,
    now: DateTime<Utc>,
) -> Result<Checked, sqlx::Error> {
    let row = store::lock_guard(conn, tenant_id).await?;
    if row.tripped && !bypass {
        return Ok(Checked::verdict(Verdict::Quarantine {
            tripped_now: false,
            reason: row
                .trip_reason
                .unwrap_or_else(|| "the guard is tripped".into()),
        }));
    }
    let since = window_start(&row, now);
    // Bring the running count to this window's start: only the rows between its old start and
    // the new one are counted (once each as they leave the window), so a check costs the same
    // with ten users in the window or a hundred thousand. A start that moved back (another
    // replica's clock) regains the rows in between.
    let (range, from, sign) = match &row.tally {
        None => (CountRange::From(&since), 0, 1),
        Some(t) if t.since <= since => (CountRange::Between(&t.since, &since), t.counted, -1),
        Some(t) => (CountRange::Between(&since, &t.since), t.counted, 1),
    };
    let (user, moved) = store::guard_window_read(conn, tenant_id, user_id, range).await?;
    let counted = from + sign * moved;
    // A user already counted in the window adds nothing; their row moves to now.
    let already = user.as_ref().is_some_and(|r| !r.bypass && r.at >= since);
    let mut base_stale = false;
    if !bypass && !already {
        // The percentage base costs a count over the tenant's users: only read it when the
        // percentage bound can apply (see `percentage_base`).
        let floor = i64::try_from(rule.percent_applies_above).unwrap_or(i64::MAX);
        let base = if counted + 1 > floor {
            let (base, stale) = percentage_base(conn, tenant_id, &row, counted, now).await?;
            base_stale = stale;
            base
        } else {
            0
        };
        if let Some(reason) = exceeds(counted + 1, base, rule) {
            store::set_tripped(conn, tenant_id, &reason).await?;
            let verdict = Verdict::Quarantine {
                tripped_now: true,
                reason,
            };
            return Ok(Checked {
                verdict,
                base_stale,
            });
        }
    }
    let at = ts_from(now);
    let enters = !bypass && at >= since;
    let tally = WindowTally {
        counted: counted - i64::from(already) + i64::from(enters),
        since,
    };
    // Prune the window table now and then (rows older than a day count for nothing).
    let prune = (rand::random::<u8>() < 3).then(|| ts_from(now - Duration::days(1)));
    let action = store::GuardAction {
        user_id,
        at: &at,
        actions: destructive as i64,
        bypass,
    };
    store::record_guard_action(conn, tenant_id, &action, &tally, prune.as_deref()).await?;
    Ok(Checked {
        verdict: Verdict::Execute,
        base_stale,
    })
}

/// How long a counted percentage base is used before it is counted again.
const BASE_TTL_SECONDS: i64 = 60;

/// The percentage base, and whether it is stale: the tenant's active users plus the `counted`
/// users of the window (mostly active before it began: a mass deactivation must not shrink its
/// own denominator).
///
/// Counting the active users walks the tenant's users (a million index entries at a million
/// users), and inside the check it would hold the guard's lock, and every converge of the
/// tenant, for as long. So the base is kept on the guard row; once it is a minute old, the
/// check still uses it and says so, and the caller has it counted again outside the lock
/// ([`refresh_base_soon`]). It barely moves meanwhile: a user deactivated leaves the active
/// count and enters the window's; users created or deleted since the last count are what it
/// can miss. The server counts every tenant's base as it starts ([`prime_bases`]); only a
/// check that finds none (a tenant created since) counts inside the check.
async fn percentage_base(
    conn: &mut AnyConnection,
    tenant_id: &str,
    row: &GuardRow,
    counted: i64,
    now: DateTime<Utc>,
) -> Result<(i64, bool), sqlx::Error> {
    if let Some((users, at)) = &row.base {
        let ttl = Duration::seconds(BASE_TTL_SECONDS);
        // A base stamped well in the future (a replica's clock far off) is counted again too.
        // Only well: converges in flight began before the last count's stamp, and a base
        // "from the future" to them must not send every one of them counting again.
        let stale = *at < ts_from(now - ttl) || *at > ts_from(now + ttl);
        return Ok((*users, stale));
    }
    tracing::debug!(
        tenant = tenant_id,
        "no percentage base yet: counting it in the check"
    );
    let users = store::count_active_users(&mut *conn, tenant_id).await? + counted;
    store::set_guard_base(conn, tenant_id, GuardBase::Exact(users), &ts_from(now)).await?;
    Ok((users, false))
}

/// Starts [`refresh_base`] for the tenant unless one is already running in this process.
/// Call it outside any write (a check reports `base_stale`; see [`Checked`]).
pub fn refresh_base_soon(db: &Db, tenant_id: &str) {
    static RUNNING: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        if running.iter().any(|t| t == tenant_id) {
            return;
        }
        running.push(tenant_id.to_string());
    }
    let (db, tenant) = (db.clone(), tenant_id.to_string());
    tokio::spawn(async move {
        if let Err(e) = refresh_base(&db, &tenant).await {
            // The old base stays in use; the next check asks again.
            tracing::warn!(tenant = %tenant, error = %e, "cannot count the guard's percentage base");
        }
        RUNNING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t| *t != tenant);
    });
}

/// Counts every tenant's percentage base in the background, so that not even a tenant's first
/// check has to count it under the guard's lock (the server does this as it starts).
pub fn prime_bases(db: &Db) {
    let db = db.clone();
    tokio::spawn(async move {
        let tenants = match crate::store::tenants::list_tenants(&db.pool).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list tenants to count the guard's bases");
                return;
            }
        };
        for t in tenants {
            if let Err(e) = refresh_base(&db, &t.id).await {
                tracing::warn!(tenant = %t.id, error = %e, "cannot count the guard's percentage base");
            }
        }
    });
}

/// Counts the tenant's active users (a read outside any transaction: no lock is held while it
/// walks them) and stores the percentage base with the window's count as of the update.
pub async fn refresh_base(db: &Db, tenant_id: &str) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let at = ts_from(Utc::now());
    let active = store::count_active_users(&db.pool, tenant_id).await?;
    tracing::debug!(
        tenant = tenant_id,
        active,
        ms = started.elapsed().as_millis() as u64,
        "counted the guard's percentage base"
    );
    let tenant = tenant_id.to_string();
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            store::set_guard_base(conn, &tenant, GuardBase::ActivePlusCounted(active), &at).await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
}

/// A tenant's guard, for `guard status` and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardStatus {
    pub tenant_id: String,
    pub tripped: bool,
    pub tripped_at: Option<String>,
    pub trip_reason: Option<String>,
    /// Start of the current window (15 minutes ago, or the last release/discard).
    pub window_start: String,
    /// Distinct users whose destructive actions counted in the window.
    pub window_users: i64,
    pub quarantined: Vec<QuarantineEntry>,
}

pub async fn status(db: &Db, tenant_id: &str) -> Result<GuardStatus, sqlx::Error> {
    let row = store::read_guard(db, tenant_id).await?;
    let start = window_start(&row, Utc::now());
    let window_users = store::window_count(db, tenant_id, &start).await?;
    Ok(GuardStatus {
        tenant_id: tenant_id.to_string(),
        tripped: row.tripped,
        tripped_at: row.tripped_at,
        trip_reason: row.trip_reason,
        window_start: start,
        window_users,
        quarantined: store::list_quarantine(db, tenant_id).await?,
    })
}

/// What a release or discard touched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolution {
    pub was_tripped: bool,
    /// Users whose held actions were released (converged again) or discarded.
    pub users: Vec<String>,
}

/// Un-trips the guard and lets every quarantined user's destructive actions run: each user is
/// converged again (level-triggered: what runs is what the policy wants now, not what was held),
/// bypassing the guard once. The window restarts now. Audited.
pub async fn release(
    db: &Db,
    tenant_id: &str,
    actor: AuditActor,
) -> Result<Resolution, StoreError> {
    let tenant = tenant_id.to_string();
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            let row = store::lock_guard(conn, &tenant).await?;
            let held = store::held_quarantine(conn, &tenant).await?;
            store::mark_released(conn, &tenant).await?;
            for q in &held {
                crate::jobs::enqueue_converge(conn, &tenant, &q.user_id, "guard_release", None)
                    .await?;
            }
            store::reset_guard(conn, &tenant).await?;
            let users: Vec<String> = held.iter().map(|q| q.user_id.clone()).collect();
            audit::append(
                conn,
                &tenant,
                AuditEntry::new(
                    audit::kinds::GUARD_RELEASED,
                    actor,
                    None,
                    json!({
                        "was_tripped": row.tripped,
                        "trip_reason": row.trip_reason,
                        "users": users,
                    }),
                ),
            )
            .await?;
            Ok::<_, StoreError>(Resolution {
                was_tripped: row.tripped,
                users,
            })
        })
    })
    .await
}

/// Un-trips the guard and drops every quarantined action, with one audit entry per user. The
/// users are not converged again until their next trigger (a SCIM change, the nightly run).
pub async fn discard(
    db: &Db,
    tenant_id: &str,
    actor: AuditActor,
) -> Result<Resolution, StoreError> {
    let tenant = tenant_id.to_string();
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            let row = store::lock_guard(conn, &tenant).await?;
            let held = store::held_quarantine(conn, &tenant).await?;
            store::delete_held(conn, &tenant).await?;
            store::reset_guard(conn, &tenant).await?;
            for q in &held {
                audit::append(
                    conn,
                    &tenant,
                    AuditEntry::new(
                        audit::kinds::GUARD_DISCARDED,
                        actor.clone(),
                        Some(&q.user_id),
                        json!({
                            "quarantine_id": q.id,
                            "actions": q.actions,
                            "held_since": q.created,
                            "trip_reason": row.trip_reason,
                        }),
                    ),
                )
                .await?;
            }
            if held.is_empty() {
                audit::append(
                    conn,
                    &tenant,
                    AuditEntry::new(
                        audit::kinds::GUARD_DISCARDED,
                        actor,
                        None,
                        json!({ "was_tripped": row.tripped, "users": [] }),
                    ),
                )
                .await?;
            }
            Ok::<_, StoreError>(Resolution {
                was_tripped: row.tripped,
                users: held.iter().map(|q| q.user_id.clone()).collect(),
            })
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(max: u64, percent: f64, floor: u64) -> GuardRule {
        GuardRule {
            max_destructive_per_15m: max,
            max_destructive_percent_per_15m: percent,
            percent_applies_above: floor,
        }
    }

    #[test]
    fn absolute_bound() {
        let r = rule(50, 100.0, 1000);
        assert_eq!(exceeds(50, 10_000, &r), None);
        assert!(exceeds(51, 10_000, &r)
            .unwrap()
            .contains("max_destructive_per_15m = 50"));
    }

    #[test]
    fn percentage_bound_has_a_floor() {
        let r = rule(50, 5.0, 20);
        // A ten-person tenant offboards one person: 10 % but under the floor.
        assert_eq!(exceeds(1, 10, &r), None);
        // 21 of 100 is past the floor and past 5 %.
        assert!(exceeds(21, 100, &r).unwrap().contains("percent"));
        // 21 of 1000 is 2.1 %: fine; 51 of 1000 trips on the absolute bound.
        assert_eq!(exceeds(21, 1000, &r), None);
        assert!(exceeds(51, 1000, &r)
            .unwrap()
            .contains("max_destructive_per_15m"));
        // Exactly at the percentage is not past it.
        assert_eq!(exceeds(25, 500, &rule(50, 5.0, 20)), None);
        assert!(exceeds(26, 500, &rule(50, 5.0, 20)).is_some());
    }

    #[test]
    fn zero_base_does_not_divide_by_zero() {
        assert!(exceeds(2, 0, &rule(50, 5.0, 1)).is_some());
        assert_eq!(exceeds(1, 0, &rule(50, 5.0, 1)), None);
    }

    #[test]
    fn window_restarts_at_release() {
        let now = Utc::now();
        let mut row = GuardRow::default();
        let sliding = window_start(&row, now);
        assert_eq!(sliding, ts_from(now - Duration::minutes(15)));
        row.window_start = Some(ts_from(now - Duration::minutes(1)));
        assert_eq!(window_start(&row, now), ts_from(now - Duration::minutes(1)));
        row.window_start = Some(ts_from(now - Duration::hours(1)));
        assert_eq!(window_start(&row, now), sliding);
    }

    async fn check_once(db: &Db, user: &str, bypass: bool, now: DateTime<Utc>) -> Verdict {
        let (user, rule) = (user.to_string(), rule(1_000_000, 100.0, 1_000_000));
        db.write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                Ok::<_, StoreError>(check(conn, "t", &user, 2, &rule, bypass, now).await?)
            })
        })
        .await
        .unwrap()
        .verdict
    }

    /// The percentage base is counted inside the check only the first time; once it is a
    /// minute old the check keeps using it and says it is stale, and a refresh counts it again
    /// outside the guard's lock.
    #[tokio::test]
    async fn percentage_base_is_counted_once_then_refreshed_outside_the_check() {
        for db in crate::store::testing::fresh_dbs().await {
            let start = Utc::now();
            let check_at = |user: &'static str, offset_s: i64| {
                let db = db.clone();
                async move {
                    let now = start + Duration::seconds(offset_s);
                    let r = rule(1_000_000, 1e9, 0);
                    let checked = db
                        .write(move |conn: &mut AnyConnection| {
                            Box::pin(async move {
                                Ok::<_, StoreError>(
                                    check(conn, "t", user, 1, &r, false, now).await?,
                                )
                            })
                        })
                        .await
                        .unwrap();
                    assert_eq!(checked.verdict, Verdict::Execute);
                    let base = store::read_guard(&db, "t").await.unwrap().base.unwrap();
                    (base, checked.base_stale)
                }
            };
            // No active users: the base is what the window counted (0 at the first check).
            let (first, stale) = check_at("a", 0).await;
            assert_eq!((first.clone(), stale), ((0, ts_from(start)), false));
            // Within the minute the stored base is used, though the window grew.
            assert_eq!(check_at("b", 30).await, (first.clone(), false));
            // A minute later the check still uses it and says it is stale...
            assert_eq!(check_at("c", 61).await, (first.clone(), true));
            // ...and the refresh the caller starts lands shortly: no active users, three
            // counted in the window, stamped with the refresh's clock.
            refresh_base_soon(&db, "t");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let base = store::read_guard(&db, "t").await.unwrap().base.unwrap();
                if base != first {
                    assert_eq!(base.0, 3, "{:?}", db.engine);
                    assert_ne!(base.1, ts_from(start + Duration::seconds(61)));
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "no refresh");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }

    /// Starting the server counts every tenant's base in the background: a tenant's first check
    /// then finds one and counts nothing under the lock.
    #[tokio::test]
    async fn bases_are_primed_for_every_tenant() {
        use crate::directory::{Actor, Directory};
        for db in crate::store::testing::fresh_dbs().await {
            let tenant = db
                .write(|c: &mut AnyConnection| {
                    Box::pin(async move { crate::store::tenants::create_tenant(c, "g").await })
                })
                .await
                .unwrap();
            let dir = Directory::new(db.clone());
            for name in ["x", "y"] {
                let user = serde_json::json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": name,
                });
                dir.create_user(&Actor::system(&tenant.id), user)
                    .await
                    .unwrap();
            }
            prime_bases(&db);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let base = loop {
                if let Some(b) = store::read_guard(&db, &tenant.id).await.unwrap().base {
                    break b;
                }
                assert!(std::time::Instant::now() < deadline, "no base");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            };
            assert_eq!(base.0, 2, "two active users ({:?})", db.engine);
        }
    }

    /// The running count equals a full count of the window after every check, whatever the
    /// order of users, bypasses, releases and clock movements (forward, in jumps, and back).
    #[tokio::test]
    async fn running_count_matches_a_full_count() {
        use rand::{Rng, SeedableRng};
        for db in crate::store::testing::fresh_dbs().await {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let start = Utc::now();
            let mut offset_s: i64 = 0;
            for step in 0..300 {
                match rng.gen_range(0..20) {
                    // The clock jumps past the window, or back a little (another replica).
                    0 => offset_s += rng.gen_range(300..1200),
                    1 => offset_s -= rng.gen_range(1..30),
                    2 => {
                        let t = "t".to_string();
                        db.write(move |conn: &mut AnyConnection| {
                            Box::pin(async move {
                                store::lock_guard(conn, &t).await?;
                                store::reset_guard(conn, &t).await?;
                                Ok::<_, StoreError>(())
                            })
                        })
                        .await
                        .unwrap();
                    }
                    _ => offset_s += rng.gen_range(0..20),
                }
                let now = start + Duration::seconds(offset_s);
                let user = format!("u{}", rng.gen_range(0..40));
                let verdict = check_once(&db, &user, rng.gen_bool(0.1), now).await;
                assert_eq!(verdict, Verdict::Execute);
                let row = store::read_guard(&db, "t").await.unwrap();
                let tally = row.tally.expect("a check leaves a tally");
                let full = store::window_count(&db, "t", &tally.since).await.unwrap();
                assert_eq!(tally.counted, full, "step {step} ({:?})", db.engine);
            }
        }
    }
}
