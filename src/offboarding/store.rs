//! Offboardings' SQL, and the one directory read they need that the directory does not offer
//! (a user id by userName). Same SQL on both engines.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Executor, Row};

use super::Offboarding;
use crate::store::now_ts;

const COLUMNS: &str = "id, tenant_id, user_id, user_name, at, reason, ticket, state, job_id, \
                       created_by, created, done_at, outcome";

fn offboarding(r: &AnyRow) -> Result<Offboarding, sqlx::Error> {
    Ok(Offboarding {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        user_id: r.try_get("user_id")?,
        user_name: r.try_get("user_name")?,
        at: r.try_get("at")?,
        reason: r.try_get("reason")?,
        ticket: r.try_get("ticket")?,
        state: r.try_get("state")?,
        job_id: r.try_get("job_id")?,
        created_by: r.try_get("created_by")?,
        created: r.try_get("created")?,
        done_at: r.try_get("done_at")?,
        outcome: r.try_get("outcome")?,
    })
}

pub async fn insert(conn: &mut AnyConnection, o: &Offboarding) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO offboardings (id, tenant_id, user_id, user_name, at, reason, ticket, state, \
         job_id, created_by, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&o.id)
    .bind(&o.tenant_id)
    .bind(&o.user_id)
    .bind(&o.user_name)
    .bind(&o.at)
    .bind(o.reason.clone())
    .bind(o.ticket.clone())
    .bind(&o.state)
    .bind(&o.job_id)
    .bind(&o.created_by)
    .bind(&o.created)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get<'e, E>(
    ex: E,
    tenant_id: &str,
    id: &str,
) -> Result<Option<Offboarding>, sqlx::Error>
where
    E: Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM offboardings WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(offboarding).transpose()
}

/// Newest first, at most `limit`.
pub async fn list<'e, E>(
    ex: E,
    tenant_id: &str,
    limit: i64,
) -> Result<Vec<Offboarding>, sqlx::Error>
where
    E: Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM offboardings WHERE tenant_id = $1 ORDER BY created DESC, id LIMIT $2"
    ))
    .bind(tenant_id)
    .bind(limit.clamp(1, 10_000))
    .fetch_all(ex)
    .await?;
    rows.iter().map(offboarding).collect()
}

/// Moves a scheduled offboarding to `state` (done | cancelled | failed). False when it was not
/// scheduled any more.
pub async fn finish(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
    state: &str,
    outcome: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE offboardings SET state = $3, outcome = $4, done_at = $5 \
         WHERE tenant_id = $1 AND id = $2 AND state = 'scheduled'",
    )
    .bind(tenant_id)
    .bind(id)
    .bind(state)
    .bind(outcome)
    .bind(now_ts())
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}
