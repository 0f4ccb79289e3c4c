//! Issue 3 end to end over HTTP: SCIM changes become factor and session action in the built-in
//! factor store, through the durable job queue, with the audit trail to show for it.

use std::time::{Duration, Instant};

use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

pub const POLICY: &str = r#"
mode = "enforce"
[link]
by = "userName"
[deactivated]
factors = "suspend"
sessions = "revoke"
revoke_after = "3s"
[deleted]
factors = "revoke"
sessions = "revoke"
[[require]]
who = 'groups.display eq "Admins" or roles.value eq "admin"'
factors = ["webauthn"]
grace = "72h"
[[forbid]]
who = 'userType eq "Contractor"'
factors = ["sms", "voice"]
[guard]
max_destructive_per_15m = 1000
max_destructive_percent_per_15m = 100
percent_applies_above = 1000
"#;

pub async fn set_policy(app: &TestApp, text: &str) {
    let r = app
        .client
        .put(format!("{}/admin/v1/policy", app.base))
        .bearer_auth(&app.admin_token)
        .header("content-type", "text/plain")
        .body(text.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "[{}] set policy: {body}", app.engine);
}

pub async fn enroll(app: &TestApp, user_id: &str, body: Value) -> Value {
    let r = app
        .admin(
            Method::POST,
            &format!("/admin/v1/users/{user_id}/factors"),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 201, "[{}] enroll {body}: {}", app.engine, r.text);
    r.body
}

pub async fn factors(app: &TestApp, user_id: &str) -> Value {
    let r = app
        .admin(
            Method::GET,
            &format!("/admin/v1/users/{user_id}/factors"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "[{}] {}", app.engine, r.text);
    r.body
}

pub fn statuses(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["factors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["type"].as_str().unwrap().to_string(),
                f["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Polls until `done` holds or the bound passes; returns how long it took.
pub async fn wait_for(
    app: &TestApp,
    user_id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let v = factors(app, user_id).await;
        if done(&v) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "[{}] timed out waiting for {what}: {v}",
            app.engine
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn new_session(app: &TestApp, user_key: &str) {
    let tenant = crate::users::default_tenant_id(app).await;
    deprovd::factors::create_session(&app.state.db, &tenant, user_key)
        .await
        .unwrap();
}

pub fn all_status(v: &Value, status: &str) -> bool {
    let f = v["factors"].as_array().unwrap();
    !f.is_empty() && f.iter().all(|f| f["status"] == status)
}

pub fn sessions_revoked(v: &Value) -> bool {
    v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["revoked"] == true)
}

async fn audit_kinds(app: &TestApp, user_id: &str) -> Vec<String> {
    let r = app
        .admin(
            Method::GET,
            &format!("/admin/v1/audit?user={user_id}&limit=500"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn deactivation_suspends_reactivation_resumes_and_revoke_after_revokes() {
    for app in apps().await {
        let e = app.engine;
        set_policy(&app, POLICY).await;
        let id = app.create_user("leaver@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let totp = enroll(&app, &id, json!({"type": "totp", "label": "phone"})).await;
        assert!(
            totp["otpauthUri"]
                .as_str()
                .unwrap()
                .starts_with("otpauth://totp/"),
            "[{e}] {totp}"
        );
        enroll(&app, &id, json!({"type": "webauthn", "label": "key", "credentialId": "cred-1", "publicKey": "pk-1"})).await;
        let codes = enroll(&app, &id, json!({"type": "recovery_codes"})).await;
        assert_eq!(codes["recoveryCodes"].as_array().unwrap().len(), 10);
        new_session(&app, "leaver@example.com").await;
        new_session(&app, "leaver@example.com").await;
        assert_eq!(statuses(&factors(&app, &id).await).len(), 3);

        // deactivate through SCIM, as Okta sends it
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "replace", "value": {"active": false}}])),
            )
            .await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        let took = wait_for(&app, &id, "suspension", |v| {
            all_status(v, "suspended") && sessions_revoked(v)
        })
        .await;
        println!("[{e}] deactivation → all factors suspended and sessions revoked in {took:?}");

        // the audit shows the SCIM write, the decision and each action (each outcome is
        // recorded right after the factor store answers, so give it a moment)
        let start = Instant::now();
        let kinds = loop {
            let kinds = audit_kinds(&app, &id).await;
            if kinds.iter().filter(|k| *k == "action.executed").count() >= 4
                || start.elapsed() > Duration::from_secs(20)
            {
                break kinds;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            kinds.contains(&"scim.user.deactivated".to_string()),
            "[{e}] {kinds:?}"
        );
        assert!(
            kinds.contains(&"policy.decision".to_string()),
            "[{e}] {kinds:?}"
        );
        assert!(
            kinds.iter().filter(|k| *k == "action.executed").count() >= 4,
            "[{e}] 3 suspensions + sessions: {kinds:?}"
        );

        // reactivation within revoke_after resumes them
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "Replace", "path": "active", "value": "True"}])),
            )
            .await;
        assert_eq!(r.status, 200);
        wait_for(&app, &id, "resume", |v| all_status(v, "active")).await;

        // deactivate again and let revoke_after (3 s) pass: revoked, not resumable
        app.patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "replace", "path": "active", "value": false}])),
        )
        .await;
        wait_for(&app, &id, "suspension", |v| all_status(v, "suspended")).await;
        wait_for(&app, &id, "revocation after revoke_after", |v| {
            all_status(v, "revoked")
        })
        .await;
        app.patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "replace", "path": "active", "value": true}])),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            all_status(&factors(&app, &id).await, "revoked"),
            "[{e}] revoked factors stay revoked; the user re-enrolls"
        );
    }
}

#[tokio::test]
async fn delete_revokes_at_once() {
    for app in apps().await {
        set_policy(&app, POLICY).await;
        let id = app.create_user("deleted@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        enroll(&app, &id, json!({"type": "totp"})).await;
        enroll(
            &app,
            &id,
            json!({"type": "sms", "destination": "+15550100"}),
        )
        .await;
        new_session(&app, "deleted@example.com").await;
        let tenant = crate::users::default_tenant_id(&app).await;
        assert_eq!(app.delete(&format!("/Users/{id}")).await.status, 204);
        // the user is gone from the directory; read the factor store by its link key
        let start = Instant::now();
        loop {
            let list = deprovd::factors::list(&app.state.db, &tenant, "deleted@example.com")
                .await
                .unwrap();
            let sessions =
                deprovd::factors::list_sessions(&app.state.db, &tenant, "deleted@example.com")
                    .await
                    .unwrap();
            if list
                .iter()
                .all(|f| f.status == deprovd::factors::FactorStatus::Revoked)
                && sessions.iter().all(|s| s.revoked)
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "[{}] not revoked: {list:?}",
                app.engine
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The admin API still answers for the deleted user, by SCIM id: revoked factors and
        // ended sessions, and when the user was deleted. Enrolling for them is refused.
        let v = factors(&app, &id).await;
        assert_eq!(v["linkKey"], "deleted@example.com", "[{}] {v}", app.engine);
        assert!(v["deletedAt"].is_string(), "[{}] {v}", app.engine);
        let statuses: Vec<&str> = v["factors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, vec!["revoked", "revoked"], "[{}] {v}", app.engine);
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/v1/users/{id}/factors"),
                Some(&json!({"type": "totp"})),
            )
            .await;
        assert_eq!(r.status, 404, "[{}] {}", app.engine, r.text);
        // An id that never existed is still 404.
        let r = app
            .admin(
                Method::GET,
                "/admin/v1/users/00000000-0000-4000-8000-000000000000/factors",
                None,
            )
            .await;
        assert_eq!(r.status, 404, "[{}] {}", app.engine, r.text);
    }
}

#[tokio::test]
async fn joining_admins_requires_webauthn_and_contractor_sms_is_revoked() {
    for app in apps().await {
        let e = app.engine;
        set_policy(&app, POLICY).await;
        let admin = app.create_user("new-admin@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        enroll(&app, &admin, json!({"type": "totp"})).await;
        app.create_group("Admins", &[&admin]).await;
        let start = Instant::now();
        loop {
            let v = factors(&app, &admin).await;
            let reqs = v["requirements"].as_array().cloned().unwrap_or_default();
            if reqs.iter().any(|r| {
                r["types"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!("webauthn")))
            }) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "[{e}] no webauthn requirement: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            all_status(&factors(&app, &admin).await, "active"),
            "[{e}] enforcement does not remove factors"
        );

        let mut contractor = user("contractor@example.com");
        contractor["userType"] = json!("Contractor");
        let r = app.post("/Users", &contractor).await;
        let cid = r.body["id"].as_str().unwrap().to_string();
        enroll(&app, &cid, json!({"type": "totp"})).await;
        enroll(
            &app,
            &cid,
            json!({"type": "sms", "destination": "+15550199"}),
        )
        .await;
        // any trigger converges; the enrollment itself is not a SCIM change, so touch the user
        app.patch(
            &format!("/Users/{cid}"),
            &patch(json!([{"op": "replace", "path": "title", "value": "Temp"}])),
        )
        .await;
        wait_for(&app, &cid, "sms revoked", |v| {
            statuses(v)
                == vec![
                    ("sms".to_string(), "revoked".to_string()),
                    ("totp".to_string(), "active".to_string()),
                ]
        })
        .await;
    }
}

#[tokio::test]
async fn audit_only_mode_records_and_executes_nothing() {
    for app in apps().await {
        set_policy(
            &app,
            &POLICY.replace("mode = \"enforce\"", "mode = \"audit-only\""),
        )
        .await;
        let id = app.create_user("watched@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        enroll(&app, &id, json!({"type": "totp"})).await;
        app.patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "replace", "path": "active", "value": false}])),
        )
        .await;
        let start = Instant::now();
        loop {
            let kinds = audit_kinds(&app, &id).await;
            if kinds.contains(&"action.would_execute".to_string()) {
                assert!(!kinds.contains(&"action.executed".to_string()), "{kinds:?}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "[{}] {kinds:?}",
                app.engine
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            all_status(&factors(&app, &id).await, "active"),
            "[{}] audit-only executes nothing",
            app.engine
        );
    }
}

#[tokio::test]
async fn admin_enroll_and_revoke_commit_with_their_audit_entries() {
    for app in apps().await {
        let e = app.engine;
        let id = app.create_user("audited@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let f = enroll(&app, &id, json!({"type": "totp"})).await;
        let fid = f["factor"]["id"].as_str().unwrap().to_string();
        let r = app
            .admin(Method::GET, "/admin/v1/audit?kind=factor.&limit=100", None)
            .await;
        let entries = r.body["entries"].as_array().unwrap().clone();
        let enrolled: Vec<_> = entries
            .iter()
            .filter(|x| x["kind"] == "factor.enrolled" && x["detail"]["factor_id"] == fid.as_str())
            .collect();
        assert_eq!(enrolled.len(), 1, "[{e}] {}", r.text);
        assert_eq!(
            enrolled[0]["subject"],
            id.as_str(),
            "[{e}] the SCIM user is the subject"
        );
        for (i, want_changed) in [true, false].into_iter().enumerate() {
            let r = app
                .admin(
                    Method::POST,
                    &format!("/admin/v1/factors/{fid}/revoke"),
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "[{e}] revoke #{i}: {}", r.text);
            assert_eq!(r.body["changed"], want_changed, "[{e}] revoke #{i}");
            assert_eq!(r.body["status"], "revoked");
        }
        let r = app
            .admin(
                Method::GET,
                "/admin/v1/audit?kind=factor.revoked&limit=100",
                None,
            )
            .await;
        let n = r.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["detail"]["factor_id"] == fid.as_str())
            .count();
        assert_eq!(n, 1, "[{e}] one revocation, one entry: {}", r.text);
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/factors/no-such-factor/revoke",
                None,
            )
            .await;
        assert_eq!(r.status, 404, "[{e}] {}", r.text);
    }
}
