//! Webhooks and HR offboarding through the running app: a receiver on loopback verifies every
//! signature of the events a deactivation produces, including after it was down for a while;
//! an offboarding deactivates like the IdP would, and the IdP's later deactivation is a no-op.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::lifecycle::{all_status, enroll, set_policy, wait_for, POLICY};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Default)]
struct Receiver {
    /// Answer 500 to this many requests first (a receiver that is down).
    fail_first: Mutex<u32>,
    events: Mutex<Vec<Value>>,
    bad_signatures: Mutex<u32>,
    secret: Mutex<String>,
}

async fn receive(req: HttpRequest, body: web::Bytes, rx: web::Data<Arc<Receiver>>) -> HttpResponse {
    {
        let mut f = rx.fail_first.lock().unwrap();
        if *f > 0 {
            *f -= 1;
            return HttpResponse::InternalServerError().finish();
        }
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let ts: i64 = header("x-deprovd-timestamp").parse().unwrap_or(0);
    let secret = rx.secret.lock().unwrap().clone();
    if !deprovd::notify::verify_signature(
        secret.as_bytes(),
        &header("x-deprovd-signature"),
        ts,
        &body,
    ) {
        *rx.bad_signatures.lock().unwrap() += 1;
        return HttpResponse::Unauthorized().finish();
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(
        v["id"].as_str(),
        Some(header("x-deprovd-event-id").as_str())
    );
    rx.events.lock().unwrap().push(v);
    HttpResponse::Ok().finish()
}

fn start_receiver(rx: Arc<Receiver>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = web::Data::new(rx);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/hook", web::post().to(receive))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://127.0.0.1:{port}/hook")
}

#[tokio::test]
async fn webhooks_are_signed_and_survive_a_receiver_outage() {
    for app in apps().await {
        let e = app.engine;
        set_policy(&app, POLICY).await;
        let rx = Arc::new(Receiver::default());
        *rx.fail_first.lock().unwrap() = 5;
        let url = start_receiver(rx.clone());
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/webhooks",
                Some(&json!({"url": url, "eventTypes": ["factor_suspended", "sessions_revoked"]})),
            )
            .await;
        assert_eq!(r.status, 201, "[{e}] {}", r.text);
        *rx.secret.lock().unwrap() = r.body["secret"]
            .as_str()
            .expect("secret shown once")
            .to_string();
        let listed = app.admin(Method::GET, "/admin/v1/webhooks", None).await;
        assert!(
            !listed.text.contains(&*rx.secret.lock().unwrap()),
            "the secret is never shown again"
        );

        let mut ids = Vec::new();
        for i in 0..3 {
            let id = app.create_user(&format!("hooked{i}@example.com")).await["id"]
                .as_str()
                .unwrap()
                .to_string();
            enroll(&app, &id, json!({"type": "totp"})).await;
            enroll(
                &app,
                &id,
                json!({"type": "webauthn", "credentialId": format!("c{i}"), "publicKey": "pk"}),
            )
            .await;
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
            let n = rx
                .events
                .lock()
                .unwrap()
                .iter()
                .filter(|v| v["type"] == "factor_suspended")
                .count();
            if n >= 6 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "[{e}] only {n} factor_suspended events arrived"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            *rx.bad_signatures.lock().unwrap(),
            0,
            "[{e}] every signature verifies"
        );
        let events = rx.events.lock().unwrap().clone();
        let mut seen = std::collections::HashSet::new();
        for ev in &events {
            assert!(
                seen.insert(ev["id"].as_str().unwrap().to_string()),
                "[{e}] an event id arrived twice"
            );
            assert!(
                ids.iter().any(|id| ev["userId"] == id.as_str()),
                "[{e}] {ev}"
            );
        }
    }
}

#[tokio::test]
async fn offboarding_now_and_later_and_the_idp_deactivation_after_it_is_a_no_op() {
    for app in apps().await {
        let e = app.engine;
        set_policy(&app, POLICY).await;
        let id = app.create_user("hr-leaver@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        enroll(&app, &id, json!({"type": "totp"})).await;
        let r = app.admin(Method::POST, "/admin/v1/offboardings", Some(&json!({"userName": "HR-Leaver@example.com", "reason": "resigned", "ticket": "HR-42"}))).await;
        assert!(r.status == 201 || r.status == 200, "[{e}] {}", r.text);
        wait_for(&app, &id, "suspension by offboarding", |v| {
            all_status(v, "suspended")
        })
        .await;
        let u = app.get(&format!("/Users/{id}")).await;
        assert_eq!(u.body["active"], false, "[{e}] the directory says inactive");
        // the IdP sends the same deactivation later: 200, no new version, no conflict
        let version = u.body["meta"]["version"].clone();
        let r = app
            .patch(
                &format!("/Users/{id}"),
                &patch(json!([{"op": "replace", "value": {"active": false}}])),
            )
            .await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        assert_eq!(r.body["meta"]["version"], version);
        let list = app.admin(Method::GET, "/admin/v1/offboardings", None).await;
        assert!(
            list.text.contains("HR-42") && list.text.contains("done"),
            "[{e}] {}",
            list.text
        );

        // scheduled for later, cancelled before it is due: nothing happens
        let other = app.create_user("stays@example.com").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let r = app
            .admin(
                Method::POST,
                "/admin/v1/offboardings",
                Some(&json!({"userName": "stays@example.com", "at": at})),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "[{e}] {}", r.text);
        let oid = r.body["id"].as_str().unwrap().to_string();
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/v1/offboardings/{oid}/cancel"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "[{e}] {}", r.text);
        assert_eq!(
            app.get(&format!("/Users/{other}")).await.body["active"],
            true
        );
    }
}
