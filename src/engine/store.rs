//! The lifecycle engine's SQL: the guard's state, window and quarantine, the enforcement
//! bookkeeping, and the two reads of directory tables the engine needs that the directory does
//! not offer (lifecycle timestamps, the active-user count). Same SQL on both engines except the
//! row lock on PostgreSQL.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Executor, Row};

use crate::store::{now_ts, Db};

// ---------------------------------------------------------------------------------------------
// Directory reads.

/// Time (table text) of the user's most recent lifecycle row of `kind`.
pub async fn last_lifecycle<'e, E>(
    ex: E,
    tenant_id: &str,
    user_id: &str,
    kind: &str,
) -> Result<Option<(String, String)>, sqlx::Error>
where
    E: Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT created, detail FROM lifecycle_events WHERE tenant_id = $1 AND user_id = $2 \
         AND kind = $3 ORDER BY seq DESC LIMIT 1",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(kind)
    .fetch_optional(ex)
    .await?;
    match row {
        Some(r) => Ok(Some((r.try_get("created")?, r.try_get("detail")?))),
        None => Ok(None),
    }
}

/// Active users of the tenant (the guard's percentage base).
pub async fn count_active_users<'e, E>(ex: E, tenant_id: &str) -> Result<i64, sqlx::Error>
where
    E: Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query("SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND active = 1")
        .bind(tenant_id)
        .fetch_one(ex)
        .await?;
    row.try_get(0)
}

// ---------------------------------------------------------------------------------------------
// Guard.

/// A tenant's guard row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct GuardRow {
    pub tripped: bool,
    pub tripped_at: Option<String>,
    pub trip_reason: Option<String>,
    /// Releases and discards restart the sliding window here.
    pub window_start: Option<String>,
    /// The running count: (users counted, since when); see [`WindowTally`]. None until the
    /// first check.
    pub tally: Option<WindowTally>,
    /// The percentage base as last counted: (users, when).
    pub base: Option<(i64, String)>,
}

/// `counted` = the `guard_actions` rows with bypass = 0 and `at >= since`. Every write of
/// `guard_actions` keeps it exact (under the guard row's lock), so a check moves it to the
/// window's current start by counting only the rows in between, not the whole window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowTally {
    pub counted: i64,
    pub since: String,
}

fn guard_row(r: &AnyRow) -> Result<GuardRow, sqlx::Error> {
    let counted: Option<i64> = r.try_get("counted")?;
    let since: Option<String> = r.try_get("counted_since")?;
    Ok(GuardRow {
        tripped: r.try_get::<i64, _>("tripped")? != 0,
        tripped_at: r.try_get("tripped_at")?,
        trip_reason: r.try_get("trip_reason")?,
        window_start: r.try_get("window_start")?,
        tally: counted
            .zip(since)
            .map(|(counted, since)| WindowTally { counted, since }),
        base: r
            .try_get::<Option<i64>, _>("base_users")?
            .zip(r.try_get::<Option<String>, _>("base_at")?),
    })
}

/// Reads the tenant's guard row, creating it if needed, and (PostgreSQL) locks it until the
/// transaction ends: guard decisions of one tenant are serialised, so two workers cannot both
/// see room for one more. One statement: the no-op update takes the row lock.
pub async fn lock_guard(
    conn: &mut AnyConnection,
    tenant_id: &str,
) -> Result<GuardRow, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO guard_state (tenant_id, tripped) VALUES ($1, 0) \
         ON CONFLICT (tenant_id) DO UPDATE SET tripped = guard_state.tripped \
         RETURNING tripped, tripped_at, trip_reason, window_start, counted, counted_since, \
         base_users, base_at",
    )
    .bind(tenant_id)
    .fetch_one(&mut *conn)
    .await?;
    guard_row(&row)
}

pub async fn read_guard(db: &Db, tenant_id: &str) -> Result<GuardRow, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tripped, tripped_at, trip_reason, window_start, counted, counted_since, \
         base_users, base_at FROM guard_state WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref()
        .map(guard_row)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Distinct counted users since `since` (status display).
pub async fn window_count(db: &Db, tenant_id: &str, since: &str) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) FROM guard_actions WHERE tenant_id = $1 AND at >= $2 AND bypass = 0",
    )
    .bind(tenant_id)
    .bind(since)
    .fetch_one(&db.pool)
    .await?;
    row.try_get(0)
}

/// A user's row in the window table: when their destructive actions last ran, and whether
/// that run bypassed the guard (a release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardActionRow {
    pub at: String,
    pub bypass: bool,
}

/// Rows that count (bypass = 0) with `from <= at < to`.
#[derive(Debug, Clone, Copy)]
pub enum CountRange<'a> {
    /// `at >= from`: tallies a whole window (the first check of a tenant).
    From(&'a str),
    Between(&'a str, &'a str),
}

/// One statement for the check: `user_id`'s row, and how many counting rows fall in `range`.
pub async fn guard_window_read(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
    range: CountRange<'_>,
) -> Result<(Option<GuardActionRow>, i64), sqlx::Error> {
    // Two texts rather than one with an OR: the bounded count must stop walking the index at
    // `to` (everything after it is the window's bulk).
    let (bound, from, to) = match range {
        CountRange::From(from) => ("", from, None),
        CountRange::Between(from, to) => (" AND at < $4", from, Some(to)),
    };
    let sql = format!(
        "SELECT (SELECT at FROM guard_actions WHERE tenant_id = $1 AND user_id = $2), \
         (SELECT bypass FROM guard_actions WHERE tenant_id = $1 AND user_id = $2), \
         (SELECT COUNT(*) FROM guard_actions WHERE tenant_id = $1 AND at >= $3{bound} \
           AND bypass = 0)"
    );
    let mut q = sqlx::query(&sql).bind(tenant_id).bind(user_id).bind(from);
    if let Some(to) = to {
        q = q.bind(to);
    }
    let row = q.fetch_one(&mut *conn).await?;
    let at: Option<String> = row.try_get(0)?;
    let bypass: Option<i64> = row.try_get(1)?;
    let user = at.map(|at| GuardActionRow {
        at,
        bypass: bypass.unwrap_or(0) != 0,
    });
    Ok((user, row.try_get(2)?))
}

/// One user's destructive actions, as the guard's window records them.
#[derive(Debug, Clone, Copy)]
pub struct GuardAction<'a> {
    pub user_id: &'a str,
    pub at: &'a str,
    /// How many destructive actions ran.
    pub actions: i64,
    /// They ran because an admin released them (they do not count).
    pub bypass: bool,
}

/// Records a user's destructive actions (one row per user: the latest) and stores the tally
/// that includes them, in one round trip.
pub async fn record_guard_action(
    conn: &mut AnyConnection,
    tenant_id: &str,
    action: &GuardAction<'_>,
    tally: &WindowTally,
    prune_before: Option<&str>,
) -> Result<(), sqlx::Error> {
    let upsert = "INSERT INTO guard_actions (tenant_id, user_id, at, actions, bypass) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET at = excluded.at, \
         actions = excluded.actions, bypass = excluded.bypass";
    let set_tally = "UPDATE guard_state SET counted = $6, counted_since = $7 WHERE tenant_id = $1";
    let sql = match crate::store::engine_of(conn) {
        crate::store::Engine::Postgres => format!("WITH a AS ({upsert} RETURNING 1) {set_tally}"),
        crate::store::Engine::Sqlite => format!("{upsert}; {set_tally}"),
    };
    sqlx::query(&sql)
        .bind(tenant_id)
        .bind(action.user_id)
        .bind(action.at)
        .bind(action.actions)
        .bind(action.bypass as i64)
        .bind(tally.counted)
        .bind(&tally.since)
        .execute(&mut *conn)
        .await?;
    if let Some(before) = prune_before {
        // Rows a day old are long out of the window (and before the tally's start): deleting
        // them changes no count.
        sqlx::query("DELETE FROM guard_actions WHERE tenant_id = $1 AND at < $2")
            .bind(tenant_id)
            .bind(before)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A percentage base to store (see `guard::percentage_base`).
#[derive(Debug, Clone, Copy)]
pub enum GuardBase {
    /// Active users plus the window's count, as the check computed it under the lock.
    Exact(i64),
    /// Active users counted outside the lock; the window's count is added as the row holds it
    /// when the upsert runs (it waits for a check in flight).
    ActivePlusCounted(i64),
}

/// Stores the tenant's percentage base, counted at `at`, creating its guard row if needed.
pub async fn set_guard_base(
    conn: &mut AnyConnection,
    tenant_id: &str,
    base: GuardBase,
    at: &str,
) -> Result<(), sqlx::Error> {
    let (users, set) = match base {
        GuardBase::Exact(n) => (n, "$2"),
        GuardBase::ActivePlusCounted(n) => (n, "$2 + COALESCE(guard_state.counted, 0)"),
    };
    sqlx::query(&format!(
        "INSERT INTO guard_state (tenant_id, tripped, base_users, base_at) VALUES ($1, 0, $2, $3) \
         ON CONFLICT (tenant_id) DO UPDATE SET base_users = {set}, base_at = $3"
    ))
    .bind(tenant_id)
    .bind(users)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn set_tripped(
    conn: &mut AnyConnection,
    tenant_id: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE guard_state SET tripped = 1, tripped_at = $2, trip_reason = $3 WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .bind(now_ts())
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Un-trips and restarts the window now.
pub async fn reset_guard(conn: &mut AnyConnection, tenant_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE guard_state SET tripped = 0, tripped_at = NULL, trip_reason = NULL, \
         window_start = $2 WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .bind(now_ts())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Quarantine.

/// Destructive actions held back for one user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineEntry {
    pub id: String,
    pub user_id: String,
    pub actions: Value,
    pub created: String,
    pub updated: String,
    /// Set when an admin released it and the user's converge has not run yet.
    pub released: Option<String>,
}

fn quarantine_entry(r: &AnyRow) -> Result<QuarantineEntry, sqlx::Error> {
    let actions: String = r.try_get("actions")?;
    Ok(QuarantineEntry {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        actions: serde_json::from_str(&actions).unwrap_or(Value::Null),
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
        released: r.try_get("released")?,
    })
}

const Q_COLUMNS: &str = "id, user_id, actions, created, updated, released";

pub async fn get_quarantine(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
) -> Result<Option<QuarantineEntry>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {Q_COLUMNS} FROM quarantine WHERE tenant_id = $1 AND user_id = $2"
    ))
    .bind(tenant_id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(quarantine_entry).transpose()
}

/// Holds `actions` back for the user (replacing what was held before: the newest plan is the
/// one that matters). Returns the entry id.
pub async fn upsert_quarantine(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
    actions: &Value,
) -> Result<String, sqlx::Error> {
    let now = now_ts();
    let row = sqlx::query(
        "INSERT INTO quarantine (tenant_id, id, user_id, actions, created, updated, released) \
         VALUES ($1, $2, $3, $4, $5, $5, NULL) \
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET actions = excluded.actions, \
         updated = excluded.updated, released = NULL \
         RETURNING id",
    )
    .bind(tenant_id)
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(user_id)
    .bind(actions.to_string())
    .bind(&now)
    .fetch_one(&mut *conn)
    .await?;
    row.try_get(0)
}

pub async fn delete_quarantine(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM quarantine WHERE tenant_id = $1 AND user_id = $2")
        .bind(tenant_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn list_quarantine(
    db: &Db,
    tenant_id: &str,
) -> Result<Vec<QuarantineEntry>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {Q_COLUMNS} FROM quarantine WHERE tenant_id = $1 ORDER BY created, user_id"
    ))
    .bind(tenant_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(quarantine_entry).collect()
}

/// Entries not yet released, in the caller's transaction.
pub async fn held_quarantine(
    conn: &mut AnyConnection,
    tenant_id: &str,
) -> Result<Vec<QuarantineEntry>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {Q_COLUMNS} FROM quarantine WHERE tenant_id = $1 AND released IS NULL \
         ORDER BY created, user_id"
    ))
    .bind(tenant_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(quarantine_entry).collect()
}

pub async fn mark_released(conn: &mut AnyConnection, tenant_id: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE quarantine SET released = $2 WHERE tenant_id = $1 AND released IS NULL",
    )
    .bind(tenant_id)
    .bind(now_ts())
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected())
}

pub async fn delete_held(conn: &mut AnyConnection, tenant_id: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM quarantine WHERE tenant_id = $1 AND released IS NULL")
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected())
}

// ---------------------------------------------------------------------------------------------
// Enforcement bookkeeping.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcementRow {
    pub rule_key: String,
    pub types: String,
    pub since: String,
    pub deadline: String,
    pub marked: bool,
    pub overdue: bool,
}

pub async fn load_enforcement<'e, E>(
    ex: E,
    tenant_id: &str,
    user_id: &str,
) -> Result<Vec<EnforcementRow>, sqlx::Error>
where
    E: Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT rule_key, types, since, deadline, marked, overdue FROM enforcement \
         WHERE tenant_id = $1 AND user_id = $2",
    )
    .bind(tenant_id)
    .bind(user_id)
    .fetch_all(ex)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(EnforcementRow {
                rule_key: r.try_get("rule_key")?,
                types: r.try_get("types")?,
                since: r.try_get("since")?,
                deadline: r.try_get("deadline")?,
                marked: r.try_get::<i64, _>("marked")? != 0,
                overdue: r.try_get::<i64, _>("overdue")? != 0,
            })
        })
        .collect()
}

pub async fn upsert_enforcement(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
    row: &EnforcementRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO enforcement (tenant_id, user_id, rule_key, types, since, deadline, marked, \
         overdue) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (tenant_id, user_id, rule_key) DO UPDATE SET types = excluded.types, \
         since = excluded.since, deadline = excluded.deadline, marked = excluded.marked, \
         overdue = excluded.overdue",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(&row.rule_key)
    .bind(&row.types)
    .bind(&row.since)
    .bind(&row.deadline)
    .bind(row.marked as i64)
    .bind(row.overdue as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete_enforcement(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
    rule_key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM enforcement WHERE tenant_id = $1 AND user_id = $2 AND rule_key = $3")
        .bind(tenant_id)
        .bind(user_id)
        .bind(rule_key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The user's quarantine entry, if any (read outside a transaction: a cheap pre-check).
pub async fn list_quarantine_user(
    db: &Db,
    tenant_id: &str,
    user_id: &str,
) -> Result<Vec<QuarantineEntry>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {Q_COLUMNS} FROM quarantine WHERE tenant_id = $1 AND user_id = $2"
    ))
    .bind(tenant_id)
    .bind(user_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(quarantine_entry).collect()
}
