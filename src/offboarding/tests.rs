//! Offboarding on both engines: at a set time (a due job), now, cancel before it runs, an
//! already-inactive user is a no-op, an unknown user is refused.

use chrono::{Duration, Utc};
use serde_json::json;

use super::*;
use crate::engine::testkit::fixtures;
use crate::factors::FactorStatus;

fn hr(tenant: &str) -> Actor {
    Actor {
        tenant_id: tenant.to_string(),
        kind: ActorKind::Cli,
        id: "hr".into(),
        name: "hr-bot".into(),
        client_ip: None,
        request_id: None,
    }
}

async fn job_of(f: &crate::engine::testkit::Fixture, o: &Offboarding) -> Job {
    jobs::get(f.db(), &f.tenant, &o.job_id)
        .await
        .unwrap()
        .expect("job")
}

#[tokio::test]
async fn offboarding_at_a_time_deactivates_when_its_job_runs() {
    for f in fixtures().await {
        let id = f.user_with_factors("leaver").await;
        let at = Utc::now() + Duration::hours(2);
        let o = schedule(
            f.db(),
            &hr(&f.tenant),
            &f.tenant,
            "LEAVER",
            Some(at),
            Some("resigned".into()),
            Some("HR-42".into()),
        )
        .await
        .unwrap();
        assert_eq!(
            (o.user_id.as_str(), o.user_name.as_str(), o.state.as_str()),
            (id.as_str(), "leaver", "scheduled")
        );
        assert_eq!(o.at, ts_from(at));
        let job = job_of(&f, &o).await;
        assert_eq!(
            (job.kind.as_str(), job.state.as_str(), job.due.as_str()),
            ("offboard", "pending", o.at.as_str())
        );
        // Not due yet: nothing leases it.
        let leased = jobs::store::lease(f.db(), "w", 10, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        assert!(leased.iter().all(|j| j.kind != "offboard"));
        // When it runs, the user is deactivated through the directory and the offboarding is done.
        run_job(&f.ctx, &job).await.unwrap();
        let u = f
            .ctx
            .directory
            .get_user(&f.tenant, &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.resource["active"], json!(false));
        let done = get(f.db(), &f.tenant, &o.id).await.unwrap().unwrap();
        assert_eq!(
            (done.state.as_str(), done.outcome.as_deref()),
            ("done", Some("deactivated"))
        );
        assert!(done.done_at.is_some());
        let kinds = f.audit_kinds(&id).await;
        assert!(kinds.contains(&"offboarding.scheduled".to_string()));
        assert!(kinds.contains(&"offboarding.done".to_string()));
        // The deactivation converges like any other.
        crate::engine::converge(&f.ctx, &f.tenant, &id)
            .await
            .unwrap();
        assert!(f.all("leaver", FactorStatus::Suspended).await);
        // Running the job again changes nothing.
        run_job(&f.ctx, &job).await.unwrap();
        assert_eq!(list(f.db(), &f.tenant).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn offboarding_now_is_due_at_once() {
    for f in fixtures().await {
        f.user("now", json!({})).await;
        let past = Utc::now() - Duration::days(3);
        let o = schedule(
            f.db(),
            &hr(&f.tenant),
            &f.tenant,
            "now",
            Some(past),
            None,
            None,
        )
        .await
        .unwrap();
        assert!(o.at > ts_from(past), "a past time means now");
        let leased = jobs::store::lease(f.db(), "w", 10, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        assert!(leased.iter().any(|j| j.id == o.job_id));
    }
}

#[tokio::test]
async fn cancel_before_it_runs_and_not_after() {
    for f in fixtures().await {
        let id = f.user("stay", json!({})).await;
        let at = Some(Utc::now() + Duration::days(1));
        let o = schedule(f.db(), &hr(&f.tenant), &f.tenant, "stay", at, None, None)
            .await
            .unwrap();
        let c = cancel(f.db(), &hr(&f.tenant), &f.tenant, &o.id)
            .await
            .unwrap();
        assert_eq!(c.state, "cancelled");
        assert_eq!(job_of(&f, &o).await.state, "done");
        assert!(
            matches!(cancel(f.db(), &hr(&f.tenant), &f.tenant, &o.id).await, Err(OffboardError::NotCancellable(s)) if s == "cancelled")
        );
        // A cancelled offboarding's job does nothing even if it runs.
        run_job(&f.ctx, &job_of(&f, &o).await).await.unwrap();
        let u = f
            .ctx
            .directory
            .get_user(&f.tenant, &id)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(u.resource["active"], json!(false));
        assert!(f
            .audit_kinds(&id)
            .await
            .contains(&"offboarding.cancelled".to_string()));

        // Once its job has been leased it can no longer be cancelled.
        let o = schedule(f.db(), &hr(&f.tenant), &f.tenant, "stay", None, None, None)
            .await
            .unwrap();
        let leased = jobs::store::lease(f.db(), "w", 10, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        assert!(leased.iter().any(|j| j.id == o.job_id));
        assert!(matches!(
            cancel(f.db(), &hr(&f.tenant), &f.tenant, &o.id).await,
            Err(OffboardError::NotCancellable(_))
        ));
        assert!(matches!(
            cancel(f.db(), &hr(&f.tenant), &f.tenant, "nope").await,
            Err(OffboardError::NotFound)
        ));
        assert!(matches!(
            cancel(f.db(), &hr("other"), "other", &o.id).await,
            Err(OffboardError::NotFound)
        ));
    }
}

#[tokio::test]
async fn an_already_inactive_user_is_a_no_op() {
    for f in fixtures().await {
        let id = f.user("gone", json!({})).await;
        let o = schedule(f.db(), &hr(&f.tenant), &f.tenant, "gone", None, None, None)
            .await
            .unwrap();
        // The IdP got there first.
        f.set_active(&id, false).await;
        let version = f
            .ctx
            .directory
            .get_user(&f.tenant, &id)
            .await
            .unwrap()
            .unwrap()
            .version;
        run_job(&f.ctx, &job_of(&f, &o).await).await.unwrap();
        let done = get(f.db(), &f.tenant, &o.id).await.unwrap().unwrap();
        assert_eq!(
            (done.state.as_str(), done.outcome.as_deref()),
            ("done", Some("already_inactive"))
        );
        assert_eq!(
            f.ctx
                .directory
                .get_user(&f.tenant, &id)
                .await
                .unwrap()
                .unwrap()
                .version,
            version
        );
        // And a deleted user is done too.
        let id2 = f.user("deleted", json!({})).await;
        let o2 = schedule(
            f.db(),
            &hr(&f.tenant),
            &f.tenant,
            "deleted",
            None,
            None,
            None,
        )
        .await
        .unwrap();
        f.delete(&id2).await;
        run_job(&f.ctx, &job_of(&f, &o2).await).await.unwrap();
        let done = get(f.db(), &f.tenant, &o2.id).await.unwrap().unwrap();
        assert_eq!(done.outcome.as_deref(), Some("already_deleted"));
    }
}

#[tokio::test]
async fn unknown_users_and_oversized_text_are_refused() {
    for f in fixtures().await {
        assert!(matches!(
            schedule(
                f.db(),
                &hr(&f.tenant),
                &f.tenant,
                "nobody",
                None,
                None,
                None
            )
            .await,
            Err(OffboardError::UnknownUser(_))
        ));
        f.user("x", json!({})).await;
        let long = "a".repeat(MAX_TEXT + 1);
        assert!(matches!(
            schedule(
                f.db(),
                &hr(&f.tenant),
                &f.tenant,
                "x",
                None,
                Some(long),
                None
            )
            .await,
            Err(OffboardError::Invalid(_))
        ));
        assert!(list(f.db(), &f.tenant).await.unwrap().is_empty());
    }
}
