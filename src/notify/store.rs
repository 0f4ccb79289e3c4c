//! The SQL of webhooks: subscriptions, the outbox, and delivery rows (see
//! `migrations/*/0010_webhooks.sql`). The same SQL text runs on SQLite and PostgreSQL.
//!
//! Not here: what an event looks like or which are sent (`mod.rs`), signing and HTTP
//! (`signature.rs`, `worker.rs`).

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::store::Db;

/// A subscription row as stored (secret still encrypted).
#[derive(Debug, Clone)]
pub(crate) struct SubscriptionRow {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: Option<String>,
    pub created: String,
    pub disabled: bool,
}

/// Undelivered and failing counts for one subscription.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeliveryStats {
    pub pending: i64,
    pub failing: i64,
    pub delivered: i64,
    pub oldest_pending: Option<String>,
    pub last_error: Option<String>,
    pub last_delivered: Option<String>,
}

/// A delivery that is due, with everything needed to send it.
#[derive(Debug, Clone)]
pub(crate) struct DueDelivery {
    pub id: i64,
    pub tenant_id: String,
    pub subscription_id: String,
    pub attempts: i64,
    pub state: String,
    pub event_id: String,
    pub body: String,
    pub url: String,
    pub secret_enc: String,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub(crate) enum AttemptResult {
    Delivered {
        status: i64,
    },
    Failed {
        status: Option<i64>,
        error: String,
        next_attempt: String,
        failing: bool,
    },
}

fn parse_types(text: &str) -> Vec<String> {
    serde_json::from_str::<Vec<String>>(text).unwrap_or_default()
}

fn subscription_from_row(r: &AnyRow) -> Result<SubscriptionRow, sqlx::Error> {
    Ok(SubscriptionRow {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        event_types: parse_types(&r.try_get::<String, _>("event_types")?),
        description: r.try_get("description")?,
        created: r.try_get("created")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
    })
}

pub(crate) async fn insert_subscription(
    conn: &mut AnyConnection,
    tenant: &str,
    row: &SubscriptionRow,
    secret_enc: &str,
) -> Result<(), sqlx::Error> {
    let types = serde_json::to_string(&row.event_types).unwrap_or_else(|_| "[]".into());
    sqlx::query(
        "INSERT INTO webhook_subscriptions \
         (tenant_id, id, url, secret_enc, event_types, description, created, disabled) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(tenant)
    .bind(&row.id)
    .bind(&row.url)
    .bind(secret_enc)
    .bind(types)
    .bind(row.description.as_deref())
    .bind(&row.created)
    .bind(i64::from(row.disabled))
    .execute(conn)
    .await?;
    Ok(())
}

const SUBSCRIPTION_COLUMNS: &str = "id, url, event_types, description, created, disabled";

pub(crate) async fn list_subscriptions(
    db: &Db,
    tenant: &str,
) -> Result<Vec<SubscriptionRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE tenant_id = $1 \
         ORDER BY created, id"
    );
    let rows = sqlx::query(&sql).bind(tenant).fetch_all(&db.pool).await?;
    rows.iter().map(subscription_from_row).collect()
}

pub(crate) async fn get_subscription(
    db: &Db,
    tenant: &str,
    id: &str,
) -> Result<Option<SubscriptionRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE tenant_id = $1 AND id = $2"
    );
    let row = sqlx::query(&sql)
        .bind(tenant)
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(subscription_from_row).transpose()
}

/// Per-subscription delivery figures for a tenant, keyed by subscription id.
pub(crate) async fn delivery_stats(
    db: &Db,
    tenant: &str,
) -> Result<Vec<(String, DeliveryStats)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT subscription_id, \
            CAST(SUM(CASE WHEN state <> 'done' THEN 1 ELSE 0 END) AS BIGINT) AS pending, \
            CAST(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS BIGINT) AS failing, \
            CAST(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS BIGINT) AS delivered, \
            MIN(CASE WHEN state <> 'done' THEN next_attempt END) AS oldest_pending, \
            MAX(delivered) AS last_delivered \
         FROM webhook_deliveries WHERE tenant_id = $1 GROUP BY subscription_id",
    )
    .bind(tenant)
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: String = r.try_get("subscription_id")?;
        // SUM would be NUMERIC on PostgreSQL, which the Any driver cannot read: cast above.
        let num = |name: &str| -> i64 { r.try_get::<i64, _>(name).unwrap_or(0) };
        let stats = DeliveryStats {
            pending: num("pending"),
            failing: num("failing"),
            delivered: num("delivered"),
            oldest_pending: r.try_get("oldest_pending").ok().flatten(),
            last_delivered: r.try_get("last_delivered").ok().flatten(),
            last_error: None,
        };
        out.push((id, stats));
    }
    // The last error of the subscription's oldest undelivered delivery: what blocks it.
    for (id, stats) in out.iter_mut() {
        if stats.pending == 0 {
            continue;
        }
        let err: Option<Option<String>> = sqlx::query_scalar(
            "SELECT last_error FROM webhook_deliveries \
             WHERE tenant_id = $1 AND subscription_id = $2 AND state <> 'done' \
               AND last_error IS NOT NULL \
             ORDER BY event_seq LIMIT 1",
        )
        .bind(tenant)
        .bind(id.as_str())
        .fetch_optional(&db.pool)
        .await?;
        stats.last_error = err.flatten();
    }
    Ok(out)
}

/// Deletes a subscription and its undelivered deliveries. `false` when there was none.
pub(crate) async fn delete_subscription(
    conn: &mut AnyConnection,
    tenant: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("DELETE FROM webhook_subscriptions WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND subscription_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// (id, event_types) of the tenant's enabled subscriptions.
pub(crate) async fn enabled_subscriptions(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Vec<(String, Vec<String>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, event_types FROM webhook_subscriptions WHERE tenant_id = $1 AND disabled = 0 \
         ORDER BY id",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                parse_types(&r.try_get::<String, _>("event_types")?),
            ))
        })
        .collect()
}

/// An event about to be written to the outbox.
pub(crate) struct NewEvent<'a> {
    pub tenant: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub user_id: Option<&'a str>,
    /// The exact JSON body every delivery of it sends.
    pub body: &'a str,
    pub created: &'a str,
}

/// Writes one outbox row and a pending delivery for each of `subscriptions`.
pub(crate) async fn insert_event(
    conn: &mut AnyConnection,
    ev: &NewEvent<'_>,
    subscriptions: &[String],
) -> Result<i64, sqlx::Error> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (tenant_id, event_id, event_type, user_id, body, created) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
    )
    .bind(ev.tenant)
    .bind(ev.event_id)
    .bind(ev.event_type)
    .bind(ev.user_id)
    .bind(ev.body)
    .bind(ev.created)
    .fetch_one(&mut *conn)
    .await?;
    for sub in subscriptions {
        sqlx::query(
            "INSERT INTO webhook_deliveries \
             (tenant_id, subscription_id, event_seq, user_key, state, attempts, next_attempt) \
             VALUES ($1, $2, $3, $4, 'pending', 0, $5)",
        )
        .bind(ev.tenant)
        .bind(sub.as_str())
        .bind(seq)
        .bind(ev.user_id.unwrap_or(""))
        .bind(ev.created)
        .execute(&mut *conn)
        .await?;
    }
    Ok(seq)
}

/// Up to `limit` deliveries that may be attempted at `now`: due, not leased by a live worker,
/// of an enabled subscription, and the first undelivered one of their (subscription, user) lane
/// (that is what keeps per-user order).
pub(crate) async fn due_deliveries(
    db: &Db,
    now: &str,
    limit: i64,
) -> Result<Vec<DueDelivery>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.id, d.tenant_id, d.subscription_id, d.attempts, d.state, \
                o.event_id, o.body, s.url, s.secret_enc \
         FROM webhook_deliveries d \
         JOIN outbox o ON o.seq = d.event_seq \
         JOIN webhook_subscriptions s ON s.tenant_id = d.tenant_id AND s.id = d.subscription_id \
         WHERE d.state <> 'done' AND d.next_attempt <= $1 \
           AND (d.lease_until IS NULL OR d.lease_until <= $1) \
           AND s.disabled = 0 \
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e \
                           WHERE e.subscription_id = d.subscription_id \
                             AND e.user_key = d.user_key \
                             AND e.state <> 'done' \
                             AND e.event_seq < d.event_seq) \
         ORDER BY d.next_attempt, d.event_seq \
         LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DueDelivery {
                id: r.try_get("id")?,
                tenant_id: r.try_get("tenant_id")?,
                subscription_id: r.try_get("subscription_id")?,
                attempts: r.try_get("attempts")?,
                state: r.try_get("state")?,
                event_id: r.try_get("event_id")?,
                body: r.try_get("body")?,
                url: r.try_get("url")?,
                secret_enc: r.try_get("secret_enc")?,
            })
        })
        .collect()
}

/// Leases `ids` until `lease_until` for this worker; returns the ids it got (another worker
/// may have taken some since they were read).
pub(crate) async fn claim(
    conn: &mut AnyConnection,
    ids: &[i64],
    now: &str,
    lease_until: &str,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut got = Vec::with_capacity(ids.len());
    for &id in ids {
        let n = sqlx::query(
            "UPDATE webhook_deliveries SET lease_until = $1 \
             WHERE id = $2 AND state <> 'done' AND (lease_until IS NULL OR lease_until <= $3)",
        )
        .bind(lease_until)
        .bind(id)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if n == 1 {
            got.push(id);
        }
    }
    Ok(got)
}

/// Records attempts' outcomes and releases their leases.
pub(crate) async fn record(
    conn: &mut AnyConnection,
    results: &[(i64, AttemptResult)],
    now: &str,
) -> Result<(), sqlx::Error> {
    for (id, res) in results {
        match res {
            AttemptResult::Delivered { status } => {
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'done', attempts = attempts + 1, \
                     lease_until = NULL, last_attempt = $1, last_status = $2, last_error = NULL, \
                     delivered = $1 WHERE id = $3",
                )
                .bind(now)
                .bind(*status)
                .bind(*id)
                .execute(&mut *conn)
                .await?;
            }
            AttemptResult::Failed {
                status,
                error,
                next_attempt,
                failing,
            } => {
                let state = if *failing { "failed" } else { "pending" };
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
                     lease_until = NULL, last_attempt = $2, last_status = $3, last_error = $4, \
                     next_attempt = $5 WHERE id = $6 AND state <> 'done'",
                )
                .bind(state)
                .bind(now)
                .bind(*status)
                .bind(error.as_str())
                .bind(next_attempt.as_str())
                .bind(*id)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}

/// The earliest `next_attempt` among undelivered deliveries of enabled subscriptions, so the
/// worker can sleep exactly until a retry is due.
pub(crate) async fn next_due(db: &Db) -> Result<Option<String>, sqlx::Error> {
    let v: Option<Option<String>> = sqlx::query_scalar(
        "SELECT MIN(d.next_attempt) FROM webhook_deliveries d \
         JOIN webhook_subscriptions s ON s.tenant_id = d.tenant_id AND s.id = d.subscription_id \
         WHERE d.state <> 'done' AND s.disabled = 0",
    )
    .fetch_optional(&db.pool)
    .await?;
    Ok(v.flatten())
}

/// Removes delivered rows older than `before` and outbox rows no delivery refers to any more.
/// Returns (deliveries, events) removed.
pub(crate) async fn prune(
    conn: &mut AnyConnection,
    before: &str,
) -> Result<(u64, u64), sqlx::Error> {
    let d = sqlx::query("DELETE FROM webhook_deliveries WHERE state = 'done' AND delivered < $1")
        .bind(before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let e = sqlx::query(
        "DELETE FROM outbox WHERE created < $1 AND NOT EXISTS \
         (SELECT 1 FROM webhook_deliveries d WHERE d.event_seq = outbox.seq)",
    )
    .bind(before)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((d, e))
}

/// Deliveries of one subscription, newest first, for the admin API and tests.
pub(crate) async fn list_deliveries(
    db: &Db,
    tenant: &str,
    subscription_id: &str,
    limit: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.id, o.event_id, o.event_type, o.user_id, d.state, d.attempts, d.next_attempt, \
                d.last_attempt, d.last_status, d.last_error, d.delivered, o.created \
         FROM webhook_deliveries d JOIN outbox o ON o.seq = d.event_seq \
         WHERE d.tenant_id = $1 AND d.subscription_id = $2 \
         ORDER BY d.event_seq DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(subscription_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeliveryRow {
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("event_type")?,
                user_id: r.try_get("user_id")?,
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                next_attempt: r.try_get("next_attempt")?,
                last_attempt: r.try_get("last_attempt")?,
                last_status: r.try_get("last_status")?,
                last_error: r.try_get("last_error")?,
                delivered: r.try_get("delivered")?,
                created: r.try_get("created")?,
            })
        })
        .collect()
}

/// One delivery as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRow {
    pub event_id: String,
    pub event_type: String,
    pub user_id: Option<String>,
    /// `pending` | `failed` (still retried) | `done`
    pub state: String,
    pub attempts: i64,
    pub next_attempt: String,
    pub last_attempt: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered: Option<String>,
    pub created: String,
}

/// Whether the outbox has an event with this id (tests).
#[cfg(test)]
pub(crate) async fn outbox_len(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(&db.pool)
        .await
}
