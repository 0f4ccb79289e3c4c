//! SQL of the built-in factor store (tables of `migrations/*/0002_factors.sql`), plus the
//! directory reads the factor and policy CLIs need (a user by userName, users page by page,
//! the last deactivation). The same SQL
//! text runs on SQLite and PostgreSQL. Writes take an `AnyConnection` inside `Db::write`; reads
//! take any executor.
//!
//! Not here: encryption (callers pass ciphertext in and get it back), OTP checks, policy.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Factor, FactorStatus, FactorType, Session};
use crate::store::{now_ts, Db};

/// A `factors` row: the public `Factor` plus the stored material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactorRow {
    pub tenant_id: String,
    pub user_key: String,
    pub factor: Factor,
    pub secret_enc: Option<String>,
    pub otp_counter: Option<i64>,
    pub credential_id: Option<String>,
    pub public_key: Option<String>,
    pub status_changed: String,
}

const FACTOR_COLS: &str = "tenant_id, id, user_key, type, label, status, secret_enc, otp_counter, \
                           credential_id, public_key, created, last_used, status_changed";

fn decode_err(msg: String) -> sqlx::Error {
    sqlx::Error::Decode(msg.into())
}

fn factor_row(r: &AnyRow) -> Result<FactorRow, sqlx::Error> {
    let t: String = r.try_get("type")?;
    let s: String = r.try_get("status")?;
    Ok(FactorRow {
        tenant_id: r.try_get("tenant_id")?,
        user_key: r.try_get("user_key")?,
        factor: Factor {
            id: r.try_get("id")?,
            factor_type: t.parse().map_err(decode_err)?,
            label: r.try_get("label")?,
            status: s.parse().map_err(decode_err)?,
            created: r.try_get("created")?,
            last_used: r.try_get("last_used")?,
        },
        secret_enc: r.try_get("secret_enc")?,
        otp_counter: r.try_get("otp_counter")?,
        credential_id: r.try_get("credential_id")?,
        public_key: r.try_get("public_key")?,
        status_changed: r.try_get("status_changed")?,
    })
}

pub async fn insert_factor(conn: &mut AnyConnection, row: &FactorRow) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO factors ({FACTOR_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    );
    sqlx::query(&sql)
        .bind(&row.tenant_id)
        .bind(&row.factor.id)
        .bind(&row.user_key)
        .bind(row.factor.factor_type.as_str())
        .bind(&row.factor.label)
        .bind(row.factor.status.as_str())
        .bind(&row.secret_enc)
        .bind(row.otp_counter)
        .bind(&row.credential_id)
        .bind(&row.public_key)
        .bind(&row.factor.created)
        .bind(&row.factor.last_used)
        .bind(&row.status_changed)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get_factor<'e, E>(
    ex: E,
    tenant: &str,
    id: &str,
) -> Result<Option<FactorRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {FACTOR_COLS} FROM factors WHERE tenant_id = $1 AND id = $2");
    let row = sqlx::query(&sql)
        .bind(tenant)
        .bind(id)
        .fetch_optional(ex)
        .await?;
    row.as_ref().map(factor_row).transpose()
}

/// A user's factors, oldest first (every status).
pub async fn user_factors<'e, E>(
    ex: E,
    tenant: &str,
    user_key: &str,
) -> Result<Vec<FactorRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "SELECT {FACTOR_COLS} FROM factors WHERE tenant_id = $1 AND user_key = $2 ORDER BY created, id"
    );
    let rows = sqlx::query(&sql)
        .bind(tenant)
        .bind(user_key)
        .fetch_all(ex)
        .await?;
    rows.iter().map(factor_row).collect()
}

/// Another live factor of this type with this credential id in the tenant, if any.
pub async fn credential_in_use<'e, E>(
    ex: E,
    tenant: &str,
    factor_type: FactorType,
    credential_id: &str,
) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT id FROM factors WHERE tenant_id = $1 AND type = $2 AND credential_id = $3 \
         AND status <> 'revoked'",
    )
    .bind(tenant)
    .bind(factor_type.as_str())
    .bind(credential_id)
    .fetch_optional(ex)
    .await?;
    Ok(row.is_some())
}

/// Moves a factor from one of `from` to `to`; returns whether a row changed.
pub async fn transition(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    id: &str,
    from: FactorStatus,
    to: FactorStatus,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE factors SET status = $1, status_changed = $2 \
         WHERE tenant_id = $3 AND user_key = $4 AND id = $5 AND status = $6",
    )
    .bind(to.as_str())
    .bind(now_ts())
    .bind(tenant)
    .bind(user_key)
    .bind(id)
    .bind(from.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Revokes a factor and destroys its secret material (ciphertext, recovery code hashes), so a
/// revoked factor cannot be brought back even by someone with the key. Returns whether it
/// changed (false: already revoked or absent).
pub async fn revoke(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE factors SET status = 'revoked', status_changed = $1, secret_enc = NULL \
         WHERE tenant_id = $2 AND user_key = $3 AND id = $4 AND status <> 'revoked' \
         RETURNING type",
    )
    .bind(now_ts())
    .bind(tenant)
    .bind(user_key)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = changed else {
        return Ok(false);
    };
    // Only recovery-code factors have hashes to destroy (they go in the same transaction).
    let factor_type: String = row.try_get(0)?;
    if factor_type == FactorType::RecoveryCodes.as_str() {
        sqlx::query("DELETE FROM recovery_codes WHERE tenant_id = $1 AND factor_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(true)
}

/// Ids of the user's live (active or suspended) factors of a type.
pub async fn live_factor_ids(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    factor_type: FactorType,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id FROM factors WHERE tenant_id = $1 AND user_key = $2 AND type = $3 \
         AND status <> 'revoked' ORDER BY id",
    )
    .bind(tenant)
    .bind(user_key)
    .bind(factor_type.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
}

pub async fn insert_recovery_codes(
    conn: &mut AnyConnection,
    tenant: &str,
    factor_id: &str,
    hashes: &[String],
) -> Result<(), sqlx::Error> {
    for h in hashes {
        sqlx::query(
            "INSERT INTO recovery_codes (tenant_id, factor_id, code_hash) VALUES ($1, $2, $3)",
        )
        .bind(tenant)
        .bind(factor_id)
        .bind(h)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Marks an unused recovery code used; true when this call used it (a code works once).
pub async fn use_recovery_code(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    factor_id: &str,
    code_hash: &str,
) -> Result<bool, sqlx::Error> {
    let now = now_ts();
    let done = sqlx::query(
        "UPDATE recovery_codes SET used = $1 WHERE tenant_id = $2 AND factor_id = $3 \
         AND code_hash = $4 AND used IS NULL",
    )
    .bind(&now)
    .bind(tenant)
    .bind(factor_id)
    .bind(code_hash)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    touch(conn, tenant, user_key, factor_id, &now).await?;
    Ok(true)
}

/// Unused recovery codes left in a set.
pub async fn recovery_codes_left<'e, E>(
    ex: E,
    tenant: &str,
    factor_id: &str,
) -> Result<i64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("SELECT COUNT(*) FROM recovery_codes WHERE tenant_id = $1 AND factor_id = $2 AND used IS NULL")
        .bind(tenant)
        .bind(factor_id)
        .fetch_one(ex)
        .await?
        .try_get(0)
}

/// Every stored recovery-code hash (tests check no plaintext is stored).
pub async fn recovery_code_hashes<'e, E>(
    ex: E,
    tenant: &str,
    factor_id: &str,
) -> Result<Vec<String>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows =
        sqlx::query("SELECT code_hash FROM recovery_codes WHERE tenant_id = $1 AND factor_id = $2")
            .bind(tenant)
            .bind(factor_id)
            .fetch_all(ex)
            .await?;
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
}

/// Moves an OTP factor's counter forward to `value` if it is still behind it (TOTP: the
/// accepted step; HOTP: the next counter) and records the use. False when another request
/// accepted the same or a later code first: a replay.
pub async fn advance_otp_counter(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    id: &str,
    value: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE factors SET otp_counter = $1, last_used = $2 WHERE tenant_id = $3 AND user_key = $4 \
         AND id = $5 AND status = 'active' AND (otp_counter IS NULL OR otp_counter < $1)",
    )
    .bind(value)
    .bind(now_ts())
    .bind(tenant)
    .bind(user_key)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

async fn touch(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    id: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE factors SET last_used = $1 WHERE tenant_id = $2 AND user_key = $3 AND id = $4",
    )
    .bind(now)
    .bind(tenant)
    .bind(user_key)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Factor-store users with a live factor or session, after `after`, ascending, at most `limit`.
pub async fn list_user_keys<'e, E>(
    ex: E,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT user_key FROM factors WHERE tenant_id = $1 AND status <> 'revoked' AND user_key > $2 \
         UNION \
         SELECT user_key FROM factor_sessions WHERE tenant_id = $1 AND revoked = 0 AND user_key > $2 \
         ORDER BY user_key LIMIT $3",
    )
    .bind(tenant)
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(ex)
    .await?;
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
}

// ---------------------------------------------------------------------------------------------
// sessions

fn session_row(r: &AnyRow) -> Result<Session, sqlx::Error> {
    Ok(Session {
        id: r.try_get("id")?,
        created: r.try_get("created")?,
        last_seen: r.try_get("last_seen")?,
        revoked: r.try_get::<i64, _>("revoked")? != 0,
    })
}

pub async fn insert_session(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    s: &Session,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO factor_sessions (tenant_id, id, user_key, created, last_seen, revoked) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(tenant)
    .bind(&s.id)
    .bind(user_key)
    .bind(&s.created)
    .bind(&s.last_seen)
    .bind(s.revoked as i64)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn user_sessions<'e, E>(
    ex: E,
    tenant: &str,
    user_key: &str,
) -> Result<Vec<Session>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT id, created, last_seen, revoked FROM factor_sessions \
         WHERE tenant_id = $1 AND user_key = $2 ORDER BY created, id",
    )
    .bind(tenant)
    .bind(user_key)
    .fetch_all(ex)
    .await?;
    rows.iter().map(session_row).collect()
}

/// Ends every live session of a user; returns how many this call ended.
pub async fn revoke_sessions(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE factor_sessions SET revoked = 1, revoked_at = $1 \
         WHERE tenant_id = $2 AND user_key = $3 AND revoked = 0",
    )
    .bind(now_ts())
    .bind(tenant)
    .bind(user_key)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

// ---------------------------------------------------------------------------------------------
// enrollment requirements

/// The stored form of a set of types: sorted, deduplicated, comma-separated.
pub fn types_key(types: &[FactorType]) -> String {
    let mut t: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    t.sort_unstable();
    t.dedup();
    t.join(",")
}

/// Records (or re-arms, with a new deadline) a requirement to enroll one of `types`.
pub async fn upsert_requirement(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    types: &[FactorType],
    deadline: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO enrollment_requirements (tenant_id, user_key, types, deadline, created, satisfied) \
         VALUES ($1, $2, $3, $4, $5, 0) \
         ON CONFLICT (tenant_id, user_key, types) DO UPDATE SET deadline = excluded.deadline, \
         satisfied = 0, satisfied_at = NULL",
    )
    .bind(tenant)
    .bind(user_key)
    .bind(types_key(types))
    .bind(deadline)
    .bind(now_ts())
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the user's open requirements that `factor_type` fulfils as satisfied.
pub async fn satisfy_requirements(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    factor_type: FactorType,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE enrollment_requirements SET satisfied = 1, satisfied_at = $1 \
         WHERE tenant_id = $2 AND user_key = $3 AND satisfied = 0 AND (',' || types || ',') LIKE $4",
    )
    .bind(now_ts())
    .bind(tenant)
    .bind(user_key)
    .bind(format!("%,{},%", factor_type.as_str()))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// (types, deadline, created, satisfied) of a user's requirements.
pub async fn user_requirements<'e, E>(
    ex: E,
    tenant: &str,
    user_key: &str,
) -> Result<Vec<(Vec<FactorType>, String, String, bool)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT types, deadline, created, satisfied FROM enrollment_requirements \
         WHERE tenant_id = $1 AND user_key = $2 ORDER BY created, types",
    )
    .bind(tenant)
    .bind(user_key)
    .fetch_all(ex)
    .await?;
    rows.iter()
        .map(|r| {
            let types: String = r.try_get("types")?;
            let types = types
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<FactorType>().map_err(decode_err))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((
                types,
                r.try_get("deadline")?,
                r.try_get("created")?,
                r.try_get::<i64, _>("satisfied")? != 0,
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// master key check

pub async fn key_check(db: &Db) -> Result<Option<String>, sqlx::Error> {
    let row = sqlx::query("SELECT ciphertext FROM key_check WHERE id = 1")
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| r.try_get::<String, _>(0)).transpose()
}

/// Some encrypted factor secret, (tenant, factor id, ciphertext), if any exists.
pub async fn sample_secret(db: &Db) -> Result<Option<(String, String, String)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT tenant_id, id, secret_enc FROM factors WHERE secret_enc IS NOT NULL LIMIT 1",
    )
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .transpose()
}

/// Stores the key_check row unless one exists (first start wins).
pub async fn insert_key_check(db: &Db, ciphertext: &str) -> Result<(), crate::store::StoreError> {
    let ct = ciphertext.to_string();
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            sqlx::query("INSERT INTO key_check (id, ciphertext, created) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING")
                .bind(ct)
                .bind(now_ts())
                .execute(conn)
                .await?;
            Ok::<(), crate::store::StoreError>(())
        })
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// directory reads for the factor CLI and `policy simulate`

/// A directory user as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DirUser {
    pub seq: i64,
    pub id: String,
    pub user_name: String,
    pub active: bool,
    pub resource: serde_json::Value,
    pub last_modified: String,
}

fn dir_user(r: &AnyRow) -> Result<DirUser, sqlx::Error> {
    let text: String = r.try_get("resource")?;
    Ok(DirUser {
        seq: r.try_get("seq")?,
        id: r.try_get("id")?,
        user_name: r.try_get("user_name")?,
        active: r.try_get::<i64, _>("active")? != 0,
        resource: serde_json::from_str(&text)
            .map_err(|e| decode_err(format!("user resource: {e}")))?,
        last_modified: r.try_get("last_modified")?,
    })
}

const DIR_USER_COLS: &str = "seq, id, user_name, active, resource, last_modified";

/// Directory users in insertion order, after `after_seq`, at most `limit`.
pub async fn users_page<'e, E>(
    ex: E,
    tenant: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<DirUser>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "SELECT {DIR_USER_COLS} FROM users WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(tenant)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(ex)
        .await?;
    rows.iter().map(dir_user).collect()
}
