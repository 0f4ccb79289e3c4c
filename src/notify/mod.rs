//! Webhooks: per-tenant subscriptions and a durable, signed, ordered delivery of lifecycle
//! events (factor revoked or suspended, sessions revoked, enforcement required, guard tripped,
//! job dead) to the receivers an admin registers.
//!
//! How it holds together:
//! - [`enqueue_event`] runs inside the transaction of the change that caused the event: it writes
//!   the event to the `outbox` and one pending delivery per matching subscription, so an event
//!   exists exactly when its change committed. Events no subscription wants are not stored.
//! - The delivery worker ([`spawn_delivery`]) POSTs each event as JSON, signed as described in
//!   [`signature`], retries failures with exponential backoff and jitter (capped, and never
//!   giving up: a delivery that keeps failing is marked `failed` and still retried at the cap),
//!   and keeps order per (subscription, user): a receiver that was down gets everything later,
//!   each user's events in the order they happened. Delivery is at least once; receivers
//!   deduplicate on the event id.
//! - Subscription secrets are stored encrypted under the master key and shown only once.
//!
//! Not here: deciding which events happen (the engine, jobs and guard call [`enqueue_event`]),
//! Security Event Tokens (later), HTTP handlers (`http/admin.rs`).
//!
//! The body of every delivery:
//! `{"id": "<event uuid>", "type": "factor_revoked", "tenant": "<tenant id>",
//!   "userId": "<SCIM user id>" | null, "occurredAt": "<RFC 3339 UTC>", "data": {…}}`.

pub mod signature;
pub mod store;
pub mod worker;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;
use tokio::sync::Notify;

use crate::factors::crypto::{row_aad, MasterKey};
use crate::store::{now_ts, Db, StoreError};

pub use signature::{
    sign, verify_signature, verify_signature_at, HEADER_EVENT_ID, HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
};
pub use store::DeliveryRow;
pub use worker::{spawn_delivery, DeliveryConfig};

/// The event types deprovd emits. A subscription lists some of them, or `*` for all.
pub mod events {
    pub const FACTOR_REVOKED: &str = "factor_revoked";
    pub const FACTOR_SUSPENDED: &str = "factor_suspended";
    pub const FACTOR_RESUMED: &str = "factor_resumed";
    pub const SESSIONS_REVOKED: &str = "sessions_revoked";
    pub const ENFORCEMENT_REQUIRED: &str = "enforcement_required";
    pub const GUARD_TRIPPED: &str = "guard_tripped";
    pub const JOB_DEAD: &str = "job_dead";
    /// Sent by `POST /admin/v1/webhooks/{id}/ping` ([`super::enqueue_ping`]) to one
    /// subscription; never emitted by the engine.
    pub const PING: &str = "ping";
}

/// Every type a subscription may name (besides `*`).
pub const EVENT_TYPES: &[&str] = &[
    events::FACTOR_REVOKED,
    events::FACTOR_SUSPENDED,
    events::FACTOR_RESUMED,
    events::SESSIONS_REVOKED,
    events::ENFORCEMENT_REQUIRED,
    events::GUARD_TRIPPED,
    events::JOB_DEAD,
    events::PING,
];

/// Longest URL, secret and description a subscription may carry.
const MAX_URL_LEN: usize = 2048;
const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 256;
const MAX_DESCRIPTION_LEN: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The request is wrong (bad URL, unknown event type, short secret); the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Wakes delivery workers in this process. [`enqueue_event`] wakes them once its transaction
/// commits (inside `Db::write`).
static NUDGE: Notify = Notify::const_new();

/// Tell this process's delivery workers that new events may be committed.
pub fn nudge() {
    NUDGE.notify_waiters();
}

pub(crate) fn nudger() -> &'static Notify {
    &NUDGE
}

/// Associated data for a subscription's encrypted secret: binds it to its tenant and id, and
/// keeps it apart from factor secrets under the same master key.
pub(crate) fn secret_aad(tenant: &str, subscription_id: &str) -> Vec<u8> {
    row_aad(tenant, &format!("webhook:{subscription_id}"))
}

fn type_matches(types: &[String], event_type: &str) -> bool {
    types.iter().any(|t| t == "*" || t == event_type)
}

/// The JSON body of a delivery; stored once, so every retry sends the same bytes.
fn envelope(
    event_id: &str,
    event_type: &str,
    tenant_id: &str,
    user_id: Option<&str>,
    created: &str,
    data: Value,
) -> String {
    serde_json::json!({
        "id": event_id,
        "type": event_type,
        "tenant": tenant_id,
        "userId": user_id,
        "occurredAt": created,
        "data": data,
    })
    .to_string()
}

/// Records `event_type` for `tenant_id` inside the caller's transaction: one outbox row and one
/// pending delivery per enabled subscription that wants this type. Nothing is stored when no
/// subscription wants it. `user_id` (the SCIM user id) orders deliveries: each subscription gets
/// a user's events in the order they were enqueued.
pub async fn enqueue_event(
    conn: &mut AnyConnection,
    tenant_id: &str,
    event_type: &str,
    user_id: Option<&str>,
    payload: Value,
) -> Result<(), sqlx::Error> {
    enqueue_events(conn, tenant_id, user_id, vec![(event_type, payload)]).await
}

/// [`enqueue_event`] for several events of one user, in order, reading the tenant's
/// subscriptions once.
pub async fn enqueue_events(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: Option<&str>,
    events: Vec<(&str, Value)>,
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let subs = store::enabled_subscriptions(conn, tenant_id).await?;
    for (event_type, payload) in events {
        let wanted: Vec<String> = subs
            .iter()
            .filter(|(_, types)| type_matches(types, event_type))
            .map(|(id, _)| id.clone())
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let event_id = uuid::Uuid::new_v4().to_string();
        let created = now_ts();
        let body = envelope(&event_id, event_type, tenant_id, user_id, &created, payload);
        let ev = store::NewEvent {
            tenant: tenant_id,
            event_id: &event_id,
            event_type,
            user_id,
            body: &body,
            created: &created,
        };
        store::insert_event(conn, &ev, &wanted).await?;
        crate::store::after_commit(nudge);
    }
    Ok(())
}

/// Queues a `ping` event for one subscription only (whatever types it subscribes to), so an
/// admin can check a receiver end to end. Returns the event id, or `None` when the tenant has
/// no such subscription.
pub async fn enqueue_ping(
    conn: &mut AnyConnection,
    tenant_id: &str,
    subscription_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let subs = store::enabled_subscriptions(conn, tenant_id).await?;
    if !subs.iter().any(|(id, _)| id == subscription_id) {
        return Ok(None);
    }
    let event_id = uuid::Uuid::new_v4().to_string();
    let created = now_ts();
    let data = serde_json::json!({ "subscription": subscription_id });
    let body = envelope(&event_id, events::PING, tenant_id, None, &created, data);
    let wanted = [subscription_id.to_string()];
    let ev = store::NewEvent {
        tenant: tenant_id,
        event_id: &event_id,
        event_type: events::PING,
        user_id: None,
        body: &body,
        created: &created,
    };
    store::insert_event(conn, &ev, &wanted).await?;
    crate::store::after_commit(nudge);
    Ok(Some(event_id))
}

/// What an admin sends to create a subscription.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSubscription {
    pub url: String,
    /// The signing secret; generated (and returned once) when absent.
    #[serde(default)]
    pub secret: Option<String>,
    /// Event types to receive; absent or empty means `["*"]` (all).
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// How a subscription's deliveries are going.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// Deliveries not yet acknowledged with a 2xx (including failing ones).
    pub pending: i64,
    /// Deliveries that have failed many times in a row; still retried.
    pub failing: i64,
    pub delivered: i64,
    /// When the earliest undelivered delivery is next tried.
    pub next_attempt: Option<String>,
    /// The error that holds up the oldest undelivered delivery.
    pub last_error: Option<String>,
    pub last_delivered: Option<String>,
}

/// A subscription as the admin API shows it. The secret is never part of it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    pub created: String,
    pub disabled: bool,
    pub deliveries: DeliveryStatus,
}

impl Subscription {
    fn from_row(row: store::SubscriptionRow, stats: Option<&store::DeliveryStats>) -> Subscription {
        let deliveries = stats
            .map(|s| DeliveryStatus {
                pending: s.pending,
                failing: s.failing,
                delivered: s.delivered,
                next_attempt: s.oldest_pending.clone(),
                last_error: s.last_error.clone(),
                last_delivered: s.last_delivered.clone(),
            })
            .unwrap_or_default();
        Subscription {
            id: row.id,
            url: row.url,
            event_types: row.event_types,
            description: row.description,
            created: row.created,
            disabled: row.disabled,
            deliveries,
        }
    }
}

/// A fresh signing secret: `whsec_` and 32 random bytes in base64url.
pub fn generate_secret() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("whsec_{}", URL_SAFE_NO_PAD.encode(b))
}

/// A checked subscription request: URL parsed, event types known and deduplicated, secret
/// chosen. Pure, so the admin API can answer 400 before touching the database.
#[derive(Debug, Clone)]
pub struct ValidSubscription {
    pub url: String,
    pub secret: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
}

pub fn validate_subscription(new: NewSubscription) -> Result<ValidSubscription, NotifyError> {
    let url_text = new.url.trim();
    if url_text.is_empty() || url_text.len() > MAX_URL_LEN {
        return Err(NotifyError::Invalid(format!(
            "url must be an http(s) URL of at most {MAX_URL_LEN} characters"
        )));
    }
    let url = reqwest::Url::parse(url_text)
        .map_err(|e| NotifyError::Invalid(format!("url is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(NotifyError::Invalid("url must use https (or http)".into()));
    }
    if url.host_str().unwrap_or("").is_empty() {
        return Err(NotifyError::Invalid("url must name a host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // They would be stored and shown in clear; the signature is the authentication.
        return Err(NotifyError::Invalid(
            "url must not carry a user name or password; receivers authenticate deliveries by \
             their signature"
                .into(),
        ));
    }
    if url.fragment().is_some() {
        return Err(NotifyError::Invalid("url must not have a #fragment".into()));
    }

    let mut types: Vec<String> = Vec::new();
    for t in new.event_types {
        let t = t.trim().to_string();
        if t != "*" && !EVENT_TYPES.contains(&t.as_str()) {
            return Err(NotifyError::Invalid(format!(
                "unknown event type {t:?}; known: *, {}",
                EVENT_TYPES.join(", ")
            )));
        }
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if types.is_empty() || types.iter().any(|t| t == "*") {
        types = vec!["*".to_string()];
    }

    let secret = match new.secret {
        None => generate_secret(),
        Some(s) => {
            let n = s.chars().count();
            if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&n) {
                return Err(NotifyError::Invalid(format!(
                    "secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters (or omit it \
                     to have one generated)"
                )));
            }
            if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(NotifyError::Invalid(
                    "secret must not contain spaces or control characters".into(),
                ));
            }
            s
        }
    };

    let description = match new.description.map(|d| d.trim().to_string()) {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_LEN => {
            return Err(NotifyError::Invalid(format!(
                "description must be at most {MAX_DESCRIPTION_LEN} characters"
            )))
        }
        Some(d) if d.is_empty() => None,
        d => d,
    };

    Ok(ValidSubscription {
        url: url.to_string(),
        secret,
        event_types: types,
        description,
    })
}

/// Stores a validated subscription inside the caller's transaction (so the admin API can audit
/// it in the same one). Returns it; the secret is what the caller shows, once.
pub async fn create_subscription(
    conn: &mut AnyConnection,
    key: &MasterKey,
    tenant: &str,
    valid: &ValidSubscription,
) -> Result<Subscription, sqlx::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    let row = store::SubscriptionRow {
        id: id.clone(),
        url: valid.url.clone(),
        event_types: valid.event_types.clone(),
        description: valid.description.clone(),
        created: now_ts(),
        disabled: false,
    };
    let secret_enc = key.encrypt(valid.secret.as_bytes(), &secret_aad(tenant, &id));
    store::insert_subscription(conn, tenant, &row, &secret_enc).await?;
    Ok(Subscription::from_row(row, None))
}

/// The tenant's subscriptions with their delivery status, oldest first.
pub async fn list_subscriptions(db: &Db, tenant: &str) -> Result<Vec<Subscription>, sqlx::Error> {
    let rows = store::list_subscriptions(db, tenant).await?;
    let stats = store::delivery_stats(db, tenant).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let s = stats.iter().find(|(id, _)| *id == r.id).map(|(_, s)| s);
            Subscription::from_row(r, s)
        })
        .collect())
}

pub async fn get_subscription(
    db: &Db,
    tenant: &str,
    id: &str,
) -> Result<Option<Subscription>, sqlx::Error> {
    let Some(row) = store::get_subscription(db, tenant, id).await? else {
        return Ok(None);
    };
    let stats = store::delivery_stats(db, tenant).await?;
    let s = stats.iter().find(|(sid, _)| *sid == row.id).map(|(_, s)| s);
    Ok(Some(Subscription::from_row(row, s)))
}

/// Deletes a subscription and drops its undelivered deliveries (nobody is there to get them).
/// `false` when the tenant has no such subscription.
pub async fn delete_subscription(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    store::delete_subscription(conn, tenant, id).await
}

/// The latest `limit` deliveries of a subscription, newest first.
pub async fn list_deliveries(
    db: &Db,
    tenant: &str,
    subscription_id: &str,
    limit: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    store::list_deliveries(db, tenant, subscription_id, limit.clamp(1, 1000)).await
}

#[cfg(test)]
mod tests;
