//! Request authentication: turns an `Authorization` header into a [`Principal`] (which tenant,
//! which scope, which token), or an [`AuthError`] the HTTP layer maps to 401/403/429/503.
//!
//! Two kinds of bearer are accepted: our own opaque tokens (`dpv_scim_…`, `dpv_admin_…`,
//! `dpv_audit_…`, looked up by SHA-256 hash) and, for SCIM only, OAuth 2.0 JWTs from a
//! tenant's configured issuer (`jwt.rs`).
//!
//! Operational facts worth knowing:
//! - A successful token lookup is cached in memory for `AuthSettings::token_cache_ttl` (5 s),
//!   so the hot path does no query per request. A revoked token therefore keeps working for
//!   up to that long on every replica that had it cached (in this process
//!   [`Authenticator::forget_cached_tokens`] makes it immediate).
//! - Failed authentications are counted per client address (`ratelimit.rs`); past the limit
//!   the address gets 429 with Retry-After and its tokens are not even looked at.
//! - `last_used` is written at most once a minute per token, in the background.
//!
//! Not here: HTTP types (the extractor and the status mapping live in `crate::http`), SQL
//! (`crate::store::tenants`), or what a scope may do (each route decides which scopes it
//! accepts).

pub mod jwt;
pub mod ratelimit;
pub mod tokens;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::store::tenants::{self as store, Tenant};
use crate::store::Db;

pub use jwt::JwtSettings;
pub use ratelimit::RateLimitConfig;
pub use tokens::{generate_token, hash_token, Scope};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: String,
    pub tenant_name: String,
    pub scope: Scope,
    /// The token's id, or `jwt:<sub>` (or `jwt:<client_id>`) for a JWT.
    pub token_id: String,
    /// The token's name, or the JWT's `sub` (else `client_id`).
    pub token_name: String,
    pub via_jwt: bool,
}

/// Why a request is not authenticated. Details never echo the presented token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header: 401 with a bare `WWW-Authenticate: Bearer realm="deprovd"`.
    #[error("authentication required")]
    Missing,
    /// A credential was presented and is not valid: 401, `error="invalid_token"`.
    #[error("invalid credentials: {0}")]
    Invalid(String),
    /// Valid credentials whose scope this route does not accept: 403.
    #[error("this token's scope does not allow this request")]
    WrongScope,
    /// Too many failures from this address: 429 with `Retry-After`.
    #[error("too many failed authentication attempts; retry after {retry_after_secs} s")]
    TooManyAttempts { retry_after_secs: u64 },
    /// We cannot decide now (database down, IdP keys unreachable): 503.
    #[error("authentication temporarily unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// The HTTP status this error maps to.
    pub fn status_code(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => 401,
            AuthError::WrongScope => 403,
            AuthError::TooManyAttempts { .. } => 429,
            AuthError::Unavailable(_) => 503,
        }
    }

    /// The `WWW-Authenticate` header value to send, if any (RFC 6750 §3).
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            AuthError::Missing => Some(r#"Bearer realm="deprovd""#.to_string()),
            AuthError::Invalid(why) => {
                // error_description must not contain '"' or '\' (RFC 6750 §3); keep it ASCII.
                let desc: String = why
                    .chars()
                    .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
                    .take(200)
                    .collect();
                Some(format!(
                    r#"Bearer realm="deprovd", error="invalid_token", error_description="{desc}""#
                ))
            }
            AuthError::WrongScope => {
                Some(r#"Bearer realm="deprovd", error="insufficient_scope""#.to_string())
            }
            AuthError::TooManyAttempts { .. } | AuthError::Unavailable(_) => None,
        }
    }

    /// `Retry-After` seconds for 429.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AuthError::TooManyAttempts { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

/// Tunables. `Default` is what production uses.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// How long a successful token lookup is reused without asking the database. Also the
    /// longest a revoked token can keep working.
    pub token_cache_ttl: Duration,
    /// Most tokens cached at once.
    pub token_cache_max: usize,
    /// How long the list of tenants that accept JWTs is reused.
    pub jwt_tenants_ttl: Duration,
    /// Shortest time between two `last_used` writes for one token.
    pub touch_interval: Duration,
    pub rate_limit: RateLimitConfig,
    pub jwt: JwtSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            token_cache_ttl: Duration::from_secs(5),
            token_cache_max: 10_000,
            jwt_tenants_ttl: Duration::from_secs(5),
            touch_interval: Duration::from_secs(60),
            rate_limit: RateLimitConfig::default(),
            jwt: JwtSettings::default(),
        }
    }
}

struct CachedToken {
    principal: Principal,
    stored_hash: String,
    expires: Instant,
}

struct Inner {
    db: Db,
    settings: AuthSettings,
    limiter: ratelimit::FailureLimiter,
    jwt: jwt::JwtVerifier,
    /// token hash → principal, for `token_cache_ttl`.
    cache: RwLock<HashMap<String, CachedToken>>,
    /// Tenants with JWT settings, and when they were read.
    jwt_tenants: Mutex<Option<(Instant, Arc<Vec<Tenant>>)>>,
    /// token id → last time we wrote `last_used`.
    touched: Mutex<HashMap<String, Instant>>,
}

/// Authenticates requests. Clone it freely: clones share caches and counters.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

/// Splits `Bearer <token>` (scheme case-insensitive, RFC 7235 §2.1).
fn bearer(header: &str) -> Result<&str, AuthError> {
    let header = header.trim();
    let (scheme, rest) = header.split_once([' ', '\t']).unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid("expected the Bearer scheme".into()));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Invalid("empty bearer token".into()));
    }
    Ok(token)
}

impl Authenticator {
    pub fn new(db: Db, http: reqwest::Client) -> Self {
        Self::with_settings(db, http, AuthSettings::default())
    }

    pub fn with_settings(db: Db, http: reqwest::Client, settings: AuthSettings) -> Self {
        Authenticator {
            inner: Arc::new(Inner {
                db,
                limiter: ratelimit::FailureLimiter::new(settings.rate_limit.clone()),
                jwt: jwt::JwtVerifier::new(http, settings.jwt.clone()),
                settings,
                cache: RwLock::new(HashMap::new()),
                jwt_tenants: Mutex::new(None),
                touched: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Authenticates one request. `accepted` lists the scopes the route allows.
    pub async fn authenticate(
        &self,
        authorization_header: Option<&str>,
        client_ip: IpAddr,
        accepted: &[Scope],
    ) -> Result<Principal, AuthError> {
        let limiter = &self.inner.limiter;
        if let Some(retry_after_secs) = limiter.check(client_ip) {
            return Err(AuthError::TooManyAttempts { retry_after_secs });
        }
        let Some(header) = authorization_header else {
            return Err(AuthError::Missing);
        };
        match self.identify(header).await {
            Ok(p) if accepted.contains(&p.scope) => Ok(p),
            Ok(_) => Err(AuthError::WrongScope),
            Err(AuthError::Invalid(why)) => match limiter.record_failure(client_ip) {
                // This failure crossed the limit: say so now rather than on the next try.
                Some(retry_after_secs) => Err(AuthError::TooManyAttempts { retry_after_secs }),
                None => Err(AuthError::Invalid(why)),
            },
            Err(e) => Err(e),
        }
    }

    /// Drops every cached token lookup, so a revocation made in this process takes effect at
    /// once here (other replicas still wait out their cache TTL).
    pub fn forget_cached_tokens(&self) {
        self.inner
            .cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self
            .inner
            .jwt_tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Who the header names, scope not yet checked.
    async fn identify(&self, header: &str) -> Result<Principal, AuthError> {
        let token = bearer(header)?;
        if token.len() > tokens::MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("token too long".into()));
        }
        if jwt::looks_like_jwt(token) {
            return self.identify_jwt(token).await;
        }
        if !tokens::looks_like_opaque_token(token) {
            return Err(AuthError::Invalid("malformed token".into()));
        }
        self.identify_opaque(token).await
    }

    async fn identify_opaque(&self, token: &str) -> Result<Principal, AuthError> {
        let hash = hash_token(token);
        let now = Instant::now();
        {
            let cache = self.inner.cache.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(&hash) {
                if c.expires > now && tokens::hashes_match(&c.stored_hash, &hash) {
                    return Ok(c.principal.clone());
                }
            }
        }
        let found = store::token_by_hash(&self.inner.db.pool, &hash)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "token lookup failed");
                AuthError::Unavailable("database unavailable".into())
            })?;
        // One message for unknown and revoked: the caller learns nothing about which.
        let invalid = || AuthError::Invalid("unknown or revoked token".into());
        let Some(m) = found else {
            return Err(invalid());
        };
        if !tokens::hashes_match(&m.token_hash, &hash) || m.token.revoked.is_some() {
            return Err(invalid());
        }
        let principal = Principal {
            tenant_id: m.tenant.id.clone(),
            tenant_name: m.tenant.name.clone(),
            scope: m.token.scope,
            token_id: m.token.id.clone(),
            token_name: m.token.name.clone(),
            via_jwt: false,
        };
        self.cache_token(hash, m.token_hash, principal.clone(), now);
        self.touch(&m.token.id, now);
        Ok(principal)
    }

    fn cache_token(&self, hash: String, stored_hash: String, principal: Principal, now: Instant) {
        let s = &self.inner.settings;
        let mut cache = self.inner.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= s.token_cache_max {
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= s.token_cache_max {
                // Everything is live: start over rather than scan for the oldest. The cost is
                // one query per token on the next request, nothing worse.
                cache.clear();
            }
        }
        cache.insert(
            hash,
            CachedToken {
                principal,
                stored_hash,
                expires: now + s.token_cache_ttl,
            },
        );
    }

    /// Writes `last_used` in the background, at most once per `touch_interval` per token.
    fn touch(&self, token_id: &str, now: Instant) {
        let interval = self.inner.settings.touch_interval;
        {
            let mut touched = self.inner.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched
                .get(token_id)
                .is_some_and(|t| now.duration_since(*t) < interval)
            {
                return;
            }
            if touched.len() >= 10_000 {
                touched.retain(|_, t| now.duration_since(*t) < interval);
                if touched.len() >= 10_000 {
                    touched.clear();
                }
            }
            touched.insert(token_id.to_string(), now);
        }
        let db = self.inner.db.clone();
        let id = token_id.to_string();
        tokio::spawn(async move {
            let r = db
                .write(move |conn| {
                    Box::pin(async move {
                        store::touch_token_last_used(conn, &id)
                            .await
                            .map_err(crate::store::StoreError::from)
                    })
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "could not record token last_used");
            }
        });
    }

    async fn jwt_tenants(&self) -> Result<Arc<Vec<Tenant>>, AuthError> {
        let ttl = self.inner.settings.jwt_tenants_ttl;
        {
            let g = self
                .inner
                .jwt_tenants
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((at, list)) = g.as_ref() {
                if at.elapsed() < ttl {
                    return Ok(list.clone());
                }
            }
        }
        let list = store::jwt_tenants(&self.inner.db.pool).await.map_err(|e| {
            tracing::error!(error = %e, "reading tenants' JWT settings failed");
            AuthError::Unavailable("database unavailable".into())
        })?;
        let list = Arc::new(list);
        *self
            .inner
            .jwt_tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    async fn identify_jwt(&self, token: &str) -> Result<Principal, AuthError> {
        let peek = jwt::peek(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let tenants = self.jwt_tenants().await?;
        let candidates: Vec<&Tenant> = tenants
            .iter()
            .filter(|t| t.jwt_issuer.as_deref() == Some(peek.iss.as_str()))
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::Invalid("issuer not accepted".into()));
        }
        // Several tenants may trust one IdP; the audience tells them apart. A token valid for
        // more than one tenant is refused rather than given to either.
        let mut accepted: Option<(&Tenant, jwt::VerifiedClaims)> = None;
        let mut first_err: Option<jwt::JwtError> = None;
        for t in candidates {
            let Some(cfg) = t.jwt() else { continue };
            match self.inner.jwt.verify(token, &peek, &cfg).await {
                Ok(c) => {
                    if accepted.is_some() {
                        return Err(AuthError::Invalid(
                            "token is valid for more than one tenant".into(),
                        ));
                    }
                    accepted = Some((t, c));
                }
                Err(e) => {
                    // Prefer a real refusal over "keys unavailable" from another tenant.
                    if first_err.is_none()
                        || matches!(first_err, Some(jwt::JwtError::KeysUnavailable))
                    {
                        first_err = Some(e);
                    }
                }
            }
        }
        let Some((tenant, claims)) = accepted else {
            return Err(match first_err {
                Some(jwt::JwtError::KeysUnavailable) => {
                    AuthError::Unavailable("the issuer's signing keys are unavailable".into())
                }
                Some(e) => AuthError::Invalid(e.to_string()),
                None => AuthError::Invalid("issuer not accepted".into()),
            });
        };
        let who = claims
            .sub
            .filter(|s| !s.is_empty())
            .or(claims.client_id.filter(|s| !s.is_empty()))
            .ok_or_else(|| AuthError::Invalid("token has neither sub nor client_id".into()))?;
        Ok(Principal {
            tenant_id: tenant.id.clone(),
            tenant_name: tenant.name.clone(),
            scope: Scope::Scim,
            token_id: format!("jwt:{who}"),
            token_name: who,
            via_jwt: true,
        })
    }
}

#[cfg(test)]
mod tests;
