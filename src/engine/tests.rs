//! Converge against a real directory and the built-in factor store, on both engines: the
//! deactivation / reactivation / revoke_after / delete lifecycle, idempotency, audit-only,
//! enforcement, forbid, and the guard (trip, percentage floor, release, discard).

use serde_json::json;

use super::testkit::{fixture_on, fixtures, fixtures_with, Fixture, OPEN_POLICY};
use super::*;
use crate::factors::FactorStatus::{Active, Revoked, Suspended};

fn opts(trigger: &str) -> ConvergeOptions {
    ConvergeOptions::for_trigger(trigger)
}

async fn run(f: &Fixture, user: &str) -> ConvergeOutcome {
    converge_with(&f.ctx, &f.tenant, user, &opts("deactivated"))
        .await
        .expect("converge")
}

fn names(actions: &[Action]) -> Vec<&'static str> {
    actions.iter().map(Action::name).collect()
}

#[tokio::test]
async fn deactivation_suspends_factors_ends_sessions_and_is_audited() {
    for f in fixtures().await {
        let id = f.user_with_factors("alice").await;
        f.set_active(&id, false).await;
        let (_, writes_before) = f.db().write_stats();
        let out = run(&f, &id).await;
        // The built-in store lives in our database: decision, actions and outcomes are one
        // transaction (nothing can commit a change without its audit entry). On PostgreSQL
        // the guard counts the destructive actions in a short transaction before it.
        let guard_writes = match f.db().engine {
            crate::store::Engine::Sqlite => 0,
            crate::store::Engine::Postgres => 1,
        };
        assert_eq!(
            f.db().write_stats().1 - writes_before,
            1 + guard_writes,
            "one write per converge, plus the guard's own on PostgreSQL"
        );
        assert_eq!(
            names(&out.executed),
            vec![
                "suspend_factor",
                "suspend_factor",
                "suspend_factor",
                "revoke_sessions"
            ]
        );
        assert!(out.failed.is_empty() && out.quarantined.is_empty());
        assert!(f.all("alice", Suspended).await);
        assert_eq!(f.live_sessions("alice").await, 0);
        let kinds = f.audit_kinds(&id).await;
        let decision = kinds
            .iter()
            .position(|k| k == "policy.decision")
            .expect("decision");
        assert_eq!(kinds.iter().filter(|k| *k == "action.executed").count(), 4);
        assert!(kinds.iter().rposition(|k| k == "action.executed").unwrap() > decision);
        // The follow-up at revoke_after is a durable job, ~30 days out (coalesced with the
        // directory's own pending converge jobs: one pending job, due no later than it).
        let due = out.next_due.expect("follow-up");
        assert!(due > crate::store::ts_from(Utc::now() + chrono::Duration::days(29)));
        let pending = |cond: &str| {
            format!(
                "SELECT COUNT(*) FROM jobs WHERE user_id = '{id}' AND kind = 'converge' \
                 AND state = 'pending'{cond}"
            )
        };
        assert_eq!(f.count(&pending("")).await, 1);
        assert_eq!(f.count(&pending(&format!(" AND due <= '{due}'"))).await, 1);
        f.exec(&format!(
            "UPDATE jobs SET state = 'done' WHERE user_id = '{id}'"
        ))
        .await;
        run(&f, &id).await;
        assert_eq!(f.count(&pending(&format!(" AND due = '{due}'"))).await, 1);
        // Idempotent: the second run plans nothing.
        let again = run(&f, &id).await;
        assert!(again.planned.is_empty(), "{:?}", again.planned);
        assert!(again.executed.is_empty());
        // …and the chain still verifies.
        assert!(crate::audit::verify(f.db(), None).await.unwrap().ok);
    }
}

#[tokio::test]
async fn reactivation_within_revoke_after_resumes() {
    for f in fixtures().await {
        let id = f.user_with_factors("bob").await;
        f.set_active(&id, false).await;
        run(&f, &id).await;
        assert!(f.all("bob", Suspended).await);
        f.set_active(&id, true).await;
        let out = converge_with(&f.ctx, &f.tenant, &id, &opts("reactivated"))
            .await
            .unwrap();
        assert_eq!(names(&out.executed), vec!["resume_factor"; 3]);
        assert!(f.all("bob", Active).await);
        assert!(run(&f, &id).await.planned.is_empty());
    }
}

#[tokio::test]
async fn after_revoke_after_suspended_factors_are_revoked() {
    for f in fixtures().await {
        let id = f.user_with_factors("carol").await;
        f.set_active(&id, false).await;
        run(&f, &id).await;
        f.backdate(&id, "deactivated", 31).await;
        let out = converge_with(&f.ctx, &f.tenant, &id, &opts("scheduled"))
            .await
            .unwrap();
        assert_eq!(names(&out.executed), vec!["revoke_factor"; 3]);
        assert!(f.all("carol", Revoked).await);
        assert_eq!(out.next_due, None);
        // Reactivating now cannot bring revoked factors back: nothing to resume.
        f.set_active(&id, true).await;
        let out = converge_with(&f.ctx, &f.tenant, &id, &opts("reactivated"))
            .await
            .unwrap();
        assert!(out.planned.is_empty());
        assert!(f.all("carol", Revoked).await);
    }
}

#[tokio::test]
async fn delete_revokes_at_once() {
    for f in fixtures().await {
        let id = f.user_with_factors("dave").await;
        f.delete(&id).await;
        let out = converge_with(&f.ctx, &f.tenant, &id, &opts("deleted"))
            .await
            .unwrap();
        assert!(out.found);
        assert_eq!(
            names(&out.executed),
            vec![
                "revoke_factor",
                "revoke_factor",
                "revoke_factor",
                "revoke_sessions"
            ]
        );
        assert!(f.all("dave", Revoked).await);
        assert_eq!(f.live_sessions("dave").await, 0);
        assert!(converge(&f.ctx, &f.tenant, &id)
            .await
            .unwrap()
            .planned
            .is_empty());
    }
}

#[tokio::test]
async fn unknown_user_converges_to_nothing() {
    for f in fixtures().await {
        let out = converge(&f.ctx, &f.tenant, "no-such-user").await.unwrap();
        assert!(!out.found && out.planned.is_empty());
    }
}

#[tokio::test]
async fn audit_only_executes_nothing_and_records_everything() {
    let policy = format!("mode = \"audit-only\"\n{OPEN_POLICY}");
    for f in fixtures_with(&policy).await {
        let id = f.user_with_factors("erin").await;
        f.set_active(&id, false).await;
        let out = run(&f, &id).await;
        assert!(out.audit_only);
        assert_eq!(out.planned.len(), 4);
        assert!(out.executed.is_empty());
        assert!(f.all("erin", Active).await);
        assert_eq!(f.live_sessions("erin").await, 1);
        let kinds = f.audit_kinds(&id).await;
        assert!(kinds.contains(&"policy.decision".to_string()));
        assert_eq!(
            kinds
                .iter()
                .filter(|k| *k == "action.would_execute")
                .count(),
            4
        );
        assert!(!kinds.iter().any(|k| k == "action.executed"));
    }
}

#[tokio::test]
async fn required_factor_is_enforced_once_and_forbidden_factor_revoked() {
    let policy = format!(
        "{OPEN_POLICY}\n[[require]]\nwho = 'roles.value eq \"admin\"'\nfactors = [\"webauthn\"]\n\
         grace = \"72h\"\n\n[[forbid]]\nwho = 'userType eq \"Contractor\"'\nfactors = [\"sms\"]\n"
    );
    for f in fixtures_with(&policy).await {
        let admin = f.user("root", json!({"roles": [{"value": "admin"}]})).await;
        f.enroll("root", FactorType::Totp).await;
        let out = run(&f, &admin).await;
        assert_eq!(names(&out.executed), vec!["require_enrollment"]);
        let reqs = factors::list_requirements(f.db(), &f.tenant, "root")
            .await
            .unwrap();
        assert_eq!(reqs.len(), 1);
        // Marked once: the next runs plan nothing, and the deadline does not move.
        let again = run(&f, &admin).await;
        assert!(again.planned.is_empty(), "{:?}", again.planned);
        assert!(again.next_due.is_some());
        // Enrolling WebAuthn satisfies it: bookkeeping cleared, nothing planned.
        f.enroll("root", FactorType::Webauthn).await;
        assert!(run(&f, &admin).await.planned.is_empty());
        let n = f
            .count(&format!(
                "SELECT COUNT(*) FROM enforcement WHERE user_id = '{admin}'"
            ))
            .await;
        assert_eq!(n, 0);

        let contractor = f.user("temp", json!({"userType": "Contractor"})).await;
        f.enroll("temp", FactorType::Sms).await;
        f.enroll("temp", FactorType::Totp).await;
        let out = run(&f, &contractor).await;
        assert_eq!(names(&out.executed), vec!["revoke_factor"]);
        assert_eq!(
            f.statuses("temp").await,
            vec![(FactorType::Totp, Active), (FactorType::Sms, Revoked)]
        );
    }
}

#[tokio::test]
async fn overdue_requirement_is_recorded_once() {
    let policy = format!(
        "{OPEN_POLICY}\n[[require]]\nwho = 'roles.value eq \"admin\"'\nfactors = [\"webauthn\"]\ngrace = \"0s\"\n"
    );
    for f in fixtures_with(&policy).await {
        let admin = f.user("root", json!({"roles": [{"value": "admin"}]})).await;
        let out = run(&f, &admin).await;
        assert_eq!(
            names(&out.executed),
            vec!["require_enrollment", "requirement_overdue"]
        );
        assert!(run(&f, &admin).await.planned.is_empty());
    }
}

const GUARD_2: &str = r#"
[guard]
max_destructive_per_15m = 2
max_destructive_percent_per_15m = 100
percent_applies_above = 1000
"#;

/// Four users with factors, all deactivated and converged under a guard of 2 per window.
async fn tripped() -> Vec<(Fixture, Vec<String>)> {
    let mut out = Vec::new();
    for f in fixtures_with(GUARD_2).await {
        let mut ids = Vec::new();
        for i in 0..4 {
            let id = f.user_with_factors(&format!("u{i}")).await;
            f.set_active(&id, false).await;
            ids.push(id);
        }
        for (i, id) in ids.iter().enumerate() {
            let o = run(&f, id).await;
            if i < 2 {
                assert_eq!(o.executed.len(), 4, "user {i} runs");
                assert!(!o.tripped_guard);
            } else {
                assert!(o.executed.is_empty(), "user {i} is held");
                assert_eq!(o.quarantined.len(), 4);
                assert_eq!(o.tripped_guard, i == 2, "the third user trips it, once");
            }
        }
        out.push((f, ids));
    }
    out
}

#[tokio::test]
async fn guard_trips_above_the_threshold_and_quarantines_the_excess() {
    for (f, ids) in tripped().await {
        assert!(f.all("u0", Suspended).await && f.all("u1", Suspended).await);
        assert!(f.all("u2", Active).await && f.all("u3", Active).await);
        assert_eq!(f.live_sessions("u3").await, 1);
        let st = guard::status(f.db(), &f.tenant).await.unwrap();
        assert!(st.tripped);
        assert!(st
            .trip_reason
            .unwrap()
            .contains("max_destructive_per_15m = 2"));
        let held: Vec<&str> = st.quarantined.iter().map(|q| q.user_id.as_str()).collect();
        assert_eq!(held.len(), 2);
        assert!(held.contains(&ids[2].as_str()) && held.contains(&ids[3].as_str()));
        let kinds = f.all_audit_kinds().await;
        assert_eq!(kinds.iter().filter(|k| *k == "guard.tripped").count(), 1);
        assert_eq!(
            kinds.iter().filter(|k| *k == "action.quarantined").count(),
            2
        );
        // Converging a held user again keeps it held (nothing lost, nothing run).
        let o = run(&f, &ids[3]).await;
        assert!(o.executed.is_empty() && o.quarantined.len() == 4);
        // A user who did not change is unaffected (no destructive actions).
        let keep = f.user_with_factors("bystander").await;
        assert!(run(&f, &keep).await.planned.is_empty());
        // Reactivating a held user drops their quarantine entry on the next converge.
        f.set_active(&ids[3], true).await;
        let o = run(&f, &ids[3]).await;
        assert!(o.planned.is_empty() && o.quarantined.is_empty());
        let st = guard::status(f.db(), &f.tenant).await.unwrap();
        assert_eq!(st.quarantined.len(), 1);
    }
}

#[tokio::test]
async fn guard_release_runs_the_held_actions() {
    for (f, ids) in tripped().await {
        let r = guard::release(f.db(), &f.tenant, AuditActor::cli("guard release"))
            .await
            .unwrap();
        assert!(r.was_tripped);
        assert_eq!(r.users.len(), 2);
        assert!(!guard::status(f.db(), &f.tenant).await.unwrap().tripped);
        // Release enqueued a converge per held user; run those jobs.
        let jobs = crate::jobs::store::lease(f.db(), "test", 100, Duration::from_secs(30))
            .await
            .unwrap();
        let released: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.payload["reason"] == "guard_release")
            .collect();
        assert!(!jobs.is_empty());
        for j in &jobs {
            run_job(&f.ctx, j).await.unwrap();
        }
        let _ = released;
        assert!(f.all("u2", Suspended).await && f.all("u3", Suspended).await);
        assert_eq!(f.live_sessions("u2").await + f.live_sessions("u3").await, 0);
        let st = guard::status(f.db(), &f.tenant).await.unwrap();
        assert!(st.quarantined.is_empty() && !st.tripped);
        // Released users do not count toward the new window.
        assert_eq!(st.window_users, 0);
        assert!(f
            .all_audit_kinds()
            .await
            .contains(&"guard.released".to_string()));
        let _ = ids;
    }
}

#[tokio::test]
async fn guard_discard_drops_the_held_actions_with_audit() {
    for (f, ids) in tripped().await {
        let r = guard::discard(f.db(), &f.tenant, AuditActor::cli("guard discard"))
            .await
            .unwrap();
        assert_eq!(r.users.len(), 2);
        let st = guard::status(f.db(), &f.tenant).await.unwrap();
        assert!(!st.tripped && st.quarantined.is_empty());
        assert!(f.all("u2", Active).await && f.all("u3", Active).await);
        for id in &ids[2..] {
            assert!(f
                .audit_kinds(id)
                .await
                .contains(&"guard.discarded".to_string()));
        }
        let n = f
            .count("SELECT COUNT(*) FROM jobs WHERE payload LIKE '%guard_release%'")
            .await;
        assert_eq!(n, 0, "discarded users are not re-converged");
    }
}

#[tokio::test]
async fn percent_floor_lets_a_small_tenant_offboard_one_user() {
    // The default guard: 50 per window, 5 %, applying above 20.
    for f in fixtures_with("").await {
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(f.user_with_factors(&format!("p{i}")).await);
        }
        f.set_active(&ids[0], false).await;
        let o = run(&f, &ids[0]).await;
        assert_eq!(o.executed.len(), 4);
        assert!(!o.tripped_guard);
        assert!(!guard::status(f.db(), &f.tenant).await.unwrap().tripped);
    }
}

#[tokio::test]
async fn percentage_bound_trips_past_the_floor() {
    let policy = "[guard]\nmax_destructive_per_15m = 1000\nmax_destructive_percent_per_15m = 10\npercent_applies_above = 2\n";
    for f in fixtures_with(policy).await {
        // 10 users: 10 % of (active + counted) is 1; the floor lets 2 through, the third trips.
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(f.user(&format!("q{i}"), json!({})).await);
            f.enroll(&format!("q{i}"), FactorType::Totp).await;
        }
        let mut executed = 0;
        for id in &ids[..3] {
            f.set_active(id, false).await;
            let o = run(&f, id).await;
            executed += usize::from(!o.executed.is_empty());
        }
        assert_eq!(executed, 2);
        let st = guard::status(f.db(), &f.tenant).await.unwrap();
        assert!(st.tripped && st.trip_reason.unwrap().contains("percent"));
    }
}

/// A converge whose guard check found the percentage base stale has it counted again after
/// its transaction (outside the guard's lock), and meanwhile decides on the stored one.
#[tokio::test]
async fn a_stale_percentage_base_is_counted_again_after_the_converge() {
    let policy = "[guard]\nmax_destructive_per_15m = 1000\nmax_destructive_percent_per_15m = 50\npercent_applies_above = 0\n";
    for f in fixtures_with(policy).await {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(f.user_with_factors(&format!("s{i}")).await);
        }
        // A base counted two minutes ago, when the tenant had 1000 users.
        let old = crate::store::ts_from(chrono::Utc::now() - chrono::Duration::minutes(2));
        f.exec(&format!(
            "INSERT INTO guard_state (tenant_id, tripped, base_users, base_at) \
             VALUES ('{}', 0, 1000, '{old}')",
            f.tenant
        ))
        .await;
        f.set_active(&ids[0], false).await;
        // 1 of 1000 is under 50 %: it runs (with a fresh count of 3 it would be 1 of 3, too).
        let o = run(&f, &ids[0]).await;
        assert!(!o.executed.is_empty() && !o.tripped_guard);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let base = store::read_guard(f.db(), &f.tenant)
                .await
                .unwrap()
                .base
                .unwrap();
            if base.0 != 1000 {
                // Two active users left, plus the one counted in the window.
                assert_eq!(base.0, 3);
                assert!(base.1 > old);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "base not counted again"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn store_outage_fails_the_converge_retryably_then_completes() {
    for f in fixtures().await {
        let id = f.user_with_factors("flaky").await;
        f.set_active(&id, false).await;
        let inner = factors::store_for_tenant(f.db(), f.ctx.master_key.clone(), &f.tenant);
        let flaky = Arc::new(factors::FlakyStore::new(inner));
        factors::set_store_override(&f.tenant, flaky.clone());
        flaky.fail_forever(true);
        let e = converge_with(&f.ctx, &f.tenant, &id, &opts("deactivated"))
            .await
            .unwrap_err();
        assert!(e.retryable, "{e:?}");
        assert!(f.all("flaky", Active).await);
        flaky.fail_forever(false);
        assert_eq!(run(&f, &id).await.executed.len(), 4);
        assert!(f.all("flaky", Suspended).await);
        factors::clear_store_override(&f.tenant);
    }
}

#[tokio::test]
async fn a_database_failure_inside_a_local_converge_leaves_nothing_half_done() {
    for f in fixtures().await {
        let id = f.user_with_factors("torn").await;
        f.set_active(&id, false).await;
        let entries_before = f.audit_kinds(&id).await.len();
        // Ending sessions fails inside the transaction, after the factors were suspended in it.
        match f.db().engine {
            crate::store::Engine::Sqlite => {
                f.exec(
                    "CREATE TRIGGER injected BEFORE UPDATE ON factor_sessions \
                     BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
                )
                .await
            }
            crate::store::Engine::Postgres => {
                f.exec(
                    "CREATE FUNCTION injected() RETURNS trigger AS $$ BEGIN \
                     RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql",
                )
                .await;
                f.exec(
                    "CREATE TRIGGER injected BEFORE UPDATE ON factor_sessions \
                     FOR EACH ROW EXECUTE FUNCTION injected()",
                )
                .await
            }
        }
        let e = converge_with(&f.ctx, &f.tenant, &id, &opts("deactivated"))
            .await
            .unwrap_err();
        assert!(e.retryable, "{e:?}");
        // Rolled back as a whole: no factor suspended, no decision or action entry.
        assert!(f.all("torn", Active).await);
        assert_eq!(f.live_sessions("torn").await, 1);
        assert_eq!(f.audit_kinds(&id).await.len(), entries_before);
        f.exec(match f.db().engine {
            crate::store::Engine::Sqlite => "DROP TRIGGER injected",
            crate::store::Engine::Postgres => "DROP TRIGGER injected ON factor_sessions",
        })
        .await;
        // The retry does all of it.
        let out = run(&f, &id).await;
        assert_eq!(out.executed.len(), 4, "{:?}", out.executed);
        assert!(f.all("torn", Suspended).await);
        assert!(crate::audit::verify(f.db(), None).await.unwrap().ok);
    }
}

#[tokio::test]
async fn a_failed_action_is_audited_and_the_rest_still_run() {
    for f in fixtures().await {
        let id = f.user_with_factors("partial").await;
        f.set_active(&id, false).await;
        let inner = factors::store_for_tenant(f.db(), f.ctx.master_key.clone(), &f.tenant);
        let failing = Arc::new(super::testkit::FailOp::new(inner, "revoke_sessions", 1));
        factors::set_store_override(&f.tenant, failing);
        let e = converge_with(&f.ctx, &f.tenant, &id, &opts("deactivated"))
            .await
            .unwrap_err();
        assert!(
            e.retryable && e.message.contains("revoke_sessions"),
            "{e:?}"
        );
        assert!(f.all("partial", Suspended).await);
        assert_eq!(f.live_sessions("partial").await, 1);
        let kinds = f.audit_kinds(&id).await;
        assert_eq!(kinds.iter().filter(|k| *k == "action.executed").count(), 3);
        assert_eq!(kinds.iter().filter(|k| *k == "action.failed").count(), 1);
        // The retry plans only what is left.
        let out = run(&f, &id).await;
        assert_eq!(names(&out.executed), vec!["revoke_sessions"]);
        factors::clear_store_override(&f.tenant);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_deactivation_converges_through_the_queue_within_a_second() {
    for f in fixtures().await {
        let id = f.user_with_factors("rt").await;
        let workers = crate::jobs::spawn_workers(f.ctx.clone(), 2);
        // The creation's converge job runs first (nothing to do for an active user).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = std::time::Instant::now();
        f.set_active(&id, false).await;
        let mut converged = false;
        while t0.elapsed() < Duration::from_secs(1) {
            if f.all("rt", Suspended).await && f.live_sessions("rt").await == 0 {
                converged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t0.elapsed();
        workers.shutdown().await;
        assert!(converged, "not converged after {took:?}");
        // One transaction carried the SCIM write's audit entry and the job; then the decision
        // and each action followed.
        let kinds = f.audit_kinds(&id).await;
        let at = |k: &str| {
            kinds
                .iter()
                .position(|x| x == k)
                .unwrap_or_else(|| panic!("{k} in {kinds:?}"))
        };
        assert!(at("scim.user.created") < at("scim.user.deactivated"));
        let decision = kinds.iter().rposition(|x| x == "policy.decision").unwrap();
        assert!(at("scim.user.deactivated") < decision);
        assert_eq!(
            kinds[decision..]
                .iter()
                .filter(|k| *k == "action.executed")
                .count(),
            4
        );
        assert!(
            crate::audit::verify(f.db(), Some(&f.tenant))
                .await
                .unwrap()
                .ok
        );
    }
}

/// Not a test: a quick look at real-time latency through the directory, the queue and the
/// built-in store (`cargo test --release --lib -- --ignored engine::tests::latency --nocapture`).
/// Latency = from the directory write's answer to the user's last `action.executed` entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn latency_of_deactivations_through_the_queue() {
    let n: usize = std::env::var("LAT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rate: u64 = std::env::var("LAT_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    // The test databases' PostgreSQL pools are small (5); a service has more.
    let pool: u32 = std::env::var("LAT_PG_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut all = vec![fixture_on(crate::store::testing::fresh_sqlite().await, OPEN_POLICY).await];
    if let Ok(base) = std::env::var("DEPROVD_TEST_PG") {
        all.push(fixture_on(super::testkit::pg_with_pool(&base, pool).await, OPEN_POLICY).await);
    }
    for f in all {
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(f.user_with_factors(&format!("lat{i}")).await);
        }
        let nw: usize = std::env::var("LAT_WORKERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let mut f = f;
        f.ctx.jobs.batch = std::env::var("LAT_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(16);
        let workers = crate::jobs::spawn_workers(f.ctx.clone(), nw);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let f = Arc::new(f);
        let t0 = std::time::Instant::now();
        let mut tasks = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (f, id) = (f.clone(), id.clone());
            let start = Duration::from_micros(1_000_000 / rate * i as u64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + start)).await;
                f.set_active(&id, false).await;
                (id, Utc::now())
            }));
        }
        let mut answered = Vec::new();
        for t in tasks {
            answered.push(t.await.unwrap());
        }
        let sent = t0.elapsed();
        let open =
            "SELECT COUNT(*) FROM jobs WHERE state <> 'done' AND payload NOT LIKE '%scheduled%'";
        while f.count(open).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut lat = Vec::new();
        for (id, at) in &answered {
            let filter = crate::audit::ListFilter {
                subject: Some(id.clone()),
                kind_prefix: Some("action.executed".into()),
                ..Default::default()
            };
            let rows = crate::audit::list(f.db(), &f.tenant, &filter, 100, None)
                .await
                .unwrap();
            let last = rows.last().expect("actions").at.clone();
            let last = DateTime::parse_from_rfc3339(&last)
                .unwrap()
                .with_timezone(&Utc);
            lat.push((last - *at).to_std().unwrap_or_default());
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        eprintln!(
            "{:?}: {n} deactivations in {sent:?} ({:.0}/s); answer to last action p50 {:?} p99 {:?} max {:?}",
            f.ctx.db.engine,
            n as f64 / sent.as_secs_f64(),
            p(0.5),
            p(0.99),
            lat[lat.len() - 1]
        );
        workers.shutdown().await;
    }
}
