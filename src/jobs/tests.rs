//! Queue tests on both engines: enqueue in a transaction, coalescing, leasing (lease expiry makes
//! a crashed worker's job run again; one user is never leased twice at once), backoff and
//! dead-lettering, retry, cancel, and the workers end to end with a failing factor store.

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use serde_json::json;
use sqlx::AnyConnection;

use super::store::{self, FailOutcome};
use super::*;
use crate::audit::AuditActor;
use crate::engine::testkit::{fast_jobs, fixtures};
use crate::factors::{self, FactorStatus};
use crate::store::{Db, StoreError};

async fn enqueue(db: &Db, tenant: &str, user: &str, due: Option<String>) -> String {
    let (t, u) = (tenant.to_string(), user.to_string());
    db.write(move |c: &mut AnyConnection| {
        Box::pin(async move {
            let id = enqueue_in_tx(
                c,
                &t,
                kinds::CONVERGE,
                Some(&u),
                json!({"reason": "test"}),
                due.as_deref(),
            )
            .await?;
            Ok::<_, StoreError>(id)
        })
    })
    .await
    .unwrap()
}

async fn converge_job(db: &Db, tenant: &str, user: &str, due: Option<String>) {
    let (t, u) = (tenant.to_string(), user.to_string());
    db.write(move |c: &mut AnyConnection| {
        Box::pin(async move {
            enqueue_converge(c, &t, &u, "test", due.as_deref()).await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
    .unwrap()
}

async fn pending(db: &Db, user: &str) -> Vec<Job> {
    let f = JobFilter {
        user_id: Some(user.into()),
        state: Some("pending".into()),
        ..Default::default()
    };
    list(db, &f, 100).await.unwrap()
}

#[test]
fn backoff_is_exponential_with_full_jitter_and_capped() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let base = Duration::from_millis(200);
    let cap = Duration::from_secs(300);
    for attempt in 1..=40 {
        let ceiling = (base * 2u32.saturating_pow((attempt - 1).min(20) as u32)).min(cap);
        let mut max_seen = Duration::ZERO;
        for _ in 0..200 {
            let d = backoff(attempt, base, cap, &mut rng);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            max_seen = max_seen.max(d);
        }
        // Full jitter spreads over the whole range, not just near the ceiling.
        assert!(max_seen * 2 >= ceiling, "attempt {attempt}");
    }
    assert!(backoff(0, base, cap, &mut rng) <= base);
    assert!(backoff(i64::MAX, base, cap, &mut rng) <= cap);
}

#[tokio::test]
async fn enqueued_jobs_are_leased_once_and_completed() {
    for f in fixtures().await {
        let db = f.db();
        let id = enqueue(db, &f.tenant, "u1", None).await;
        let later = crate::store::ts_from(chrono::Utc::now() + chrono::Duration::hours(1));
        enqueue(db, &f.tenant, "u2", Some(later)).await;
        let got = store::lease(db, "w1", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "the future job is not due");
        assert_eq!(
            (got[0].id.as_str(), got[0].attempts, got[0].state.as_str()),
            (id.as_str(), 1, "running")
        );
        assert!(store::lease(db, "w2", 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty());
        assert!(
            !store::complete(db, &id, "w2").await.unwrap(),
            "not w2's lease"
        );
        assert!(store::complete(db, &id, "w1").await.unwrap());
        assert_eq!(
            get(db, &f.tenant, &id).await.unwrap().unwrap().state,
            "done"
        );
        assert!(get(db, "other-tenant", &id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn an_expired_lease_makes_the_job_run_again() {
    for f in fixtures().await {
        let db = f.db();
        let id = enqueue(db, &f.tenant, "u1", None).await;
        // Worker A leases and "crashes" (its lease runs out at once).
        let a = store::lease(db, "A", 1, Duration::ZERO).await.unwrap();
        assert_eq!(a.len(), 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = store::lease(db, "B", 1, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].id.as_str(), b[0].attempts, b[0].leased_by.as_deref()),
            (id.as_str(), 2, Some("B"))
        );
        // A wakes up late: its completion no longer counts.
        assert!(!store::complete(db, &id, "A").await.unwrap());
        assert!(store::complete(db, &id, "B").await.unwrap());
    }
}

#[tokio::test]
async fn one_user_is_never_leased_twice_at_once() {
    for f in fixtures().await {
        let db = f.db();
        enqueue(db, &f.tenant, "same", None).await;
        let first = store::lease(db, "A", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        // A new trigger for the same user while A runs: queued, not leased until A is done.
        enqueue(db, &f.tenant, "same", None).await;
        enqueue(db, &f.tenant, "other", None).await;
        let second = store::lease(db, "B", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            second
                .iter()
                .map(|j| j.user_id.clone().unwrap())
                .collect::<Vec<_>>(),
            vec!["other"]
        );
        store::complete(db, &first[0].id, "A").await.unwrap();
        let third = store::lease(db, "B", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].user_id.as_deref(), Some("same"));
    }
}

#[tokio::test]
async fn converge_jobs_coalesce_per_user() {
    for f in fixtures().await {
        let db = f.db();
        let in_a_day = crate::store::ts_from(chrono::Utc::now() + chrono::Duration::days(1));
        let in_a_week = crate::store::ts_from(chrono::Utc::now() + chrono::Duration::days(7));
        converge_job(db, &f.tenant, "u", Some(in_a_day.clone())).await;
        // A later one is absorbed by the earlier pending job.
        converge_job(db, &f.tenant, "u", Some(in_a_week)).await;
        let p = pending(db, "u").await;
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].due, in_a_day);
        // An earlier one is added (the later one stays, a harmless follow-up)…
        converge_job(db, &f.tenant, "u", None).await;
        let p = pending(db, "u").await;
        assert_eq!(p.len(), 2);
        // …and absorbs the next triggers.
        converge_job(db, &f.tenant, "u", None).await;
        converge_job(db, &f.tenant, "u", Some(in_a_day.clone())).await;
        assert_eq!(pending(db, "u").await.len(), 2);
        // A running job does not absorb new triggers.
        let leased = store::lease(db, "w", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        assert!(leased[0].due < in_a_day);
        converge_job(db, &f.tenant, "u", None).await;
        assert_eq!(pending(db, "u").await.len(), 2);
        // Other users and other kinds are separate.
        converge_job(db, &f.tenant, "v", None).await;
        assert_eq!(pending(db, "v").await.len(), 1);
    }
}

#[tokio::test]
async fn failures_back_off_then_dead_letter_with_audit_and_retry_works() {
    for f in fixtures().await {
        let db = f.db();
        let cfg = fast_jobs();
        let id = enqueue(db, &f.tenant, "u1", None).await;
        for attempt in 1..=cfg.max_attempts {
            tokio::time::sleep(cfg.backoff_cap + Duration::from_millis(5)).await;
            let job = store::lease(db, "w", 1, cfg.lease)
                .await
                .unwrap()
                .pop()
                .expect("due again");
            assert_eq!(job.attempts, attempt);
            let out = store::fail(db, &job, "w", "store down", true, &cfg)
                .await
                .unwrap();
            if attempt < cfg.max_attempts {
                assert!(matches!(out, FailOutcome::Retry { .. }), "{out:?}");
                let j = get(db, &f.tenant, &id).await.unwrap().unwrap();
                assert_eq!(
                    (j.state.as_str(), j.last_error.as_deref()),
                    ("pending", Some("store down"))
                );
            } else {
                assert_eq!(out, FailOutcome::Dead);
            }
        }
        let dead = list(
            db,
            &JobFilter {
                state: Some("dead".into()),
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, id);
        assert!(f.audit_kinds("u1").await.contains(&"job.dead".to_string()));
        // Retried by an admin: pending again with a fresh budget, audited.
        assert!(retry(db, &f.tenant, &id, AuditActor::cli("jobs retry"))
            .await
            .unwrap());
        assert!(
            !retry(db, &f.tenant, &id, AuditActor::cli("jobs retry"))
                .await
                .unwrap(),
            "not dead any more"
        );
        let j = get(db, &f.tenant, &id).await.unwrap().unwrap();
        assert_eq!((j.state.as_str(), j.attempts), ("pending", 0));
        assert!(f
            .audit_kinds("u1")
            .await
            .contains(&"job.retried".to_string()));
        // A permanent error dead-letters at once.
        let job = store::lease(db, "w", 1, cfg.lease)
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(
            store::fail(db, &job, "w", "bad", false, &cfg)
                .await
                .unwrap(),
            FailOutcome::Dead
        );
    }
}

#[tokio::test]
async fn cancel_pending_only_cancels_what_has_not_started() {
    for f in fixtures().await {
        let db = f.db();
        let a = enqueue(db, &f.tenant, "a", None).await;
        let cancel = |id: String| async move {
            db.write(move |c: &mut AnyConnection| {
                Box::pin(async move { Ok::<_, StoreError>(cancel_pending(c, &id).await?) })
            })
            .await
            .unwrap()
        };
        assert!(cancel(a.clone()).await);
        assert!(!cancel(a.clone()).await);
        assert!(store::lease(db, "w", 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty());
        let b = enqueue(db, &f.tenant, "b", None).await;
        store::lease(db, "w", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(!cancel(b).await, "running");
    }
}

#[tokio::test]
async fn purge_and_recover() {
    for f in fixtures().await {
        let db = f.db();
        let id = enqueue(db, &f.tenant, "a", None).await;
        enqueue(db, &f.tenant, "b", None).await;
        let leased = store::lease(db, "w", 10, Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(leased.len(), 2);
        store::complete(db, &id, "w").await.unwrap();
        // A restart on SQLite makes the other running job runnable at once.
        assert_eq!(store::recover_running(db, "me-").await.unwrap(), 1);
        assert_eq!(
            store::lease(db, "w2", 10, Duration::from_secs(30))
                .await
                .unwrap()
                .len(),
            1
        );
        let future = crate::store::ts_from(chrono::Utc::now() + chrono::Duration::seconds(5));
        assert_eq!(purge_done(db, &future).await.unwrap(), 1);
        assert!(get(db, &f.tenant, &id).await.unwrap().is_none());
        let counts = store::counts(db, Some(&f.tenant)).await.unwrap();
        assert_eq!(counts, vec![("running".to_string(), 1)]);
    }
}

#[tokio::test]
async fn recovery_leaves_this_process_s_leases_running() {
    for f in fixtures().await {
        let db = f.db();
        enqueue(db, &f.tenant, "theirs", None).await;
        assert_eq!(
            store::lease(db, "old-0", 1, Duration::from_secs(300))
                .await
                .unwrap()
                .len(),
            1
        );
        let mine = enqueue(db, &f.tenant, "mine", None).await;
        let leased = store::lease(db, "me-0", 1, Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(leased[0].id, mine);
        // Only the previous process's job is made runnable; ours keeps its lease.
        assert_eq!(store::recover_running(db, "me-").await.unwrap(), 1);
        let job = get(db, &f.tenant, &mine).await.unwrap().unwrap();
        assert_eq!(job.state, "running");
        assert!(store::complete(db, &mine, "me-0").await.unwrap());
    }
}

/// Waits until `cond` holds, up to `secs`.
async fn eventually<F, Fut>(secs: u64, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_retry_through_a_flaky_store_and_complete() {
    for f in fixtures().await {
        let id = f.user_with_factors("flo").await;
        f.set_active(&id, false).await;
        let inner = factors::store_for_tenant(f.db(), f.ctx.master_key.clone(), &f.tenant);
        let flaky = Arc::new(factors::FlakyStore::new(inner));
        flaky.fail_next(2);
        factors::set_store_override(&f.tenant, flaky.clone());
        // Whatever the directory enqueued plus ours: all must end done.
        converge_job(f.db(), &f.tenant, &id, None).await;
        let workers = spawn_workers(f.ctx.clone(), 2);
        let db = f.db().clone();
        // Done when every job is done but the follow-up at revoke_after, which stays pending.
        let open = |db: Db| async move {
            let sql = "SELECT COUNT(*) FROM jobs WHERE state <> 'done' AND payload NOT LIKE '%scheduled%'";
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db.pool)
                .await
                .unwrap()
        };
        let done = eventually(10, || {
            let db = db.clone();
            async move { open(db).await == 0 }
        })
        .await;
        workers.shutdown().await;
        assert!(
            done,
            "jobs did not complete: {:?}",
            store::counts(f.db(), None).await.unwrap()
        );
        assert!(flaky.failures.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        assert!(f.all("flo", FactorStatus::Suspended).await);
        assert_eq!(f.live_sessions("flo").await, 0);
        factors::clear_store_override(&f.tenant);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_never_recovers_ends_in_a_dead_letter_with_an_alert() {
    for f in fixtures().await {
        let id = f.user_with_factors("gone").await;
        f.set_active(&id, false).await;
        let inner = factors::store_for_tenant(f.db(), f.ctx.master_key.clone(), &f.tenant);
        let flaky = Arc::new(factors::FlakyStore::new(inner));
        flaky.fail_forever(true);
        factors::set_store_override(&f.tenant, flaky.clone());
        converge_job(f.db(), &f.tenant, &id, None).await;
        let workers = spawn_workers(f.ctx.clone(), 1);
        let db = f.db().clone();
        let uid = id.clone();
        let dead = eventually(10, || {
            let (db, uid) = (db.clone(), uid.clone());
            async move {
                let filter = JobFilter {
                    state: Some("dead".into()),
                    user_id: Some(uid),
                    ..Default::default()
                };
                !list(&db, &filter, 10).await.unwrap().is_empty()
            }
        })
        .await;
        workers.shutdown().await;
        assert!(dead, "no dead letter");
        let filter = JobFilter {
            state: Some("dead".into()),
            user_id: Some(id.clone()),
            ..Default::default()
        };
        let job = list(f.db(), &filter, 10).await.unwrap().remove(0);
        assert_eq!(job.attempts, fast_jobs().max_attempts);
        assert!(job.last_error.unwrap().contains("FlakyStore"));
        assert!(f.audit_kinds(&id).await.contains(&"job.dead".to_string()));
        assert!(f.all("gone", FactorStatus::Active).await);
        factors::clear_store_override(&f.tenant);
    }
}

#[tokio::test]
async fn a_job_whose_workers_keep_dying_is_dead_lettered() {
    for f in fixtures().await {
        let db = f.db();
        let id = enqueue(db, &f.tenant, "crashy", None).await;
        // Every worker that takes it dies before recording anything.
        for _ in 0..f.ctx.jobs.max_attempts {
            assert_eq!(
                store::lease(db, "doomed", 1, Duration::ZERO)
                    .await
                    .unwrap()
                    .len(),
                1
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let job = store::lease(db, "w", 1, Duration::from_secs(30))
            .await
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(job.attempts, f.ctx.jobs.max_attempts + 1);
        worker::run_one(&f.ctx, "w", job).await;
        let j = get(db, &f.tenant, &id).await.unwrap().unwrap();
        assert_eq!(j.state, "dead");
        assert!(j.last_error.unwrap().contains("gave up"));
    }
}

/// A start on SQLite makes every running job pending again (the previous process is gone). No
/// worker may lease before that has run: a job leased first would be made pending under its
/// worker and leased by a second one, and run twice at once (seen in the SIGKILL test as an
/// action executed twice). Each job here must be leased exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_starting_on_a_backlog_lease_each_job_once() {
    for f in fixtures().await {
        let db = f.db();
        for round in 0..5 {
            for i in 0..40 {
                // Users that do not exist: their converge is quick and ends the job.
                enqueue(db, &f.tenant, &format!("gone-{round}-{i}"), None).await;
            }
            let workers = spawn_workers(f.ctx.clone(), 4);
            let pool = db.pool.clone();
            let all_done = eventually(10, || {
                let pool = pool.clone();
                async move {
                    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM jobs WHERE state <> 'done'")
                        .fetch_one(&pool)
                        .await
                        .unwrap()
                        == 0
                }
            })
            .await;
            workers.shutdown().await;
            assert!(all_done, "{:?}", store::counts(db, None).await.unwrap());
            let leased_twice: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE attempts <> 1")
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(leased_twice, 0, "{:?} round {round}", db.engine);
        }
    }
}
