//! The admin API, `/admin/v1`: policy, factors of the built-in store, jobs, the blast-radius
//! guard, HR offboardings, the audit log and webhooks, for one tenant: the tenant of the token.
//! Admin tokens read and write; auditor tokens only read (a write answers 403). Every write is
//! audited, in the same transaction as the change where the module doing it allows.
//!
//! This file only adapts HTTP to the modules that do the work (`policy`, `factors`, `jobs`,
//! `engine::guard`, `offboarding`, `audit`, `notify`); it holds no SQL and no business rules.
//!
//! Conventions: request and answer bodies are JSON (`PUT /policy` also takes the TOML text);
//! bodies are at most 256 KiB; lists come as `{"<things>": [...]}`; errors are
//! `{"error": {"code": "...", "message": "...", "details"?: ...}}` with `code` one of
//! `invalid` (400), `unauthorized` (401), `forbidden` (403), `not_found` (404),
//! `method_not_allowed` (405), `conflict` (409), `too_large` (413), `unsupported_media_type`
//! (415), `too_many_requests` (429), `internal` (500), `unavailable` (503).
//!
//! | method and path | answer |
//! | --- | --- |
//! | `GET /admin/v1/policy` | the current policy version (`version`, `hash`, `setBy`, `created`, `text`) |
//! | `PUT /admin/v1/policy` | TOML body (or `{"policy": "…"}`): new version; 400 lists each error with `line`, `column` |
//! | `GET /admin/v1/policy/versions` | every version, newest first |
//! | `GET /admin/v1/users/{id}/factors` | the user's factors (`{id}` = SCIM id) and sessions; a deleted user's too, with `deletedAt` |
//! | `POST /admin/v1/users/{id}/factors` | `{"type", "label"?, "credentialId"?, "publicKey"?, "destination"?}`: 201, TOTP/HOTP `otpauthUri` and recovery codes shown once |
//! | `POST /admin/v1/factors/{id}/revoke` | revokes one factor (idempotent) |
//! | `GET /admin/v1/jobs?state=&kind=&user=&limit=` | jobs, most recently updated first |
//! | `POST /admin/v1/jobs/{id}/retry` | a dead job back in the queue (409 if not dead) |
//! | `GET /admin/v1/guard`, `POST …/guard/release`, `POST …/guard/discard` | the guard |
//! | `GET /admin/v1/offboardings`, `GET …/{id}`, `POST …` (`{"userName", "at"?, "reason"?, "ticket"?}`), `POST …/{id}/cancel` | HR offboarding |
//! | `GET /admin/v1/audit?user=&kind=&since=&until=&limit=&after=` | audit entries, oldest first; `next` is the cursor for `after` |
//! | `GET /admin/v1/webhooks`, `GET …/{id}`, `POST …` (`{"url", "eventTypes"?, "secret"?, "description"?}`), `DELETE …/{id}`, `POST …/{id}/ping` | webhooks; the secret is answered once, on create |

use std::fmt;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::AnyConnection;

use super::auth::AdminPrincipal;
use super::AppState;
use crate::audit::{self, AuditActor, AuditEntry};
use crate::factors::{self, EnrollError, EnrollMaterial, FactorType};
use crate::notify::{self, NewSubscription};
use crate::offboarding::{self, OffboardError};
use crate::policy::store::PolicyStoreError;
use crate::store::{ts_from, StoreError};

/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Default and largest page of a list.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

// ---------------------------------------------------------------------------------------------
// Errors.

/// What can go wrong in an admin request, with the status and `code` it answers.
#[derive(Debug)]
pub enum AdminError {
    /// 400 `invalid`.
    Invalid(String),
    /// 400 `invalid` with structured details (e.g. each policy error with its line).
    InvalidDetails { message: String, details: Value },
    /// 403 `forbidden`.
    Forbidden(String),
    /// 404 `not_found`.
    NotFound(String),
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 409 `conflict`.
    Conflict(String),
    /// 413 `too_large`.
    TooLarge,
    /// 415 `unsupported_media_type`.
    UnsupportedMediaType(String),
    /// 503 `unavailable`: nothing was written, trying again is safe.
    Unavailable(String),
    /// 500 `internal`; the cause is logged, not shown.
    Internal,
}

impl AdminError {
    fn code(&self) -> &'static str {
        match self {
            AdminError::Invalid(_) | AdminError::InvalidDetails { .. } => "invalid",
            AdminError::Forbidden(_) => "forbidden",
            AdminError::NotFound(_) => "not_found",
            AdminError::MethodNotAllowed => "method_not_allowed",
            AdminError::Conflict(_) => "conflict",
            AdminError::TooLarge => "too_large",
            AdminError::UnsupportedMediaType(_) => "unsupported_media_type",
            AdminError::Unavailable(_) => "unavailable",
            AdminError::Internal => "internal",
        }
    }

    /// Logs `e` (with its source chain) and answers a bare 500.
    fn internal(e: &dyn std::error::Error) -> AdminError {
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        tracing::error!(error = %msg, "admin API request failed");
        AdminError::Internal
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Invalid(m)
            | AdminError::Forbidden(m)
            | AdminError::NotFound(m)
            | AdminError::Conflict(m)
            | AdminError::UnsupportedMediaType(m)
            | AdminError::Unavailable(m) => f.write_str(m),
            AdminError::InvalidDetails { message, .. } => f.write_str(message),
            AdminError::MethodNotAllowed => f.write_str("method not allowed on this resource"),
            AdminError::TooLarge => {
                write!(f, "the request body is larger than {} KiB", MAX_BODY / 1024)
            }
            AdminError::Internal => {
                f.write_str("internal error; the server log has the details (see X-Request-Id)")
            }
        }
    }
}

impl std::error::Error for AdminError {}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::Invalid(_) | AdminError::InvalidDetails { .. } => StatusCode::BAD_REQUEST,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut err = json!({ "code": self.code(), "message": self.to_string() });
        if let AdminError::InvalidDetails { details, .. } = self {
            err["details"] = details.clone();
        }
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        if matches!(self, AdminError::Unavailable(_)) {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        res.json(json!({ "error": err }))
    }
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        AdminError::internal(&e)
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => AdminError::Unavailable("the server is shutting down".into()),
            StoreError::Aborted(_) => {
                tracing::warn!(error = %e, "admin write aborted");
                AdminError::Unavailable(
                    "the write could not be committed; nothing was changed, try again".into(),
                )
            }
            other => AdminError::internal(&other),
        }
    }
}

impl From<PolicyStoreError> for AdminError {
    fn from(e: PolicyStoreError) -> Self {
        match e {
            PolicyStoreError::Invalid(errors) => {
                let n = errors.len();
                let first = errors.first().map(|e| e.to_string()).unwrap_or_default();
                AdminError::InvalidDetails {
                    message: format!(
                        "the policy has {n} error{}; the first is at {first}",
                        if n == 1 { "" } else { "s" }
                    ),
                    details: errors
                        .iter()
                        .map(|e| json!({"line": e.line, "column": e.column, "message": e.message}))
                        .collect(),
                }
            }
            PolicyStoreError::Store(s) => s.into(),
            other => AdminError::internal(&other),
        }
    }
}

impl From<OffboardError> for AdminError {
    fn from(e: OffboardError) -> Self {
        match e {
            OffboardError::UnknownUser(_) | OffboardError::NotFound => {
                AdminError::NotFound(e.to_string())
            }
            OffboardError::NotCancellable(_) => AdminError::Conflict(e.to_string()),
            OffboardError::Invalid(m) => AdminError::Invalid(m),
            OffboardError::Store(s) => s.into(),
        }
    }
}

impl From<EnrollError> for AdminError {
    fn from(e: EnrollError) -> Self {
        match e {
            EnrollError::Invalid(m) => AdminError::Invalid(m),
            EnrollError::Store(s) => s.into(),
        }
    }
}

/// Errors of a write transaction that mixes modules: anything converts into it, and it
/// converts into an [`AdminError`].
#[derive(Debug)]
enum TxError {
    Store(StoreError),
    Policy(PolicyStoreError),
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Store(StoreError::Database(e))
    }
}

impl From<PolicyStoreError> for TxError {
    fn from(e: PolicyStoreError) -> Self {
        TxError::Policy(e)
    }
}

impl From<TxError> for AdminError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Store(s) => s.into(),
            TxError::Policy(p) => p.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

type Res = Result<HttpResponse, AdminError>;

fn require_write(admin: &AdminPrincipal) -> Result<(), AdminError> {
    if admin.can_write() {
        Ok(())
    } else {
        Err(AdminError::Forbidden(
            "this token can only read (auditor); changes need an admin token".into(),
        ))
    }
}

fn audit_actor(admin: &AdminPrincipal) -> AuditActor {
    AuditActor::from_actor(&admin.actor())
}

/// An answer that must not be cached anywhere (it may carry a secret shown once).
fn no_store(status: StatusCode, body: Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .json(body)
}

fn ok(body: Value) -> HttpResponse {
    no_store(StatusCode::OK, body)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, AdminError> {
    serde_json::to_value(v).map_err(|e| AdminError::internal(&e))
}

/// Reads the request body, refusing more than [`MAX_BODY`] bytes.
async fn read_body(req: &HttpRequest, mut payload: web::Payload) -> Result<Vec<u8>, AdminError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(AdminError::TooLarge);
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| AdminError::Invalid(format!("cannot read the request body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(AdminError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::Invalid("a JSON body is required".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| AdminError::Invalid(format!("the body is not the JSON expected here: {e}")))
}

fn parse_query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, AdminError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| AdminError::Invalid(format!("bad query parameters: {e}")))
}

fn limit(v: Option<i64>) -> Result<i64, AdminError> {
    match v {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(AdminError::Invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        ))),
    }
}

/// An RFC 3339 time or a `YYYY-MM-DD` date (midnight UTC), in the stored text format so it
/// compares correctly with stored times.
fn parse_time(what: &str, text: &str) -> Result<String, AdminError> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(ts_from(dt.with_timezone(&Utc)));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(dt) = d.and_hms_opt(0, 0, 0) {
            return Ok(ts_from(dt.and_utc()));
        }
    }
    Err(AdminError::Invalid(format!(
        "{what} must be an RFC 3339 time (2024-05-01T12:00:00Z) or a date (2024-05-01)"
    )))
}

/// Path ids are opaque, but bounded: nothing longer is ever ours.
fn path_id(id: &str) -> Result<&str, AdminError> {
    if id.is_empty() || id.len() > 256 {
        return Err(AdminError::NotFound("no such resource".into()));
    }
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Routes.

async fn not_found() -> Res {
    Err(AdminError::NotFound("no such admin API endpoint".into()))
}

async fn method_not_allowed() -> Res {
    Err(AdminError::MethodNotAllowed)
}

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// Registers `/admin/v1/...`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin/v1")
            .service(resource("/policy").get(get_policy).put(put_policy))
            .service(resource("/policy/versions").get(policy_versions))
            .service(
                resource("/users/{id}/factors")
                    .get(user_factors)
                    .post(enroll_factor),
            )
            .service(resource("/factors/{id}/revoke").post(revoke_factor))
            .service(resource("/jobs").get(list_jobs))
            .service(resource("/jobs/{id}").get(get_job))
            .service(resource("/jobs/{id}/retry").post(retry_job))
            .service(resource("/guard").get(guard_status))
            .service(resource("/guard/release").post(guard_release))
            .service(resource("/guard/discard").post(guard_discard))
            .service(
                resource("/offboardings")
                    .get(list_offboardings)
                    .post(create_offboarding),
            )
            .service(resource("/offboardings/{id}").get(get_offboarding))
            .service(resource("/offboardings/{id}/cancel").post(cancel_offboarding))
            .service(resource("/audit").get(list_audit))
            .service(
                resource("/webhooks")
                    .get(list_webhooks)
                    .post(create_webhook),
            )
            .service(
                resource("/webhooks/{id}")
                    .get(get_webhook)
                    .delete(delete_webhook),
            )
            .service(resource("/webhooks/{id}/ping").post(ping_webhook))
            .default_service(web::to(not_found)),
    );
}

// ---------------------------------------------------------------------------------------------
// Policy.

async fn get_policy(state: web::Data<AppState>, admin: AdminPrincipal) -> Res {
    let (policy, version) = crate::policy::current_policy(&state.db, admin.tenant()).await?;
    let mode = if policy.audit_only() {
        "audit-only"
    } else {
        "enforce"
    };
    let mut body = match version {
        Some(v) => to_json(&v)?,
        None => json!({
            "version": null,
            "text": null,
            "message": "no policy has been set; the built-in default applies",
        }),
    };
    body["mode"] = json!(mode);
    Ok(ok(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    policy: String,
}

async fn put_policy(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    require_write(&admin)?;
    let body = read_body(&req, payload).await?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let text = if content_type.contains("json") {
        parse_json::<PolicyBody>(&body)?.policy
    } else if content_type.is_empty()
        || content_type.starts_with("text/")
        || content_type.contains("toml")
        || content_type.starts_with("application/octet-stream")
        || content_type.starts_with("application/x-www-form-urlencoded")
    {
        // curl --data-binary sends form-urlencoded unless told otherwise: take it as text.
        String::from_utf8(body)
            .map_err(|_| AdminError::Invalid("the policy text is not UTF-8".into()))?
    } else {
        return Err(AdminError::UnsupportedMediaType(format!(
            "send the policy as text/plain or application/toml, or as JSON {{\"policy\": \"…\"}}; not {content_type}"
        )));
    };
    if text.trim().is_empty() {
        return Err(AdminError::Invalid("the policy is empty".into()));
    }
    let actor = audit_actor(&admin);
    let set_by = format!("admin:{}", actor.name);
    let tenant = admin.tenant().to_string();
    let (version, queued) = state
        .db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                let change =
                    crate::policy::change::change_policy(conn, &tenant, &text, &set_by, actor)
                        .await?;
                Ok::<_, TxError>((change.version, change.users_queued))
            })
        })
        .await?;
    crate::jobs::nudge();
    let mut body = to_json(&version)?;
    body["changed"] = json!(queued.is_some());
    body["usersQueued"] = json!(queued.unwrap_or(0));
    Ok(ok(body))
}

async fn policy_versions(state: web::Data<AppState>, admin: AdminPrincipal) -> Res {
    let versions = crate::policy::list_versions(&state.db, admin.tenant()).await?;
    Ok(ok(json!({ "versions": versions })))
}

// ---------------------------------------------------------------------------------------------
// Factors (the built-in store).

/// The user's factor-store key under the tenant's `[link] by`: None when they have no value to
/// link by. A deleted user is found too when `deleted` allows it (by their last resource), with
/// when they were deleted; otherwise, and for an unknown id, 404.
struct LinkedUser {
    key: Option<String>,
    by: crate::factors::LinkBy,
    deleted_at: Option<String>,
}

async fn user_link_key(
    state: &AppState,
    tenant: &str,
    user_id: &str,
    deleted: bool,
) -> Result<LinkedUser, AdminError> {
    let dir = &state.directory;
    let live = dir
        .get_user(tenant, user_id)
        .await
        .map_err(|e| AdminError::internal(&e))?;
    let (resource, deleted_at) = match live {
        Some(user) => (user.resource, None),
        None if deleted => match dir
            .deleted_user(tenant, user_id)
            .await
            .map_err(|e| AdminError::internal(&e))?
        {
            Some((at, resource)) => (resource, Some(at)),
            None => return Err(AdminError::NotFound(format!("no user with id {user_id:?}"))),
        },
        None => return Err(AdminError::NotFound(format!("no user with id {user_id:?}"))),
    };
    let (policy, _) = crate::policy::current_policy(&state.db, tenant).await?;
    Ok(LinkedUser {
        key: factors::link_key(&resource, policy.link_by),
        by: policy.link_by,
        deleted_at,
    })
}

async fn user_factors(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    let user_id = path_id(&path)?;
    let tenant = admin.tenant();
    // A deleted user's factors stay listed (revoked): evidence of what deletion did.
    let LinkedUser {
        key,
        by,
        deleted_at,
    } = user_link_key(&state, tenant, user_id, true).await?;
    let Some(key) = key else {
        return Ok(ok(json!({
            "userId": user_id,
            "linkKey": null,
            "linkBy": by.as_str(),
            "deletedAt": deleted_at,
            "factors": [],
            "sessions": [],
        })));
    };
    let list = factors::list(&state.db, tenant, &key).await?;
    let sessions = factors::list_sessions(&state.db, tenant, &key).await?;
    let requirements = factors::list_requirements(&state.db, tenant, &key).await?;
    Ok(ok(json!({
        "userId": user_id,
        "linkKey": key,
        "linkBy": by.as_str(),
        "deletedAt": deleted_at,
        "factors": list,
        "sessions": sessions,
        "requirements": requirements,
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EnrollBody {
    #[serde(rename = "type")]
    factor_type: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    credential_id: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    destination: Option<String>,
}

fn material(body: &EnrollBody) -> Result<EnrollMaterial, AdminError> {
    match (&body.credential_id, &body.public_key, &body.destination) {
        (None, None, None) => Ok(EnrollMaterial::None),
        (Some(c), Some(p), None) => Ok(EnrollMaterial::Webauthn {
            credential_id: c.clone(),
            public_key: p.clone(),
        }),
        (None, None, Some(d)) => Ok(EnrollMaterial::Destination { value: d.clone() }),
        (Some(_), None, None) | (None, Some(_), None) => Err(AdminError::Invalid(
            "credentialId and publicKey go together".into(),
        )),
        _ => Err(AdminError::Invalid(
            "give either credentialId with publicKey, or destination".into(),
        )),
    }
}

async fn enroll_factor(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    require_write(&admin)?;
    let user_id = path_id(&path)?.to_string();
    let body: EnrollBody = parse_json(&read_body(&req, payload).await?)?;
    let factor_type: FactorType = body.factor_type.parse().map_err(AdminError::Invalid)?;
    let m = material(&body)?;
    let tenant = admin.tenant().to_string();
    // No enrolling for a deleted user: 404.
    let LinkedUser { key, by, .. } = user_link_key(&state, &tenant, &user_id, false).await?;
    let key = key.ok_or_else(|| {
        AdminError::Conflict(format!(
            "the user has no {} value, which the tenant's policy ([link] by) uses to find them \
             in the factor store",
            by.as_str()
        ))
    })?;
    let by = factors::AuditedBy {
        actor: audit_actor(&admin),
        subject: Some(user_id.clone()),
    };
    let enrolled = factors::enroll_audited(
        &state.db,
        &state.master_key,
        &tenant,
        &key,
        factor_type,
        body.label,
        m,
        by,
    )
    .await?;
    let mut body = to_json(&enrolled)?;
    body["userId"] = json!(user_id);
    Ok(no_store(StatusCode::CREATED, body))
}

async fn revoke_factor(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    require_write(&admin)?;
    let factor_id = path_id(&path)?.to_string();
    let tenant = admin.tenant().to_string();
    let by = factors::AuditedBy {
        actor: audit_actor(&admin),
        subject: None,
    };
    let (factor, changed) = factors::revoke_by_id_audited(&state.db, &tenant, &factor_id, by)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no factor with id {factor_id:?}")))?;
    if changed {
        notify::nudge();
    }
    let mut body = to_json(&factor)?;
    body["changed"] = json!(changed);
    Ok(ok(body))
}

// ---------------------------------------------------------------------------------------------
// Jobs.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    state: Option<String>,
    kind: Option<String>,
    user: Option<String>,
    limit: Option<i64>,
}

async fn list_jobs(state: web::Data<AppState>, admin: AdminPrincipal, req: HttpRequest) -> Res {
    let q: JobsQuery = parse_query(&req)?;
    use crate::jobs::states;
    if let Some(s) = &q.state {
        if ![states::PENDING, states::RUNNING, states::DONE, states::DEAD].contains(&s.as_str()) {
            return Err(AdminError::Invalid(
                "state must be one of pending, running, done, dead".into(),
            ));
        }
    }
    let filter = crate::jobs::JobFilter {
        tenant_id: Some(admin.tenant().to_string()),
        state: q.state,
        kind: q.kind,
        user_id: q.user,
    };
    let jobs = crate::jobs::list(&state.db, &filter, limit(q.limit)?).await?;
    Ok(ok(json!({ "jobs": jobs })))
}

async fn get_job(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    let id = path_id(&path)?;
    let job = crate::jobs::get(&state.db, admin.tenant(), id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no job with id {id:?}")))?;
    Ok(ok(to_json(&job)?))
}

async fn retry_job(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    require_write(&admin)?;
    let id = path_id(&path)?;
    let tenant = admin.tenant();
    // jobs::retry audits the retry in its own transaction.
    let retried = crate::jobs::retry(&state.db, tenant, id, audit_actor(&admin)).await?;
    let job = crate::jobs::get(&state.db, tenant, id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no job with id {id:?}")))?;
    if !retried {
        return Err(AdminError::Conflict(format!(
            "the job is {}; only dead jobs can be retried",
            job.state
        )));
    }
    Ok(ok(to_json(&job)?))
}

// ---------------------------------------------------------------------------------------------
// Guard.

async fn guard_status(state: web::Data<AppState>, admin: AdminPrincipal) -> Res {
    let status = crate::engine::guard::status(&state.db, admin.tenant()).await?;
    Ok(ok(to_json(&status)?))
}

async fn guard_release(state: web::Data<AppState>, admin: AdminPrincipal) -> Res {
    require_write(&admin)?;
    // Audited inside, with the converge jobs of the released users.
    let r = crate::engine::guard::release(&state.db, admin.tenant(), audit_actor(&admin)).await?;
    crate::jobs::nudge();
    Ok(ok(to_json(&r)?))
}

async fn guard_discard(state: web::Data<AppState>, admin: AdminPrincipal) -> Res {
    require_write(&admin)?;
    let r = crate::engine::guard::discard(&state.db, admin.tenant(), audit_actor(&admin)).await?;
    Ok(ok(to_json(&r)?))
}

// ---------------------------------------------------------------------------------------------
// Offboardings.

async fn list_offboardings(state: web::Data<AppState>, admin: AdminPrincipal) -> Res {
    let list = offboarding::list(&state.db, admin.tenant()).await?;
    Ok(ok(json!({ "offboardings": list })))
}

async fn get_offboarding(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    let id = path_id(&path)?;
    let o = offboarding::get(&state.db, admin.tenant(), id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no offboarding with id {id:?}")))?;
    Ok(ok(to_json(&o)?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OffboardBody {
    user_name: String,
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    ticket: Option<String>,
}

async fn create_offboarding(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    require_write(&admin)?;
    let body: OffboardBody = parse_json(&read_body(&req, payload).await?)?;
    if body.user_name.trim().is_empty() {
        return Err(AdminError::Invalid("userName is required".into()));
    }
    let at = match body.at.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|_| {
                    AdminError::Invalid(
                        "at must be an RFC 3339 time with a zone, e.g. 2024-05-01T17:00:00Z".into(),
                    )
                })?
                .with_timezone(&Utc),
        ),
    };
    // offboarding::schedule audits it in the same transaction as the job.
    let o = offboarding::schedule(
        &state.db,
        &admin.actor(),
        admin.tenant(),
        body.user_name.trim(),
        at,
        body.reason,
        body.ticket,
    )
    .await?;
    Ok(no_store(StatusCode::CREATED, to_json(&o)?))
}

async fn cancel_offboarding(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    require_write(&admin)?;
    let id = path_id(&path)?;
    let o = offboarding::cancel(&state.db, &admin.actor(), admin.tenant(), id).await?;
    Ok(ok(to_json(&o)?))
}

// ---------------------------------------------------------------------------------------------
// Audit.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    user: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    after: Option<i64>,
}

async fn list_audit(state: web::Data<AppState>, admin: AdminPrincipal, req: HttpRequest) -> Res {
    let q: AuditQuery = parse_query(&req)?;
    let filter = audit::ListFilter {
        subject: q.user.filter(|s| !s.is_empty()),
        kind_prefix: q.kind.filter(|s| !s.is_empty()),
        since: q
            .since
            .as_deref()
            .map(|s| parse_time("since", s))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|s| parse_time("until", s))
            .transpose()?,
    };
    let n = limit(q.limit)?;
    if q.after.is_some_and(|a| a < 0) {
        return Err(AdminError::Invalid(
            "after must be a sequence number (≥ 0)".into(),
        ));
    }
    let entries = audit::list(&state.db, admin.tenant(), &filter, n, q.after).await?;
    // A full page may have more after it: its last seq is the cursor.
    let next = if entries.len() as i64 == n {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(ok(json!({ "entries": entries, "next": next })))
}

// ---------------------------------------------------------------------------------------------
// Webhooks.

async fn list_webhooks(state: web::Data<AppState>, admin: AdminPrincipal) -> Res {
    let subs = notify::list_subscriptions(&state.db, admin.tenant()).await?;
    Ok(ok(json!({ "webhooks": subs })))
}

async fn get_webhook(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    let id = path_id(&path)?;
    let tenant = admin.tenant();
    let sub = notify::get_subscription(&state.db, tenant, id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no webhook with id {id:?}")))?;
    let deliveries = notify::list_deliveries(&state.db, tenant, id, 50).await?;
    let mut body = to_json(&sub)?;
    body["recentDeliveries"] = to_json(&deliveries)?;
    Ok(ok(body))
}

async fn create_webhook(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    require_write(&admin)?;
    let new: NewSubscription = parse_json(&read_body(&req, payload).await?)?;
    let valid = notify::validate_subscription(new).map_err(|e| match e {
        notify::NotifyError::Invalid(m) => AdminError::Invalid(m),
        other => AdminError::internal(&other),
    })?;
    let secret = valid.secret.clone();
    let key = state.master_key.clone();
    let actor = audit_actor(&admin);
    let tenant = admin.tenant().to_string();
    let sub = state
        .db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                let sub = notify::create_subscription(conn, &key, &tenant, &valid).await?;
                let detail = json!({
                    "webhook_id": sub.id, "url": sub.url, "event_types": sub.event_types,
                    "description": sub.description,
                });
                audit::append(
                    conn,
                    &tenant,
                    AuditEntry::new("webhook.created", actor, None, detail),
                )
                .await?;
                Ok::<_, StoreError>(sub)
            })
        })
        .await?;
    let mut body = to_json(&sub)?;
    // Shown now and never again.
    body["secret"] = json!(secret);
    Ok(no_store(StatusCode::CREATED, body))
}

async fn delete_webhook(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    require_write(&admin)?;
    let id = path_id(&path)?.to_string();
    let actor = audit_actor(&admin);
    let tenant = admin.tenant().to_string();
    let id2 = id.clone();
    let deleted = state
        .db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                if !notify::delete_subscription(conn, &tenant, &id2).await? {
                    return Ok::<_, StoreError>(false);
                }
                let detail = json!({ "webhook_id": id2 });
                audit::append(
                    conn,
                    &tenant,
                    AuditEntry::new("webhook.deleted", actor, None, detail),
                )
                .await?;
                Ok(true)
            })
        })
        .await?;
    if !deleted {
        return Err(AdminError::NotFound(format!("no webhook with id {id:?}")));
    }
    Ok(HttpResponse::NoContent().finish())
}

async fn ping_webhook(
    state: web::Data<AppState>,
    admin: AdminPrincipal,
    path: web::Path<String>,
) -> Res {
    require_write(&admin)?;
    let id = path_id(&path)?.to_string();
    let actor = audit_actor(&admin);
    let tenant = admin.tenant().to_string();
    let id2 = id.clone();
    let event = state
        .db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                let Some(event_id) = notify::enqueue_ping(conn, &tenant, &id2).await? else {
                    return Ok::<_, StoreError>(None);
                };
                let detail = json!({ "webhook_id": id2, "event_id": event_id });
                audit::append(
                    conn,
                    &tenant,
                    AuditEntry::new("webhook.pinged", actor, None, detail),
                )
                .await?;
                Ok(Some(event_id))
            })
        })
        .await?;
    let Some(event_id) = event else {
        return Err(AdminError::NotFound(format!(
            "no enabled webhook with id {id:?}"
        )));
    };
    notify::nudge();
    Ok(no_store(
        StatusCode::ACCEPTED,
        json!({ "eventId": event_id }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    fn body_json(e: &AdminError) -> (u16, Value) {
        let res = e.error_response();
        let status = res.status().as_u16();
        let bytes = res.into_body().try_into_bytes().unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[test]
    fn errors_have_status_code_and_message() {
        let cases = [
            (AdminError::Invalid("bad".into()), 400, "invalid"),
            (AdminError::Forbidden("no".into()), 403, "forbidden"),
            (AdminError::NotFound("gone".into()), 404, "not_found"),
            (AdminError::MethodNotAllowed, 405, "method_not_allowed"),
            (AdminError::Conflict("c".into()), 409, "conflict"),
            (AdminError::TooLarge, 413, "too_large"),
            (
                AdminError::UnsupportedMediaType("x".into()),
                415,
                "unsupported_media_type",
            ),
            (AdminError::Unavailable("later".into()), 503, "unavailable"),
            (AdminError::Internal, 500, "internal"),
        ];
        for (e, status, code) in cases {
            let (s, v) = body_json(&e);
            assert_eq!(s, status, "{e:?}");
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn policy_errors_keep_their_lines() {
        let e: AdminError = PolicyStoreError::Invalid(vec![
            crate::policy::PolicyError {
                line: 3,
                column: 7,
                message: "unknown key".into(),
            },
            crate::policy::PolicyError {
                line: 9,
                column: 1,
                message: "bad duration".into(),
            },
        ])
        .into();
        let (s, v) = body_json(&e);
        assert_eq!(s, 400);
        assert_eq!(v["error"]["code"], "invalid");
        assert!(v["error"]["message"].as_str().unwrap().contains("2 errors"));
        assert_eq!(
            v["error"]["details"][0],
            json!({"line": 3, "column": 7, "message": "unknown key"})
        );
        assert_eq!(v["error"]["details"][1]["line"], 9);
    }

    #[test]
    fn store_errors_map_to_unavailable_or_internal() {
        let (s, _) = body_json(&StoreError::Closed.into());
        assert_eq!(s, 503);
        let (s, _) = body_json(&StoreError::Aborted("disk".into()).into());
        assert_eq!(s, 503);
        let (s, v) = body_json(&StoreError::Config("secret detail".into()).into());
        assert_eq!(s, 500);
        assert!(
            !v.to_string().contains("secret detail"),
            "causes are logged, not shown"
        );
    }

    #[test]
    fn times_and_limits() {
        assert_eq!(
            parse_time("since", "2024-05-01").unwrap(),
            "2024-05-01T00:00:00.000000Z"
        );
        assert_eq!(
            parse_time("since", "2024-05-01T14:00:00+02:00").unwrap(),
            "2024-05-01T12:00:00.000000Z"
        );
        assert!(parse_time("since", "yesterday").is_err());
        assert!(parse_time("since", "2024-13-01").is_err());
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some(1000)).unwrap(), 1000);
        assert!(limit(Some(0)).is_err() && limit(Some(1001)).is_err() && limit(Some(-5)).is_err());
    }

    #[test]
    fn json_bodies() {
        assert!(matches!(
            parse_json::<PolicyBody>(b""),
            Err(AdminError::Invalid(_))
        ));
        assert!(matches!(
            parse_json::<PolicyBody>(b"{not json"),
            Err(AdminError::Invalid(_))
        ));
        assert!(matches!(
            parse_json::<PolicyBody>(br#"{"policy": "x", "extra": 1}"#),
            Err(AdminError::Invalid(_))
        ));
        assert_eq!(
            parse_json::<PolicyBody>(br#"{"policy": "x"}"#)
                .unwrap()
                .policy,
            "x"
        );
        let b: EnrollBody = parse_json(br#"{"type": "webauthn", "credentialId": "c"}"#).unwrap();
        assert!(material(&b).is_err());
        let b: EnrollBody =
            parse_json(br#"{"type": "webauthn", "credentialId": "c", "publicKey": "k"}"#).unwrap();
        assert!(matches!(material(&b), Ok(EnrollMaterial::Webauthn { .. })));
        let b: EnrollBody = parse_json(br#"{"type": "sms", "destination": "+1555"}"#).unwrap();
        assert!(matches!(
            material(&b),
            Ok(EnrollMaterial::Destination { .. })
        ));
        let b: EnrollBody =
            parse_json(br#"{"type": "sms", "destination": "+1555", "publicKey": "k"}"#).unwrap();
        assert!(material(&b).is_err());
    }
}

/// The admin API over HTTP (actix's test service, the real routes and extractor), on SQLite and
/// (with `DEPROVD_TEST_PG`) PostgreSQL: auth and read-only tokens, errors, webhooks, policy.
#[cfg(test)]
mod http_tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use actix_web::dev::ServiceResponse;
    use actix_web::{test, App};

    use super::*;
    use crate::auth::{generate_token, Authenticator, Scope};
    use crate::config::{Config, Sources};
    use crate::directory::Directory;
    use crate::factors::crypto::{KeySource, MasterKey};
    use crate::store::testing::fresh_dbs;
    use crate::store::Db;

    struct Fixture {
        state: web::Data<AppState>,
        tenant: String,
        admin: String,
        auditor: String,
        /// An admin token of another tenant.
        other: String,
    }

    async fn tenant_with_tokens(db: &Db, name: &str) -> (String, String, String) {
        let name = name.to_string();
        let (admin, admin_hash) = generate_token(Scope::Admin);
        let (auditor, auditor_hash) = generate_token(Scope::Auditor);
        let tenant = db
            .write(move |conn: &mut AnyConnection| {
                Box::pin(async move {
                    use crate::store::tenants::{create_tenant, insert_token, TenantError};
                    let t = create_tenant(conn, &name).await?;
                    insert_token(conn, &t.id, Scope::Admin, "ops", &admin_hash).await?;
                    insert_token(conn, &t.id, Scope::Auditor, "audit", &auditor_hash).await?;
                    Ok::<_, TenantError>(t.id)
                })
            })
            .await
            .unwrap();
        (tenant, admin, auditor)
    }

    async fn fixture(db: Db) -> Fixture {
        let (tenant, admin, auditor) = tenant_with_tokens(&db, "acme").await;
        let (_, other, _) = tenant_with_tokens(&db, "globex").await;
        let config = Config::load_from(&Sources::default(), &BTreeMap::new()).unwrap();
        let state = web::Data::new(AppState {
            directory: Directory::new(db.clone()),
            auth: Authenticator::new(db.clone(), reqwest::Client::new()),
            config: Arc::new(config),
            master_key: Arc::new(MasterKey::generate(KeySource::Ephemeral)),
            metrics: Arc::default(),
            db,
        });
        Fixture {
            state,
            tenant,
            admin,
            auditor,
            other,
        }
    }

    /// Sends `req` to `app`; (status, JSON body or null). A macro: actix's request type is not
    /// nameable without depending on actix-http.
    macro_rules! call {
        ($app:expr, $req:expr $(,)?) => {{
            let res: ServiceResponse = test::call_service($app, $req.to_request()).await;
            let status = res.status().as_u16();
            let bytes = test::read_body(res).await;
            let v: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            (status, v)
        }};
    }

    fn get(path: &str, token: &str) -> test::TestRequest {
        test::TestRequest::get()
            .uri(path)
            .insert_header(("authorization", format!("Bearer {token}")))
    }

    fn post(path: &str, token: &str, body: &str) -> test::TestRequest {
        test::TestRequest::post()
            .uri(path)
            .insert_header(("authorization", format!("Bearer {token}")))
            .insert_header(("content-type", "application/json"))
            .set_payload(body.to_string())
    }

    #[actix_web::test]
    async fn auth_errors_and_routing() {
        for db in fresh_dbs().await {
            let f = fixture(db).await;
            let app =
                test::init_service(App::new().app_data(f.state.clone()).configure(routes)).await;
            let (s, v) = call!(&app, test::TestRequest::get().uri("/admin/v1/webhooks"));
            assert_eq!(s, 401, "{v}");
            assert_eq!(v["error"]["code"], "unauthorized");
            // auditor: reads yes, writes no
            let (s, _) = call!(&app, get("/admin/v1/webhooks", &f.auditor));
            assert_eq!(s, 200);
            let (s, v) = call!(
                &app,
                post(
                    "/admin/v1/webhooks",
                    &f.auditor,
                    r#"{"url":"https://x.example"}"#
                )
            );
            assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
            // unknown endpoint, wrong method
            let (s, v) = call!(&app, get("/admin/v1/nope", &f.admin));
            assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
            let req = test::TestRequest::patch()
                .uri("/admin/v1/webhooks")
                .insert_header(("authorization", format!("Bearer {}", f.admin)));
            let (s, v) = call!(&app, req);
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (405, Some("method_not_allowed"))
            );
            // malformed and oversized bodies
            let (s, v) = call!(&app, post("/admin/v1/webhooks", &f.admin, "{nope"));
            assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid")));
            let big = format!(r#"{{"url":"https://x.example/{}"}}"#, "a".repeat(MAX_BODY));
            let (s, v) = call!(&app, post("/admin/v1/webhooks", &f.admin, &big));
            assert_eq!((s, v["error"]["code"].as_str()), (413, Some("too_large")));
            // bad query parameters
            let (s, _) = call!(&app, get("/admin/v1/jobs?state=bogus", &f.admin));
            assert_eq!(s, 400);
            let (s, _) = call!(&app, get("/admin/v1/jobs?color=red", &f.admin));
            assert_eq!(s, 400);
            let (s, v) = call!(&app, get("/admin/v1/jobs?state=dead", &f.auditor));
            assert_eq!(s, 200);
            assert!(v["jobs"].as_array().is_some_and(|j| j.is_empty()));
            let (s, _) = call!(&app, get("/admin/v1/audit?since=yesterday", &f.admin));
            assert_eq!(s, 400);
            let (s, v) = call!(&app, get("/admin/v1/guard", &f.auditor));
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["tripped"], false);
            let (s, v) = call!(&app, post("/admin/v1/jobs/nope/retry", &f.admin, ""));
            assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
            let (s, v) = call!(
                &app,
                post(
                    "/admin/v1/offboardings",
                    &f.admin,
                    r#"{"userName":"ghost"}"#
                )
            );
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (404, Some("not_found")),
                "{v}"
            );
            let (s, v) = call!(&app, get("/admin/v1/users/nobody/factors", &f.admin));
            assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
        }
    }

    #[actix_web::test]
    async fn webhooks_lifecycle_audited_and_tenant_scoped() {
        for db in fresh_dbs().await {
            let f = fixture(db).await;
            let app =
                test::init_service(App::new().app_data(f.state.clone()).configure(routes)).await;
            let (s, v) = call!(
                &app,
                post(
                    "/admin/v1/webhooks",
                    &f.admin,
                    r#"{"url":"ftp://x.example","eventTypes":[]}"#,
                ),
            );
            assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid")));
            let (s, v) = call!(
                &app,
                post(
                    "/admin/v1/webhooks",
                    &f.admin,
                    r#"{"url":"https://hooks.example.com/in","eventTypes":["factor_revoked"]}"#,
                ),
            );
            assert_eq!(s, 201, "{v}");
            let secret = v["secret"].as_str().unwrap().to_string();
            assert!(secret.starts_with("whsec_"));
            let id = v["id"].as_str().unwrap().to_string();
            assert_eq!(v["eventTypes"], json!(["factor_revoked"]));

            let (s, v) = call!(&app, get("/admin/v1/webhooks", &f.auditor));
            assert_eq!(s, 200);
            assert_eq!(v["webhooks"].as_array().map(Vec::len), Some(1));
            assert!(
                !v.to_string().contains(&secret),
                "the secret is shown once only"
            );
            let (s, v) = call!(&app, get(&format!("/admin/v1/webhooks/{id}"), &f.admin));
            assert_eq!(s, 200);
            assert!(!v.to_string().contains(&secret));
            assert!(v["recentDeliveries"]
                .as_array()
                .is_some_and(|d| d.is_empty()));

            // another tenant sees none of it
            let (_, v) = call!(&app, get("/admin/v1/webhooks", &f.other));
            assert_eq!(v["webhooks"], json!([]));
            let (s, _) = call!(&app, get(&format!("/admin/v1/webhooks/{id}"), &f.other));
            assert_eq!(s, 404);
            let req = test::TestRequest::delete()
                .uri(&format!("/admin/v1/webhooks/{id}"))
                .insert_header(("authorization", format!("Bearer {}", f.other)));
            assert_eq!(call!(&app, req).0, 404);

            let (s, v) = call!(
                &app,
                post(&format!("/admin/v1/webhooks/{id}/ping"), &f.admin, "")
            );
            assert_eq!(s, 202, "{v}");
            let (_, v) = call!(&app, get(&format!("/admin/v1/webhooks/{id}"), &f.admin));
            assert_eq!(v["recentDeliveries"][0]["eventType"], "ping");
            assert_eq!(v["deliveries"]["pending"], 1);

            let del = || {
                test::TestRequest::delete()
                    .uri(&format!("/admin/v1/webhooks/{id}"))
                    .insert_header(("authorization", format!("Bearer {}", f.admin)))
            };
            assert_eq!(call!(&app, del()).0, 204);
            assert_eq!(call!(&app, del()).0, 404);

            let (s, v) = call!(&app, get("/admin/v1/audit?kind=webhook.", &f.auditor));
            assert_eq!(s, 200, "{v}");
            let kinds: Vec<&str> = v["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["kind"].as_str())
                .collect();
            assert_eq!(
                kinds,
                vec!["webhook.created", "webhook.pinged", "webhook.deleted"]
            );
            assert!(
                !v.to_string().contains(&secret),
                "the secret never reaches the audit log"
            );
            // paging: one at a time with the cursor
            let (_, p1) = call!(&app, get("/admin/v1/audit?kind=webhook.&limit=1", &f.admin));
            let next = p1["next"].as_i64().unwrap();
            let (_, p2) = call!(
                &app,
                get(
                    &format!("/admin/v1/audit?kind=webhook.&limit=1&after={next}"),
                    &f.admin,
                ),
            );
            assert_eq!(p2["entries"][0]["kind"], "webhook.pinged");
        }
    }

    #[actix_web::test]
    async fn policy_put_get_versions() {
        for db in fresh_dbs().await {
            let f = fixture(db).await;
            let app =
                test::init_service(App::new().app_data(f.state.clone()).configure(routes)).await;
            let (s, v) = call!(&app, get("/admin/v1/policy", &f.auditor));
            assert_eq!(s, 200);
            assert!(v["version"].is_null());
            let put = |token: &str, ct: &str, body: &str| {
                test::TestRequest::put()
                    .uri("/admin/v1/policy")
                    .insert_header(("authorization", format!("Bearer {token}")))
                    .insert_header(("content-type", ct.to_string()))
                    .set_payload(body.to_string())
            };
            let bad = "mode = \"enforce\"\n\n[deactivated]\nfactors = \"explode\"\n";
            let (s, v) = call!(&app, put(&f.admin, "application/toml", bad));
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (400, Some("invalid")),
                "{v}"
            );
            assert_eq!(v["error"]["details"][0]["line"], 4, "{v}");
            let (s, _) = call!(&app, put(&f.auditor, "text/plain", "mode = \"enforce\"\n"));
            assert_eq!(s, 403);
            let (s, _) = call!(&app, put(&f.admin, "image/png", "mode = \"enforce\"\n"));
            assert_eq!(s, 415);
            let good = "mode = \"audit-only\"\n";
            let (s, v) = call!(&app, put(&f.admin, "text/plain", good));
            assert_eq!(s, 200, "{v}");
            assert_eq!(
                (v["version"].as_i64(), v["changed"].as_bool()),
                (Some(1), Some(true))
            );
            let json_body = serde_json::to_string(&json!({ "policy": good })).unwrap();
            let (s, v) = call!(&app, put(&f.admin, "application/json", &json_body));
            assert_eq!(s, 200);
            assert_eq!(
                (v["version"].as_i64(), v["changed"].as_bool()),
                (Some(1), Some(false))
            );
            let (_, v) = call!(&app, get("/admin/v1/policy", &f.auditor));
            assert_eq!(
                (v["version"].as_i64(), v["mode"].as_str()),
                (Some(1), Some("audit-only"))
            );
            assert_eq!(v["text"], good);
            let (_, v) = call!(&app, get("/admin/v1/policy/versions", &f.auditor));
            assert_eq!(v["versions"].as_array().map(Vec::len), Some(1));
            let (_, v) = call!(&app, get("/admin/v1/audit?kind=policy.set", &f.auditor));
            assert_eq!(v["entries"].as_array().map(Vec::len), Some(1));
        }
    }

    #[actix_web::test]
    async fn factors_offboardings_and_jobs() {
        for db in fresh_dbs().await {
            let f = fixture(db).await;
            let app =
                test::init_service(App::new().app_data(f.state.clone()).configure(routes)).await;
            let user = json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "Alice@Example.com",
                "active": true,
            });
            let actor = crate::directory::Actor::system(f.tenant.clone());
            let uid = f
                .state
                .directory
                .create_user(&actor, user)
                .await
                .unwrap()
                .id;
            let path = format!("/admin/v1/users/{uid}/factors");

            let (s, _) = call!(&app, post(&path, &f.auditor, r#"{"type":"totp"}"#));
            assert_eq!(s, 403);
            let (s, v) = call!(&app, post(&path, &f.admin, r#"{"type":"bogus"}"#));
            assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid")));
            let (s, v) = call!(
                &app,
                post(&path, &f.admin, r#"{"type":"totp","label":"phone"}"#)
            );
            assert_eq!(s, 201, "{v}");
            assert!(v["otpauthUri"]
                .as_str()
                .is_some_and(|u| u.starts_with("otpauth://totp/")));
            assert_eq!(v["factor"]["status"], "active");
            let fid = v["factor"]["id"].as_str().unwrap().to_string();

            let (s, v) = call!(&app, get(&path, &f.auditor));
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["linkKey"], "alice@example.com");
            assert_eq!(v["factors"].as_array().map(Vec::len), Some(1));
            assert!(v["factors"][0].get("lastUsed").is_some());
            assert!(
                !v.to_string().contains("otpauth"),
                "the URI is shown once only"
            );

            let revoke = format!("/admin/v1/factors/{fid}/revoke");
            let (s, _) = call!(&app, post(&revoke, &f.other, ""));
            assert_eq!(s, 404, "another tenant's factor is not found");
            let (s, v) = call!(&app, post(&revoke, &f.admin, ""));
            assert_eq!(s, 200, "{v}");
            assert_eq!(
                (v["status"].as_str(), v["changed"].as_bool()),
                (Some("revoked"), Some(true))
            );
            let (_, v) = call!(&app, post(&revoke, &f.admin, ""));
            assert_eq!(v["changed"], false, "revoking twice is a no-op");
            let (_, v) = call!(&app, get("/admin/v1/audit?kind=factor.", &f.auditor));
            let kinds: Vec<&str> = v["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["kind"].as_str())
                .collect();
            assert_eq!(kinds, vec!["factor.enrolled", "factor.revoked"]);

            // offboarding: scheduled in the future, listed, cancelled once
            let (s, _) = call!(
                &app,
                post(
                    "/admin/v1/offboardings",
                    &f.admin,
                    r#"{"userName":"alice@example.com","at":"tomorrow"}"#
                )
            );
            assert_eq!(s, 400);
            let (s, v) = call!(
                &app,
                post(
                    "/admin/v1/offboardings",
                    &f.admin,
                    r#"{"userName":"alice@example.com","at":"2999-01-01T00:00:00Z","reason":"left","ticket":"HR-1"}"#,
                )
            );
            assert_eq!(s, 201, "{v}");
            assert_eq!(v["state"], "scheduled");
            let oid = v["id"].as_str().unwrap().to_string();
            let (_, v) = call!(&app, get("/admin/v1/offboardings", &f.auditor));
            assert_eq!(v["offboardings"].as_array().map(Vec::len), Some(1));
            let (s, v) = call!(
                &app,
                get(&format!("/admin/v1/offboardings/{oid}"), &f.admin)
            );
            assert_eq!((s, v["ticket"].as_str()), (200, Some("HR-1")));
            let cancel = format!("/admin/v1/offboardings/{oid}/cancel");
            let (s, v) = call!(&app, post(&cancel, &f.admin, ""));
            assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{v}");
            let (s, v) = call!(&app, post(&cancel, &f.admin, ""));
            assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));

            // the offboarding's job is listed; it is not dead, so it cannot be retried
            let (s, v) = call!(&app, get("/admin/v1/jobs?kind=offboard", &f.auditor));
            assert_eq!(s, 200);
            let jid = v["jobs"][0]["id"].as_str().unwrap().to_string();
            let (s, v) = call!(
                &app,
                post(&format!("/admin/v1/jobs/{jid}/retry"), &f.admin, "")
            );
            assert_eq!(
                (s, v["error"]["code"].as_str()),
                (409, Some("conflict")),
                "{v}"
            );
            let (s, _) = call!(&app, get(&format!("/admin/v1/jobs/{jid}"), &f.other));
            assert_eq!(s, 404);
        }
    }
}
