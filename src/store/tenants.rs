//! SQL for the `tenants` and `tokens` tables (migration 0001): creating and finding tenants,
//! their OAuth 2.0 JWT settings, and the bearer tokens' hashes.
//!
//! SQL only: minting tokens, hashing and deciding who a request is live in `crate::auth`.
//! Reads take any executor (`&AnyPool` or `&mut AnyConnection`); writes take a connection so
//! they run inside the transaction of `Db::write`. The same SQL text runs on SQLite and
//! PostgreSQL. A token's hash is read only by `token_by_hash`; listings never return it.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{now_ts, ts_from, Db, StoreError};
use crate::auth::Scope;

/// Name of the tenant `deprovd serve` creates on a fresh database.
pub const DEFAULT_TENANT: &str = "default";

/// One row of `tenants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created: String,
    /// OAuth 2.0 JWT bearer settings: all three set, or none.
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_jwks_url: Option<String>,
}

/// A tenant's accepted JWT issuer, audience and key set location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantJwt {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
}

impl Tenant {
    /// The JWT settings if all three are set.
    pub fn jwt(&self) -> Option<TenantJwt> {
        match (&self.jwt_issuer, &self.jwt_audience, &self.jwt_jwks_url) {
            (Some(i), Some(a), Some(u)) => Some(TenantJwt {
                issuer: i.clone(),
                audience: a.clone(),
                jwks_url: u.clone(),
            }),
            _ => None,
        }
    }
}

/// One row of `tokens`, without the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub tenant_id: String,
    pub scope: Scope,
    pub name: String,
    pub created: String,
    pub revoked: Option<String>,
    pub last_used: Option<String>,
}

/// What `token_by_hash` finds: the token, its tenant, and the stored hash so the caller can
/// compare it in constant time.
#[derive(Debug, Clone)]
pub struct TokenMatch {
    pub token: TokenRow,
    pub tenant: Tenant,
    pub token_hash: String,
}

/// Errors of this module that callers act on; everything else is the database's.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("invalid tenant name {0:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    InvalidName(String),
    #[error("tenant {0:?} already exists")]
    DuplicateName(String),
    #[error("tenant {0:?} not found")]
    NotFound(String),
    #[error("invalid token name: use 1 to 128 printable characters")]
    InvalidTokenName,
    #[error("invalid JWT settings: {0}")]
    InvalidJwt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

// So `?` works on queries and `TenantError` can be the error type of a `Db::write` op.
impl From<sqlx::Error> for TenantError {
    fn from(e: sqlx::Error) -> Self {
        TenantError::Store(StoreError::Database(e))
    }
}

/// 1–64 characters of `[A-Za-z0-9._-]`, and not `.` or `..` (names may end up in file names).
pub fn valid_tenant_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != ".."
}

const TENANT_COLS: &str = "id, name, created, jwt_issuer, jwt_audience, jwt_jwks_url";
const TOKEN_COLS: &str = "id, tenant_id, scope, name, created, revoked, last_used";

fn tenant_from_row(row: &AnyRow) -> Result<Tenant, sqlx::Error> {
    Ok(Tenant {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created: row.try_get("created")?,
        jwt_issuer: row.try_get("jwt_issuer")?,
        jwt_audience: row.try_get("jwt_audience")?,
        jwt_jwks_url: row.try_get("jwt_jwks_url")?,
    })
}

fn parse_scope(s: &str) -> Result<Scope, sqlx::Error> {
    Scope::parse(s).ok_or_else(|| sqlx::Error::Decode(format!("unknown token scope {s:?}").into()))
}

fn token_from_row(row: &AnyRow) -> Result<TokenRow, sqlx::Error> {
    let scope: String = row.try_get("scope")?;
    Ok(TokenRow {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        scope: parse_scope(&scope)?,
        name: row.try_get("name")?,
        created: row.try_get("created")?,
        revoked: row.try_get("revoked")?,
        last_used: row.try_get("last_used")?,
    })
}

// ---------------------------------------------------------------------------------------------
// tenants

/// Creates a tenant. Duplicate names give `TenantError::DuplicateName` without aborting the
/// surrounding transaction (ON CONFLICT DO NOTHING rather than a failed INSERT, which would
/// poison a PostgreSQL transaction).
pub async fn create_tenant(conn: &mut AnyConnection, name: &str) -> Result<Tenant, TenantError> {
    if !valid_tenant_name(name) {
        return Err(TenantError::InvalidName(name.to_string()));
    }
    let tenant = Tenant {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        created: now_ts(),
        jwt_issuer: None,
        jwt_audience: None,
        jwt_jwks_url: None,
    };
    let done = sqlx::query(
        "INSERT INTO tenants (id, name, created) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&tenant.id)
    .bind(&tenant.name)
    .bind(&tenant.created)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(TenantError::DuplicateName(name.to_string()));
    }
    Ok(tenant)
}

/// Returns the tenant called `name`, creating it if missing. Safe when two processes start at
/// once on the same database: the loser's INSERT does nothing and both read the winner's row.
pub async fn ensure_tenant(conn: &mut AnyConnection, name: &str) -> Result<Tenant, TenantError> {
    if !valid_tenant_name(name) {
        return Err(TenantError::InvalidName(name.to_string()));
    }
    sqlx::query(
        "INSERT INTO tenants (id, name, created) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(name)
    .bind(now_ts())
    .execute(&mut *conn)
    .await?;
    tenant_by_name(&mut *conn, name)
        .await?
        .ok_or_else(|| TenantError::NotFound(name.to_string()))
}

/// The tenant `default`, created if missing (idempotent, race-safe).
pub async fn ensure_default_tenant(db: &Db) -> Result<Tenant, TenantError> {
    db.write(|conn: &mut AnyConnection| Box::pin(ensure_tenant(conn, DEFAULT_TENANT)))
        .await
}

pub async fn tenant_by_name<'e, E>(ex: E, name: &str) -> Result<Option<Tenant>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {TENANT_COLS} FROM tenants WHERE name = $1");
    let row = sqlx::query(&sql).bind(name).fetch_optional(ex).await?;
    row.as_ref().map(tenant_from_row).transpose()
}

pub async fn tenant_by_id<'e, E>(ex: E, id: &str) -> Result<Option<Tenant>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(ex).await?;
    row.as_ref().map(tenant_from_row).transpose()
}

/// All tenants, by name.
pub async fn list_tenants<'e, E>(ex: E) -> Result<Vec<Tenant>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {TENANT_COLS} FROM tenants ORDER BY name");
    let rows = sqlx::query(&sql).fetch_all(ex).await?;
    rows.iter().map(tenant_from_row).collect()
}

/// Tenants that accept JWTs from issuer `iss` (usually one; several tenants may share an IdP
/// and are then told apart by audience).
pub async fn tenants_by_issuer<'e, E>(ex: E, iss: &str) -> Result<Vec<Tenant>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "SELECT {TENANT_COLS} FROM tenants WHERE jwt_issuer = $1 \
         AND jwt_audience IS NOT NULL AND jwt_jwks_url IS NOT NULL ORDER BY name"
    );
    let rows = sqlx::query(&sql).bind(iss).fetch_all(ex).await?;
    rows.iter().map(tenant_from_row).collect()
}

/// Every tenant with complete JWT settings (the authenticator caches this short-term so the
/// JWT path costs no query per request, whatever issuer a caller claims).
pub async fn jwt_tenants<'e, E>(ex: E) -> Result<Vec<Tenant>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "SELECT {TENANT_COLS} FROM tenants WHERE jwt_issuer IS NOT NULL \
         AND jwt_audience IS NOT NULL AND jwt_jwks_url IS NOT NULL ORDER BY name"
    );
    let rows = sqlx::query(&sql).fetch_all(ex).await?;
    rows.iter().map(tenant_from_row).collect()
}

/// Checks JWT settings: non-empty, bounded, and a JWKS URL over https (plain http only to a
/// loopback address, for tests and local IdPs).
pub fn validate_jwt_settings(issuer: &str, audience: &str, jwks_url: &str) -> Result<(), String> {
    for (what, v) in [
        ("issuer", issuer),
        ("audience", audience),
        ("JWKS URL", jwks_url),
    ] {
        if v.trim().is_empty() || v.len() > 2048 || v.chars().any(char::is_control) {
            return Err(format!("{what} must be 1 to 2048 printable characters"));
        }
    }
    let url = reqwest::Url::parse(jwks_url).map_err(|e| format!("JWKS URL: {e}"))?;
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("JWKS URL must use https (http only to a loopback address)".to_string()),
    }
}

/// Sets the tenant's accepted JWT issuer, audience and JWKS URL.
pub async fn set_tenant_jwt(
    conn: &mut AnyConnection,
    tenant_id: &str,
    issuer: &str,
    audience: &str,
    jwks_url: &str,
) -> Result<(), TenantError> {
    validate_jwt_settings(issuer, audience, jwks_url).map_err(TenantError::InvalidJwt)?;
    let done = sqlx::query(
        "UPDATE tenants SET jwt_issuer = $1, jwt_audience = $2, jwt_jwks_url = $3 WHERE id = $4",
    )
    .bind(issuer)
    .bind(audience)
    .bind(jwks_url)
    .bind(tenant_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(TenantError::NotFound(tenant_id.to_string()));
    }
    Ok(())
}

/// Stops accepting JWTs for the tenant.
pub async fn clear_tenant_jwt(
    conn: &mut AnyConnection,
    tenant_id: &str,
) -> Result<(), TenantError> {
    let done = sqlx::query(
        "UPDATE tenants SET jwt_issuer = NULL, jwt_audience = NULL, jwt_jwks_url = NULL \
         WHERE id = $1",
    )
    .bind(tenant_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(TenantError::NotFound(tenant_id.to_string()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tokens

/// Stores a new token's hash. `token_hash` comes from `crate::auth::generate_token`.
pub async fn insert_token(
    conn: &mut AnyConnection,
    tenant_id: &str,
    scope: Scope,
    name: &str,
    token_hash: &str,
) -> Result<TokenRow, TenantError> {
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(TenantError::InvalidTokenName);
    }
    let row = TokenRow {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant_id.to_string(),
        scope,
        name: name.to_string(),
        created: now_ts(),
        revoked: None,
        last_used: None,
    };
    // Check the tenant first: a foreign-key failure would abort a PostgreSQL transaction, and
    // SQLite only enforces foreign keys when the pragma is on.
    if tenant_by_id(&mut *conn, tenant_id).await?.is_none() {
        return Err(TenantError::NotFound(tenant_id.to_string()));
    }
    sqlx::query(
        "INSERT INTO tokens (id, tenant_id, scope, name, token_hash, created) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&row.id)
    .bind(&row.tenant_id)
    .bind(scope.as_str())
    .bind(&row.name)
    .bind(token_hash)
    .bind(&row.created)
    .execute(&mut *conn)
    .await?;
    Ok(row)
}

/// The token with this hash and its tenant, in one query on the unique `token_hash` index.
/// Revoked tokens are returned too (with `revoked` set): the caller refuses them.
pub async fn token_by_hash<'e, E>(
    ex: E,
    token_hash: &str,
) -> Result<Option<TokenMatch>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT k.id, k.tenant_id, k.scope, k.name, k.token_hash, k.created, k.revoked, \
                k.last_used, t.name AS tenant_name, t.created AS tenant_created, \
                t.jwt_issuer, t.jwt_audience, t.jwt_jwks_url \
         FROM tokens k JOIN tenants t ON t.id = k.tenant_id \
         WHERE k.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(ex)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let token = token_from_row(&row)?;
    let tenant = Tenant {
        id: token.tenant_id.clone(),
        name: row.try_get("tenant_name")?,
        created: row.try_get("tenant_created")?,
        jwt_issuer: row.try_get("jwt_issuer")?,
        jwt_audience: row.try_get("jwt_audience")?,
        jwt_jwks_url: row.try_get("jwt_jwks_url")?,
    };
    Ok(Some(TokenMatch {
        token,
        tenant,
        token_hash: row.try_get("token_hash")?,
    }))
}

/// The tenant's tokens, oldest first, revoked ones included. Never the hash.
pub async fn list_tokens<'e, E>(ex: E, tenant_id: &str) -> Result<Vec<TokenRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {TOKEN_COLS} FROM tokens WHERE tenant_id = $1 ORDER BY created, id");
    let rows = sqlx::query(&sql).bind(tenant_id).fetch_all(ex).await?;
    rows.iter().map(token_from_row).collect()
}

pub async fn token_by_id<'e, E>(ex: E, id: &str) -> Result<Option<TokenRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(ex).await?;
    row.as_ref().map(token_from_row).transpose()
}

/// Revokes a token. `true` if it was active and is now revoked, `false` if unknown or already
/// revoked. Running authenticators may accept it for up to their cache TTL (5 s by default).
pub async fn revoke_token(conn: &mut AnyConnection, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE tokens SET revoked = $1 WHERE id = $2 AND revoked IS NULL")
        .bind(now_ts())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// `revoke_token` limited to one tenant (for the admin API: a tenant's admin cannot revoke
/// another tenant's token by guessing its id).
pub async fn revoke_tenant_token(
    conn: &mut AnyConnection,
    tenant_id: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE tokens SET revoked = $1 WHERE id = $2 AND tenant_id = $3 AND revoked IS NULL",
    )
    .bind(now_ts())
    .bind(id)
    .bind(tenant_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Records that the token was used. The condition makes it a no-op when `last_used` is less
/// than a minute old, so replicas sharing a database do not each write on every request; the
/// authenticator also throttles in memory and calls this in the background.
pub async fn touch_token_last_used(conn: &mut AnyConnection, id: &str) -> Result<(), sqlx::Error> {
    let now = chrono::Utc::now();
    let cutoff = ts_from(now - chrono::Duration::seconds(60));
    sqlx::query(
        "UPDATE tokens SET last_used = $1 WHERE id = $2 AND (last_used IS NULL OR last_used < $3)",
    )
    .bind(ts_from(now))
    .bind(id)
    .bind(cutoff)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// How many tokens of `scope` the tenant has. With `active_only = false` revoked ones count
/// too: `serve` uses that to print first-run tokens only on a database that never had any.
pub async fn count_tokens<'e, E>(
    ex: E,
    tenant_id: &str,
    scope: Scope,
    active_only: bool,
) -> Result<i64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = if active_only {
        "SELECT COUNT(*) AS n FROM tokens WHERE tenant_id = $1 AND scope = $2 AND revoked IS NULL"
    } else {
        "SELECT COUNT(*) AS n FROM tokens WHERE tenant_id = $1 AND scope = $2"
    };
    let row = sqlx::query(sql)
        .bind(tenant_id)
        .bind(scope.as_str())
        .fetch_one(ex)
        .await?;
    row.try_get::<i64, _>("n")
}
