//! Webhook tests against a real loopback receiver, on SQLite and (with `DEPROVD_TEST_PG`)
//! PostgreSQL: signatures verify, a receiver that was down gets everything in order per user
//! exactly once, lanes do not block each other, failing deliveries are kept and shown.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::factors::crypto::KeySource;
use crate::store::testing::fresh_dbs;

/// One request the receiver saw, and what it answered.
#[derive(Debug, Clone)]
struct Got {
    status: u16,
    event_id: String,
    timestamp: i64,
    signature: String,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

type Decide = dyn Fn(usize, &[u8]) -> u16 + Send + Sync;

struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
    fn ok(&self) -> Vec<Got> {
        self.all().into_iter().filter(|g| g.status == 200).collect()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A minimal HTTP/1.1 server on 127.0.0.1:0: one request per connection, answers with the
/// status `decide(request number, body)` returns.
async fn receiver(decide: Arc<Decide>) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let got2 = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (got, count, decide) = (got2.clone(), count.clone(), decide.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = find(&buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut headers = HashMap::new();
                for line in head.lines().skip(1) {
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = buf[head_end..head_end + len].to_vec();
                let n = count.fetch_add(1, Ordering::SeqCst);
                let status = decide(n, &body);
                got.lock().unwrap().push(Got {
                    status,
                    event_id: headers
                        .get("x-deprovd-event-id")
                        .cloned()
                        .unwrap_or_default(),
                    timestamp: headers
                        .get("x-deprovd-timestamp")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    signature: headers
                        .get("x-deprovd-signature")
                        .cloned()
                        .unwrap_or_default(),
                    body,
                });
                let reason = if status == 200 { "OK" } else { "Error" };
                let text = if status == 200 {
                    ""
                } else {
                    "receiver is down"
                };
                let resp = format!(
                    "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Receiver { url, got }
}

fn fast() -> DeliveryConfig {
    DeliveryConfig {
        poll_interval: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(60),
        failing_after: 3,
        batch: 32,
        lease: Duration::from_secs(30),
        retention: Duration::from_secs(3600),
    }
}

fn key() -> Arc<MasterKey> {
    Arc::new(MasterKey::generate(KeySource::Ephemeral))
}

async fn tenant(db: &Db, name: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let (id2, name) = (id.clone(), name.to_string());
    db.write(move |conn| {
        Box::pin(async move {
            sqlx::query("INSERT INTO tenants (id, name, created) VALUES ($1, $2, $3)")
                .bind(id2)
                .bind(name)
                .bind(now_ts())
                .execute(conn)
                .await
                .map(|_| ())
                .map_err(NotifyError::from)
        })
    })
    .await
    .unwrap();
    id
}

async fn subscribe(
    db: &Db,
    key: &Arc<MasterKey>,
    tenant: &str,
    url: &str,
    secret: Option<&str>,
    types: &[&str],
) -> (Subscription, String) {
    let valid = validate_subscription(NewSubscription {
        url: url.to_string(),
        secret: secret.map(str::to_string),
        event_types: types.iter().map(|t| t.to_string()).collect(),
        description: Some("test".into()),
    })
    .unwrap();
    let secret = valid.secret.clone();
    let (key, tenant) = (key.clone(), tenant.to_string());
    let sub = db
        .write(move |conn| {
            Box::pin(async move {
                create_subscription(conn, &key, &tenant, &valid)
                    .await
                    .map_err(NotifyError::from)
            })
        })
        .await
        .unwrap();
    (sub, secret)
}

async fn enqueue(db: &Db, tenant: &str, event_type: &str, user: Option<&str>, data: Value) {
    let (tenant, event_type, user) = (
        tenant.to_string(),
        event_type.to_string(),
        user.map(str::to_string),
    );
    db.write(move |conn| {
        Box::pin(async move {
            enqueue_event(conn, &tenant, &event_type, user.as_deref(), data)
                .await
                .map_err(NotifyError::from)
        })
    })
    .await
    .unwrap();
    nudge();
}

async fn wait_until<F: FnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the tenant's only subscription has `n` deliveries recorded done and none left
/// (an answered delivery is recorded just after the receiver answers).
async fn all_recorded(db: &Db, tenant: &str, n: i64) {
    let start = Instant::now();
    loop {
        let s = list_subscriptions(db, tenant)
            .await
            .unwrap()
            .remove(0)
            .deliveries;
        if (s.delivered, s.pending) == (n, 0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not all recorded: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (user, n) of every 200-answered delivery, in arrival order.
fn user_seq(got: &[Got]) -> Vec<(String, i64)> {
    got.iter()
        .map(|g| {
            let v = g.json();
            (
                v["userId"].as_str().unwrap_or("").to_string(),
                v["data"]["n"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_and_bodies_are_complete() {
    for db in fresh_dbs().await {
        let k = key();
        let t = tenant(&db, "sig").await;
        let rx = receiver(Arc::new(|_, _| 200)).await;
        let (sub, secret) =
            subscribe(&db, &k, &t, &rx.url, Some("a-very-secret-string-1234"), &[]).await;
        assert_eq!(sub.event_types, vec!["*"]);
        let worker = spawn_delivery(db.clone(), k.clone(), fast());
        for n in 0..9 {
            let user = format!("u{}", n % 3);
            enqueue(
                &db,
                &t,
                events::FACTOR_REVOKED,
                Some(&user),
                json!({"n": n, "factor": "f"}),
            )
            .await;
        }
        enqueue(&db, &t, events::GUARD_TRIPPED, None, json!({"n": 9})).await;
        wait_until("10 deliveries", 20, || rx.ok().len() >= 10).await;
        let now = Utc::now().timestamp();
        let got = rx.all();
        assert_eq!(got.len(), 10, "no retries were needed: {got:?}");
        let mut ids = HashSet::new();
        for g in &got {
            assert!(
                verify_signature_at(
                    secret.as_bytes(),
                    &g.signature,
                    g.timestamp,
                    &g.body,
                    now,
                    300
                ),
                "bad signature on {g:?}"
            );
            assert!(!verify_signature(
                b"another-secret-entirely",
                &g.signature,
                g.timestamp,
                &g.body
            ));
            let v = g.json();
            assert_eq!(
                v["id"].as_str(),
                Some(g.event_id.as_str()),
                "header id = body id"
            );
            assert_eq!(v["tenant"].as_str(), Some(t.as_str()));
            assert!(v["occurredAt"].as_str().is_some_and(|s| s.ends_with('Z')));
            assert!(ids.insert(g.event_id.clone()), "duplicate event id");
        }
        let guard = got
            .iter()
            .find(|g| g.json()["type"] == "guard_tripped")
            .unwrap();
        assert!(guard.json()["userId"].is_null());
        // every delivery recorded as done, none left
        all_recorded(&db, &t, 10).await;
        worker.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_gets_everything_later_in_order_per_user_exactly_once() {
    for db in fresh_dbs().await {
        let k = key();
        let t = tenant(&db, "down").await;
        // 500 for the first 12 requests, then up.
        let rx = receiver(Arc::new(|n, _| if n < 12 { 500 } else { 200 })).await;
        let (_, secret) = subscribe(
            &db,
            &k,
            &t,
            &rx.url,
            None,
            &["factor_revoked", "sessions_revoked"],
        )
        .await;
        assert!(secret.starts_with("whsec_"));
        // events before any worker runs (the receiver "was down" the whole time)
        let mut expected: HashMap<String, Vec<i64>> = HashMap::new();
        for n in 0..24i64 {
            let user = format!("u{}", n % 4);
            let ty = if n % 2 == 0 {
                events::FACTOR_REVOKED
            } else {
                events::SESSIONS_REVOKED
            };
            enqueue(&db, &t, ty, Some(&user), json!({ "n": n })).await;
            expected.entry(user).or_default().push(n);
        }
        // not subscribed: never sent
        enqueue(&db, &t, events::JOB_DEAD, Some("u0"), json!({"n": 99})).await;
        // two workers share the table: leases keep each delivery in one hand
        let w1 = spawn_delivery(db.clone(), k.clone(), fast());
        let w2 = spawn_delivery(db.clone(), k.clone(), fast());
        wait_until("24 delivered", 30, || rx.ok().len() >= 24).await;
        tokio::time::sleep(Duration::from_millis(300)).await; // nothing more should come
        let ok = rx.ok();
        assert_eq!(ok.len(), 24, "each event exactly once");
        let ids: HashSet<_> = ok.iter().map(|g| g.event_id.clone()).collect();
        assert_eq!(ids.len(), 24);
        let mut per_user: HashMap<String, Vec<i64>> = HashMap::new();
        for (u, n) in user_seq(&ok) {
            per_user.entry(u).or_default().push(n);
        }
        assert_eq!(per_user, expected, "each user's events in order");
        assert!(rx.all().iter().filter(|g| g.status == 500).count() >= 12);
        for g in rx.all() {
            assert!(verify_signature(
                secret.as_bytes(),
                &g.signature,
                g.timestamp,
                &g.body
            ));
        }
        all_recorded(&db, &t, 24).await;
        w1.abort();
        w2.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_failures_do_not_hold_up_another_user() {
    for db in fresh_dbs().await {
        let k = key();
        let t = tenant(&db, "lanes").await;
        let a_down = Arc::new(AtomicBool::new(true));
        let flag = a_down.clone();
        let rx = receiver(Arc::new(move |_, body: &[u8]| {
            let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            if v["userId"] == "a" && flag.load(Ordering::SeqCst) {
                503
            } else {
                200
            }
        }))
        .await;
        subscribe(&db, &k, &t, &rx.url, None, &["*"]).await;
        let worker = spawn_delivery(db.clone(), k.clone(), fast());
        for n in 0..5 {
            enqueue(
                &db,
                &t,
                events::FACTOR_SUSPENDED,
                Some("a"),
                json!({ "n": n }),
            )
            .await;
            enqueue(
                &db,
                &t,
                events::FACTOR_SUSPENDED,
                Some("b"),
                json!({ "n": n }),
            )
            .await;
        }
        wait_until("b's 5 events", 20, || rx.ok().len() >= 5).await;
        let ok = user_seq(&rx.ok());
        assert!(ok.iter().all(|(u, _)| u == "b"));
        assert_eq!(
            ok.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        // a's first event keeps failing and is shown as failing; the rest of a's wait behind it
        let db2 = db.clone();
        let t2 = t.clone();
        let start = Instant::now();
        loop {
            let s = list_subscriptions(&db2, &t2)
                .await
                .unwrap()
                .remove(0)
                .deliveries;
            // b's last delivery may be answered but not yet recorded: wait for both.
            if s.failing >= 1 && s.pending == 5 {
                assert!(
                    s.last_error.as_deref().is_some_and(|e| e.contains("503")),
                    "{s:?}"
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never marked failing: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let a_attempts: Vec<i64> = rx
            .all()
            .iter()
            .filter(|g| g.json()["userId"] == "a")
            .map(|g| g.json()["data"]["n"].as_i64().unwrap())
            .collect();
        assert!(
            a_attempts.iter().all(|n| *n == 0),
            "only a's first event is tried: {a_attempts:?}"
        );
        a_down.store(false, Ordering::SeqCst);
        wait_until("all 10", 20, || rx.ok().len() >= 10).await;
        let a: Vec<i64> = user_seq(&rx.ok())
            .into_iter()
            .filter(|(u, _)| u == "a")
            .map(|(_, n)| n)
            .collect();
        assert_eq!(a, vec![0, 1, 2, 3, 4]);
        worker.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_receiver_is_retried_never_dropped() {
    for db in fresh_dbs().await {
        let k = key();
        let t = tenant(&db, "gone").await;
        // a port nobody listens on
        let url = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/x", l.local_addr().unwrap())
        };
        let (sub, _) = subscribe(&db, &k, &t, &url, None, &["job_dead"]).await;
        let worker = spawn_delivery(db.clone(), k.clone(), fast());
        enqueue(&db, &t, events::JOB_DEAD, None, json!({"job": 1})).await;
        let start = Instant::now();
        let rows = loop {
            let rows = list_deliveries(&db, &t, &sub.id, 10).await.unwrap();
            if rows.first().is_some_and(|r| r.attempts >= 5) {
                break rows;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "not retried: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, "failed");
        assert!(
            rows[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("connect")),
            "{rows:?}"
        );
        assert!(
            !rows[0].last_error.as_deref().unwrap_or("").contains(&url),
            "no URL in errors"
        );
        let s = get_subscription(&db, &t, &sub.id).await.unwrap().unwrap();
        assert_eq!((s.deliveries.pending, s.deliveries.failing), (1, 1));
        worker.abort();
    }
}

#[tokio::test]
async fn events_follow_their_transaction_and_the_subscriptions() {
    for db in fresh_dbs().await {
        let k = key();
        let t = tenant(&db, "tx").await;
        let other = tenant(&db, "other").await;
        // no subscription: nothing stored
        enqueue(&db, &t, events::FACTOR_REVOKED, Some("u"), json!({})).await;
        assert_eq!(store::outbox_len(&db).await.unwrap(), 0);

        let (sub, _) = subscribe(
            &db,
            &k,
            &t,
            "https://example.com/hook",
            None,
            &["factor_revoked"],
        )
        .await;
        // type not subscribed: nothing stored
        enqueue(&db, &t, events::GUARD_TRIPPED, None, json!({})).await;
        // another tenant's event: nothing for this subscription
        enqueue(&db, &other, events::FACTOR_REVOKED, Some("u"), json!({})).await;
        assert_eq!(store::outbox_len(&db).await.unwrap(), 0);

        // a rolled-back transaction leaves no event
        let t2 = t.clone();
        let res: Result<(), NotifyError> = db
            .write(move |conn| {
                Box::pin(async move {
                    enqueue_event(conn, &t2, events::FACTOR_REVOKED, Some("u"), json!({})).await?;
                    Err(NotifyError::Invalid("the caller's change failed".into()))
                })
            })
            .await;
        assert!(res.is_err());
        assert_eq!(store::outbox_len(&db).await.unwrap(), 0);

        enqueue(&db, &t, events::FACTOR_REVOKED, Some("u"), json!({"x": 1})).await;
        assert_eq!(store::outbox_len(&db).await.unwrap(), 1);
        let rows = list_deliveries(&db, &t, &sub.id, 10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].state.as_str(), rows[0].attempts), ("pending", 0));
        assert_eq!(rows[0].user_id.as_deref(), Some("u"));
        // the other tenant sees no subscriptions
        assert!(list_subscriptions(&db, &other).await.unwrap().is_empty());
        assert!(get_subscription(&db, &other, &sub.id)
            .await
            .unwrap()
            .is_none());

        // ping goes to exactly one subscription
        let (sub2, _) = subscribe(&db, &k, &t, "https://example.org/h", None, &["*"]).await;
        let (t3, id2) = (t.clone(), sub2.id.clone());
        let ping = db
            .write(move |conn| {
                Box::pin(async move {
                    enqueue_ping(conn, &t3, &id2)
                        .await
                        .map_err(NotifyError::from)
                })
            })
            .await
            .unwrap();
        assert!(ping.is_some());
        assert_eq!(
            list_deliveries(&db, &t, &sub2.id, 10).await.unwrap().len(),
            1
        );
        assert_eq!(
            list_deliveries(&db, &t, &sub.id, 10).await.unwrap().len(),
            1
        );

        // deleting drops the undelivered deliveries; a second delete finds nothing
        let (t4, id) = (t.clone(), sub.id.clone());
        let deleted = db
            .write(move |conn| {
                Box::pin(async move {
                    let a = delete_subscription(conn, &t4, &id).await?;
                    let b = delete_subscription(conn, &t4, &id).await?;
                    Ok::<_, NotifyError>((a, b))
                })
            })
            .await
            .unwrap();
        assert_eq!(deleted, (true, false));
        assert!(list_deliveries(&db, &t, &sub.id, 10)
            .await
            .unwrap()
            .is_empty());
        // another tenant cannot delete it
        let (o, id) = (other.clone(), sub2.id.clone());
        let d = db
            .write(move |conn| {
                Box::pin(async move {
                    delete_subscription(conn, &o, &id)
                        .await
                        .map_err(NotifyError::from)
                })
            })
            .await
            .unwrap();
        assert!(!d);
    }
}

#[tokio::test]
async fn secret_is_encrypted_and_never_listed() {
    for db in fresh_dbs().await {
        let k = key();
        let t = tenant(&db, "sec").await;
        let secret = "my-shared-secret-value-42";
        let (sub, _) = subscribe(&db, &k, &t, "https://example.com/h", Some(secret), &[]).await;
        let stored: String =
            sqlx::query_scalar("SELECT secret_enc FROM webhook_subscriptions WHERE id = $1")
                .bind(&sub.id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert!(!stored.contains(secret));
        assert_eq!(
            k.decrypt(&stored, &secret_aad(&t, &sub.id)).unwrap(),
            secret.as_bytes()
        );
        // bound to its row: another id does not open it
        assert!(k.decrypt(&stored, &secret_aad(&t, "other")).is_err());
        let listed = serde_json::to_string(&list_subscriptions(&db, &t).await.unwrap()).unwrap();
        assert!(
            !listed.contains(secret) && !listed.contains("secret"),
            "{listed}"
        );
    }
}

#[tokio::test]
async fn prune_keeps_what_is_undelivered() {
    for db in fresh_dbs().await {
        let k = key();
        let t = tenant(&db, "prune").await;
        let (sub, _) = subscribe(&db, &k, &t, "https://example.com/h", None, &[]).await;
        enqueue(&db, &t, events::JOB_DEAD, Some("a"), json!({"n": 1})).await;
        enqueue(&db, &t, events::JOB_DEAD, Some("b"), json!({"n": 2})).await;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT d.id FROM webhook_deliveries d JOIN outbox o ON o.seq = d.event_seq \
             WHERE o.user_id = 'a'",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let removed = db
            .write(move |conn| {
                Box::pin(async move {
                    let now = now_ts();
                    let done = [(ids[0], store::AttemptResult::Delivered { status: 200 })];
                    store::record(conn, &done, &now).await?;
                    store::prune(conn, "9999-01-01T00:00:00.000000Z")
                        .await
                        .map_err(NotifyError::from)
                })
            })
            .await
            .unwrap();
        assert_eq!(removed, (1, 1));
        assert_eq!(store::outbox_len(&db).await.unwrap(), 1);
        let left = list_deliveries(&db, &t, &sub.id, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].user_id.as_deref(), left[0].state.as_str()),
            (Some("b"), "pending")
        );
    }
}

#[test]
fn validation() {
    let ok = |url: &str| NewSubscription {
        url: url.into(),
        ..Default::default()
    };
    let v = validate_subscription(ok("https://hooks.example.com/a?b=c")).unwrap();
    assert_eq!(v.event_types, vec!["*"]);
    assert!(v.secret.starts_with("whsec_") && v.secret.len() > 40);
    assert_ne!(
        v.secret,
        validate_subscription(ok("https://x.example"))
            .unwrap()
            .secret
    );
    assert!(validate_subscription(ok("http://127.0.0.1:9/x")).is_ok());
    for bad in [
        "",
        "not a url",
        "ftp://example.com/",
        "https://user:pw@example.com/",
        "https://example.com/#frag",
        "file:///etc/passwd",
    ] {
        assert!(
            matches!(validate_subscription(ok(bad)), Err(NotifyError::Invalid(_))),
            "{bad:?} accepted"
        );
    }
    let long = format!("https://example.com/{}", "a".repeat(3000));
    assert!(validate_subscription(ok(&long)).is_err());

    let with = |types: &[&str], secret: Option<&str>| NewSubscription {
        url: "https://example.com".into(),
        secret: secret.map(str::to_string),
        event_types: types.iter().map(|t| t.to_string()).collect(),
        description: None,
    };
    let v = validate_subscription(with(
        &["factor_revoked", "factor_revoked", "job_dead"],
        None,
    ))
    .unwrap();
    assert_eq!(v.event_types, vec!["factor_revoked", "job_dead"]);
    assert_eq!(
        validate_subscription(with(&["job_dead", "*"], None))
            .unwrap()
            .event_types,
        vec!["*"]
    );
    let err = validate_subscription(with(&["factor_revokd"], None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("factor_revokd") && err.contains("factor_revoked"),
        "{err}"
    );
    assert!(validate_subscription(with(&[], Some("short"))).is_err());
    assert!(validate_subscription(with(&[], Some("has a space in it, too long"))).is_err());
    assert!(validate_subscription(with(&[], Some(&"x".repeat(257)))).is_err());
    assert_eq!(
        validate_subscription(with(&[], Some("sixteen-chars-ok")))
            .unwrap()
            .secret,
        "sixteen-chars-ok"
    );
    // unknown fields are refused by serde, so a typo does not silently subscribe to everything
    assert!(serde_json::from_value::<NewSubscription>(
        json!({"url": "https://x", "eventType": ["a"]})
    )
    .is_err());
}

#[test]
fn backoff_grows_jitters_and_caps() {
    let cfg = DeliveryConfig {
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(600),
        ..Default::default()
    };
    for _ in 0..50 {
        let d1 = worker::backoff(&cfg, 1);
        assert!(
            d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1),
            "{d1:?}"
        );
        let d4 = worker::backoff(&cfg, 4);
        assert!(
            d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8),
            "{d4:?}"
        );
        for n in [11, 40, 1000, i64::MAX] {
            let d = worker::backoff(&cfg, n);
            assert!(
                d >= Duration::from_secs(300) && d <= Duration::from_secs(600),
                "{n}: {d:?}"
            );
        }
        assert!(worker::backoff(&cfg, 0) <= Duration::from_secs(1));
    }
}

#[test]
fn subscription_type_matching() {
    let types = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(type_matches(&types(&["*"]), "anything"));
    assert!(type_matches(
        &types(&["job_dead", "factor_revoked"]),
        "factor_revoked"
    ));
    assert!(!type_matches(&types(&["job_dead"]), "factor_revoked"));
    assert!(!type_matches(&types(&[]), "factor_revoked"));
}
