//! The delivery worker: takes due deliveries (at most one per (subscription, user) at a time,
//! so each user's events arrive in order), leases them, POSTs them signed, and records the
//! outcome: done on a 2xx, otherwise a retry after an exponential backoff with jitter. It never
//! gives up on a delivery; after `failing_after` attempts in a row it marks it `failed` (shown
//! by the admin API) and keeps retrying at the cap.
//!
//! Several workers may run (replicas on PostgreSQL, or more than one in a process): a lease
//! taken with a compare-and-set keeps any delivery in one worker's hands at a time, and a
//! worker that dies only delays its leased deliveries until the lease runs out.
//!
//! Not here: what is delivered to whom (`mod.rs`, `store.rs`), the signature scheme
//! (`signature.rs`). Secrets never reach a log line.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::task::{JoinHandle, JoinSet};

use super::store::{self, AttemptResult, DueDelivery};
use super::HEADER_TIMESTAMP;
use super::{nudger, secret_aad, sign, NotifyError, HEADER_EVENT_ID, HEADER_SIGNATURE};
use crate::factors::crypto::MasterKey;
use crate::store::{now_ts, ts_from, Db};

/// Tuning for [`spawn_delivery`]. `Default` is what `deprovd serve` uses.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Look for due deliveries at least this often, even without a nudge.
    pub poll_interval: Duration,
    /// Whole-request timeout (connect, send, answer).
    pub request_timeout: Duration,
    /// First retry delay; doubled per attempt up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// After this many failed attempts in a row a delivery shows as `failed` (still retried).
    pub failing_after: i64,
    /// Deliveries taken per round (each is a different (subscription, user) lane; they are
    /// sent concurrently).
    pub batch: i64,
    /// How long a taken delivery stays leased to this worker.
    pub lease: Duration,
    /// Delivered rows are kept this long, then pruned.
    pub retention: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            poll_interval: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            failing_after: 8,
            batch: 32,
            lease: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// How often delivered rows older than `retention` are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// After a nudge that found nothing (its transaction had not committed yet), look again after
/// these delays.
const RECHECKS: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(100),
    Duration::from_millis(500),
];
/// Longest error text kept per delivery.
const MAX_ERROR_LEN: usize = 300;

/// Starts the delivery worker on the current runtime. It runs until aborted; aborting loses
/// nothing (a delivery in flight is retried when its lease runs out).
pub fn spawn_delivery(db: Db, key: Arc<MasterKey>, cfg: DeliveryConfig) -> JoinHandle<()> {
    tokio::spawn(run(db, key, cfg))
}

/// The delay before attempt `attempts + 1`, given `attempts` failed ones (≥ 1): base·2^(n-1),
/// capped, then "equal jitter" (between half and all of it) so receivers coming back up are not
/// hit by every sender at the same instant.
pub(crate) fn backoff(cfg: &DeliveryConfig, attempts: i64) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 30) as u32;
    let raw = cfg
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(cfg.backoff_cap);
    let half = raw / 2;
    let jitter_ms = half.as_millis() as u64;
    let extra = if jitter_ms == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=jitter_ms)
    };
    half + Duration::from_millis(extra)
}

fn after(d: Duration) -> String {
    let delta = chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::days(1));
    ts_from(Utc::now() + delta)
}

fn build_client(cfg: &DeliveryConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        .connect_timeout(cfg.request_timeout)
        // A redirect is a failure: the signed request goes where the admin said, nowhere else.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("deprovd-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

async fn run(db: Db, key: Arc<MasterKey>, cfg: DeliveryConfig) {
    let client = match build_client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook delivery worker cannot start its HTTP client");
            return;
        }
    };
    let mut rechecks_left = 0usize;
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        // Register for a nudge before looking, so one that comes while we look is not lost.
        let notified = nudger().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        match round(&db, &key, &client, &cfg).await {
            Ok(n) if n > 0 => continue, // more may be due now (the next in each lane)
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhook delivery round failed; will retry"),
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            prune(&db, &cfg).await;
        }

        let mut wait = cfg.poll_interval;
        if let Ok(Some(next)) = store::next_due(&db).await {
            if let Ok(t) = DateTime::parse_from_rfc3339(&next) {
                let until = (t.with_timezone(&Utc) - Utc::now())
                    .to_std()
                    .unwrap_or_default();
                wait = wait.min(until.max(Duration::from_millis(5)));
            }
        }
        if rechecks_left > 0 {
            let idx = RECHECKS.len().saturating_sub(rechecks_left);
            if let Some(d) = RECHECKS.get(idx) {
                wait = wait.min(*d);
            }
            rechecks_left -= 1;
        }
        tokio::select! {
            _ = &mut notified => rechecks_left = RECHECKS.len(),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn prune(db: &Db, cfg: &DeliveryConfig) {
    let keep =
        chrono::Duration::from_std(cfg.retention).unwrap_or_else(|_| chrono::Duration::days(7));
    let before = ts_from(Utc::now() - keep);
    let res: Result<(u64, u64), NotifyError> = db
        .write(move |conn| {
            Box::pin(async move { store::prune(conn, &before).await.map_err(NotifyError::from) })
        })
        .await;
    match res {
        Ok((d, e)) if d > 0 || e > 0 => {
            tracing::debug!(
                deliveries = d,
                events = e,
                "pruned delivered webhook events"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning delivered webhook events failed"),
    }
}

/// One round: take what is due, send it, record the outcomes. Returns how many were attempted.
pub(crate) async fn round(
    db: &Db,
    key: &Arc<MasterKey>,
    client: &reqwest::Client,
    cfg: &DeliveryConfig,
) -> Result<usize, NotifyError> {
    let now = now_ts();
    let due = store::due_deliveries(db, &now, cfg.batch.max(1)).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
    let lease_until = after(cfg.lease);
    let claimed: Vec<i64> = db
        .write(move |conn| {
            Box::pin(async move {
                store::claim(conn, &ids, &now, &lease_until)
                    .await
                    .map_err(NotifyError::from)
            })
        })
        .await?;
    let mut set = JoinSet::new();
    for d in due.into_iter().filter(|d| claimed.contains(&d.id)) {
        let (client, key, cfg) = (client.clone(), key.clone(), cfg.clone());
        set.spawn(async move {
            let id = d.id;
            (id, attempt(&client, &key, &cfg, d).await)
        });
    }
    let mut results = Vec::with_capacity(claimed.len());
    while let Some(joined) = set.join_next().await {
        // A panicking attempt leaves its lease to expire: the delivery is retried then.
        if let Ok(r) = joined {
            results.push(r);
        }
    }
    let n = results.len();
    if n > 0 {
        let at = now_ts();
        db.write(move |conn| {
            Box::pin(async move {
                store::record(conn, &results, &at)
                    .await
                    .map_err(NotifyError::from)
            })
        })
        .await?;
    }
    Ok(n)
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_ERROR_LEN {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_ERROR_LEN).collect();
        t.push('…');
        t
    }
}

/// Sends one delivery; never fails, the outcome says what happened.
async fn attempt(
    client: &reqwest::Client,
    key: &MasterKey,
    cfg: &DeliveryConfig,
    d: DueDelivery,
) -> AttemptResult {
    let attempts = d.attempts.saturating_add(1);
    let fail = |status: Option<i64>, error: String| {
        let failing = attempts >= cfg.failing_after;
        if failing && d.state != "failed" {
            tracing::warn!(
                tenant = %d.tenant_id,
                subscription = %d.subscription_id,
                event_id = %d.event_id,
                attempts,
                error = %error,
                "webhook delivery keeps failing; it will be retried every {:?} at most",
                cfg.backoff_cap
            );
        } else {
            tracing::debug!(
                tenant = %d.tenant_id,
                subscription = %d.subscription_id,
                event_id = %d.event_id,
                attempts,
                error = %error,
                "webhook delivery failed; will retry"
            );
        }
        AttemptResult::Failed {
            status,
            error: truncate(&error),
            next_attempt: after(backoff(cfg, attempts)),
            failing,
        }
    };

    let secret = match key.decrypt(&d.secret_enc, &secret_aad(&d.tenant_id, &d.subscription_id)) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                None,
                format!("cannot decrypt the subscription's secret: {e}"),
            );
        }
    };
    let timestamp = Utc::now().timestamp();
    let signature = sign(&secret, timestamp, d.body.as_bytes());
    let sent = client
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(HEADER_EVENT_ID, d.event_id.as_str())
        .header(HEADER_TIMESTAMP, timestamp.to_string())
        .header(HEADER_SIGNATURE, signature)
        .body(d.body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => AttemptResult::Delivered {
            status: i64::from(resp.status().as_u16()),
        },
        Ok(mut resp) => {
            let status = resp.status();
            // The start of the answer helps whoever debugs the receiver; never the whole of it.
            let snippet = match resp.chunk().await {
                Ok(Some(bytes)) => {
                    let b = bytes.get(..bytes.len().min(512)).unwrap_or_default();
                    String::from_utf8_lossy(b).trim().to_string()
                }
                _ => String::new(),
            };
            let msg = if snippet.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {snippet}")
            };
            fail(Some(i64::from(status.as_u16())), msg)
        }
        // Without the URL: it may carry a receiver's token in its query.
        Err(e) => fail(None, describe(&e.without_url())),
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirected (redirects are not followed)"
    } else {
        "request failed"
    };
    // The source chain says why (connection refused, DNS, TLS).
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
