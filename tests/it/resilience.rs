//! Nothing is lost: a SIGKILLed server, a factor store that fails, the blast-radius guard, a
//! tampered audit log, and webhook receivers that are down. The crash test runs the real
//! `deprovd` binary; the others run the in-process app with a test factor store installed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::lifecycle::{all_status, enroll, factors, set_policy, POLICY};
use reqwest::Method;
use serde_json::json;

/// A `deprovd serve` child process on a free loopback port.
struct Server {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(database_url: &str, dir: &std::path::Path) -> (Server, Option<(String, String)>) {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_deprovd"))
        .arg("serve")
        .env("DEPROVD_DATABASE_URL", database_url)
        .env("DEPROVD_LISTEN", format!("127.0.0.1:{port}"))
        .env("DEPROVD_MASTER_KEY", deprovd_test_key())
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start deprovd");
    // Read stdout on a thread: a restarted server prints nothing, and a blocking read here
    // would stall the test's runtime.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "deprovd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // First-run tokens are printed before the server binds, so they are there by now.
    let (mut scim, mut admin) = (None, None);
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
        if l.starts_with("SCIM token") {
            scim = l.split(": ").nth(1).map(str::to_string);
        } else if l.starts_with("Admin token") {
            admin = l.split(": ").nth(1).map(str::to_string);
        }
    }
    let tokens = scim.zip(admin);
    (Server { child, base }, tokens)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigkill_right_after_answering_loses_nothing() {
    let engines: Vec<&str> = if std::env::var("DEPROVD_TEST_PG").is_ok_and(|v| !v.is_empty()) {
        vec!["sqlite", "postgres"]
    } else {
        vec!["sqlite"]
    };
    for engine in engines {
        let dir = tempfile::tempdir().unwrap();
        let database = fresh_database(engine, dir.path()).await;
        let url = database.url.clone();
        let (mut server, tokens) = start_server(&url, dir.path());
        let (scim, admin) = tokens.expect("first-run tokens");
        let client = reqwest::Client::new();
        let policy = POLICY.replace("revoke_after = \"3s\"", "revoke_after = \"30d\"");
        let r = client
            .put(format!("{}/admin/v1/policy", server.base))
            .bearer_auth(&admin)
            .header("content-type", "text/plain")
            .body(policy)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut ids = Vec::new();
        for i in 0..40 {
            let r = client
                .post(format!("{}/scim/v2/Users", server.base))
                .bearer_auth(&scim)
                .header("content-type", SCIM)
                .body(user(&format!("crash{i}@example.com")).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201);
            let id = r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            for t in ["totp", "recovery_codes"] {
                let r = client
                    .post(format!("{}/admin/v1/users/{id}/factors", server.base))
                    .bearer_auth(&admin)
                    .json(&json!({"type": t}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
            }
            ids.push(id);
        }
        // a batch of deactivations, all answered, then SIGKILL at once
        let mut tasks = Vec::new();
        for id in &ids {
            let (client, url, scim) = (
                client.clone(),
                format!("{}/scim/v2/Users/{id}", server.base),
                scim.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let body = patch(json!([{"op": "replace", "value": {"active": false}}]));
                client
                    .patch(url)
                    .bearer_auth(scim)
                    .header("content-type", SCIM)
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        drop(server);

        let (server, tokens) = start_server(&url, dir.path());
        assert!(tokens.is_none(), "a restart prints no new tokens");
        let start = Instant::now();
        for id in &ids {
            loop {
                let v: serde_json::Value = client
                    .get(format!("{}/admin/v1/users/{id}/factors", server.base))
                    .bearer_auth(&admin)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if all_status(&v, "suspended") {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "[{engine}] {id} did not converge after the crash: {v}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Idempotent: no factor was suspended twice in a way that shows in the audit.
        for id in &ids {
            let v: serde_json::Value = client
                .get(format!(
                    "{}/admin/v1/audit?user={id}&kind=action.&limit=500",
                    server.base
                ))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut seen = std::collections::HashSet::new();
            for e in v["entries"].as_array().unwrap() {
                if e["kind"] == "action.executed" {
                    let key = format!("{}:{}", e["detail"]["action"], e["detail"]["factor_id"]);
                    assert!(
                        seen.insert(key.clone()),
                        "[{engine}] action ran twice: {key}"
                    );
                }
            }
        }
        // and the audit chain is intact after the crash
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_deprovd"))
            .args(["audit", "verify"])
            .env("DEPROVD_DATABASE_URL", &url)
            .env("DEPROVD_MASTER_KEY", deprovd_test_key())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "[{engine}] {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// `deprovd audit verify` on the app's database, run without blocking the test's runtime (the
/// in-process app's writer lives on it, and may hold the SQLite write lock mid-batch).
async fn audit_verify(app: &TestApp) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_deprovd"))
        .args(["audit", "verify"])
        .env("DEPROVD_DATABASE_URL", &app.database_url)
        .env("DEPROVD_MASTER_KEY", deprovd_test_key())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn three_changes(app: &TestApp, name: &str) {
    let id = app.create_user(name).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for t in ["A", "B", "C"] {
        app.patch(
            &format!("/Users/{id}"),
            &patch(json!([{"op": "replace", "path": "title", "value": t}])),
        )
        .await;
    }
}

#[tokio::test]
async fn audit_verify_names_an_edited_deleted_or_reordered_entry() {
    for app in apps().await {
        let e = app.engine;
        three_changes(&app, "evidence@example.com").await;
        let (ok, text) = audit_verify(&app).await;
        assert!(ok, "[{e}] clean chain: {text}");
        let pool = &app.state.db.pool;
        sqlx::query("UPDATE audit_log SET detail = '{\"forged\":true}' WHERE seq = 3")
            .execute(pool)
            .await
            .unwrap();
        let (ok, text) = audit_verify(&app).await;
        assert!(
            !ok && text.contains("seq 3"),
            "[{e}] edit not named: {text}"
        );
    }
    for app in apps().await {
        three_changes(&app, "evidence2@example.com").await;
        // Verifying links what is pending (PostgreSQL), so the rows below exist to tamper with.
        assert!(audit_verify(&app).await.0, "[{}] clean chain", app.engine);
        sqlx::query("DELETE FROM audit_log WHERE seq = 2")
            .execute(&app.state.db.pool)
            .await
            .unwrap();
        let (ok, text) = audit_verify(&app).await;
        assert!(!ok, "[{}] deletion not detected: {text}", app.engine);
    }
    for app in apps().await {
        three_changes(&app, "evidence3@example.com").await;
        assert!(audit_verify(&app).await.0, "[{}] clean chain", app.engine);
        // swap two entries' positions
        let pool = &app.state.db.pool;
        sqlx::query("UPDATE audit_log SET seq = -1 WHERE seq = 2")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET seq = 2 WHERE seq = 3")
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET seq = 3 WHERE seq = -1")
            .execute(pool)
            .await
            .unwrap();
        let (ok, text) = audit_verify(&app).await;
        assert!(!ok, "[{}] reordering not detected: {text}", app.engine);
    }
}

#[tokio::test]
async fn factor_store_outage_delays_then_completes_and_a_dead_job_can_be_retried() {
    let app = spawn_app_with("sqlite", |c| {
        c.job_backoff_base = Duration::from_millis(20);
        c.job_backoff_cap = Duration::from_millis(100);
        c.job_max_attempts = 4;
    })
    .await;
    set_policy(&app, POLICY).await;
    let tenant = crate::users::default_tenant_id(&app).await;
    let builtin =
        deprovd::factors::store_for_tenant(&app.state.db, app.state.master_key.clone(), &tenant);
    let flaky = Arc::new(deprovd::factors::FlakyStore::new(builtin));
    deprovd::factors::set_store_override(&tenant, flaky.clone());

    // fails 3 times, then recovers: the action is delayed, not dropped
    let a = app.create_user("flaky-a@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    enroll(&app, &a, json!({"type": "totp"})).await;
    flaky.fail_next(3);
    app.patch(
        &format!("/Users/{a}"),
        &patch(json!([{"op": "replace", "path": "active", "value": false}])),
    )
    .await;
    crate::lifecycle::wait_for(&app, &a, "suspension after the outage", |v| {
        all_status(v, "suspended")
    })
    .await;
    assert!(flaky.failures.load(std::sync::atomic::Ordering::SeqCst) >= 3);

    // never recovers: dead-lettered, shown, and retried from the admin API once it is back
    let b = app.create_user("flaky-b@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    enroll(&app, &b, json!({"type": "totp"})).await;
    flaky.fail_forever(true);
    app.patch(
        &format!("/Users/{b}"),
        &patch(json!([{"op": "replace", "path": "active", "value": false}])),
    )
    .await;
    let start = Instant::now();
    let dead = loop {
        let r = app
            .admin(Method::GET, "/admin/v1/jobs?state=dead", None)
            .await;
        let jobs = r.body["jobs"].as_array().cloned().unwrap_or_default();
        if let Some(j) = jobs
            .into_iter()
            .find(|j| j["user_id"] == b.as_str() || j["userId"] == b.as_str())
        {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no dead job: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        all_status(&factors(&app, &b).await, "active"),
        "nothing executed while the store is down"
    );
    let r = app
        .admin(Method::GET, "/admin/v1/audit?kind=job.dead", None)
        .await;
    assert!(
        r.body["entries"].as_array().is_some_and(|e| !e.is_empty()),
        "the dead letter is alerted in the audit: {}",
        r.text
    );
    flaky.fail_forever(false);
    let r = app
        .admin(
            Method::POST,
            &format!("/admin/v1/jobs/{}/retry", dead["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(r.status == 200 || r.status == 202, "{}", r.text);
    crate::lifecycle::wait_for(&app, &b, "suspension after retry", |v| {
        all_status(v, "suspended")
    })
    .await;
    deprovd::factors::clear_store_override(&tenant);
}

#[tokio::test]
async fn guard_quarantines_the_excess_release_executes_discard_drops() {
    for app in apps().await {
        let e = app.engine;
        // revoke_after far away, so only the deactivations count against the window
        let policy = POLICY
            .replace(
                "max_destructive_per_15m = 1000",
                "max_destructive_per_15m = 3",
            )
            .replace("revoke_after = \"3s\"", "revoke_after = \"30d\"");
        set_policy(&app, &policy).await;
        let mut ids = Vec::new();
        for i in 0..6 {
            let id = app.create_user(&format!("mass{i}@example.com")).await["id"]
                .as_str()
                .unwrap()
                .to_string();
            enroll(&app, &id, json!({"type": "totp"})).await;
            ids.push(id);
        }
        for id in &ids {
            app.patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "replace", "path": "active", "value": false}])),
            )
            .await;
        }
        let start = Instant::now();
        loop {
            let r = app.admin(Method::GET, "/admin/v1/guard", None).await;
            if r.body["tripped"] == true
                && r.body["quarantined"]
                    .as_array()
                    .is_some_and(|q| !q.is_empty())
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "[{e}] guard did not trip: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut suspended = 0;
        for id in &ids {
            if all_status(&factors(&app, id).await, "suspended") {
                suspended += 1;
            }
        }
        assert!(
            suspended <= 3,
            "[{e}] at most the threshold ran: {suspended}"
        );
        assert!(suspended < ids.len(), "[{e}] the excess is quarantined");
        let r = app
            .admin(Method::POST, "/admin/v1/guard/release", Some(&json!({})))
            .await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        for id in &ids {
            crate::lifecycle::wait_for(&app, id, "suspension after release", |v| {
                all_status(v, "suspended")
            })
            .await;
        }
        // a second wave, discarded this time: recorded, not executed
        let mut wave = Vec::new();
        for i in 0..6 {
            let id = app.create_user(&format!("wave{i}@example.com")).await["id"]
                .as_str()
                .unwrap()
                .to_string();
            enroll(&app, &id, json!({"type": "totp"})).await;
            wave.push(id);
        }
        for id in &wave {
            app.patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "replace", "path": "active", "value": false}])),
            )
            .await;
        }
        let start = Instant::now();
        loop {
            let r = app.admin(Method::GET, "/admin/v1/guard", None).await;
            if r.body["tripped"] == true {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "[{e}] guard did not trip again: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = app
            .admin(Method::POST, "/admin/v1/guard/discard", Some(&json!({})))
            .await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        let r = app
            .admin(Method::GET, "/admin/v1/audit?kind=guard.discarded", None)
            .await;
        assert!(
            r.body["entries"].as_array().is_some_and(|a| !a.is_empty()),
            "[{e}] discard audited: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let active = {
            let mut n = 0;
            for id in &wave {
                if all_status(&factors(&app, id).await, "active") {
                    n += 1;
                }
            }
            n
        };
        assert!(active >= 1, "[{e}] discarded actions did not run");
    }
}
