//! Maps domain errors onto HTTP: SCIM errors become RFC 7644 §3.12 error bodies with
//! `application/scim+json`; authentication failures carry `WWW-Authenticate` or `Retry-After`.
//! Internal causes are logged with the request's span, never sent to the client.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::auth::AuthError;
use crate::scim::ScimError;

pub const SCIM_CONTENT_TYPE: &str = "application/scim+json";

#[derive(Debug)]
pub enum ScimHttpError {
    Scim(ScimError),
    /// 401 / 403 / 429 / 503 from authentication.
    Auth(AuthError),
}

impl std::fmt::Display for ScimHttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScimHttpError::Scim(e) => write!(f, "{e}"),
            ScimHttpError::Auth(e) => write!(f, "{e}"),
        }
    }
}

impl From<ScimError> for ScimHttpError {
    fn from(e: ScimError) -> Self {
        ScimHttpError::Scim(e)
    }
}

impl From<crate::directory::DirError> for ScimHttpError {
    fn from(e: crate::directory::DirError) -> Self {
        let scim: ScimError = e.into();
        ScimHttpError::Scim(scim)
    }
}

impl From<AuthError> for ScimHttpError {
    fn from(e: AuthError) -> Self {
        ScimHttpError::Auth(e)
    }
}

/// The SCIM error for an authentication failure (detail safe to show: it never echoes a token).
pub fn auth_scim_error(e: &AuthError) -> ScimError {
    match e {
        AuthError::Missing => ScimError::new(401, None, "authentication required: send Authorization: Bearer <token>"),
        AuthError::Invalid(detail) => ScimError::new(401, None, format!("invalid credentials: {detail}")),
        AuthError::WrongScope => ScimError::new(403, None, "this token's scope does not allow this endpoint"),
        AuthError::TooManyAttempts { retry_after_secs } => {
            ScimError::new(429, None, format!("too many failed authentication attempts from this address; retry after {retry_after_secs} s"))
        }
        AuthError::Unavailable(detail) => ScimError::new(503, None, format!("authentication unavailable: {detail}")),
    }
}

/// Adds the headers an authentication failure needs to any response builder.
pub fn auth_headers(e: &AuthError, res: &mut actix_web::HttpResponseBuilder) {
    match e {
        AuthError::Missing => {
            res.insert_header(("WWW-Authenticate", "Bearer realm=\"deprovd\""));
        }
        AuthError::Invalid(_) => {
            res.insert_header((
                "WWW-Authenticate",
                "Bearer realm=\"deprovd\", error=\"invalid_token\"",
            ));
        }
        AuthError::TooManyAttempts { retry_after_secs } => {
            res.insert_header(("Retry-After", retry_after_secs.to_string()));
        }
        _ => {}
    }
}

pub fn scim_error_response(e: &ScimError) -> HttpResponse {
    if e.status >= 500 {
        tracing::error!(detail = %e.detail, "internal error");
    }
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .content_type(SCIM_CONTENT_TYPE)
        .body(e.to_json().to_string())
}

impl ResponseError for ScimHttpError {
    fn status_code(&self) -> StatusCode {
        let code = match self {
            ScimHttpError::Scim(e) => e.status,
            ScimHttpError::Auth(e) => auth_scim_error(e).status,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ScimHttpError::Scim(e) => scim_error_response(e),
            ScimHttpError::Auth(a) => {
                let e = auth_scim_error(a);
                let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED);
                let mut res = HttpResponse::build(status);
                auth_headers(a, &mut res);
                res.content_type(SCIM_CONTENT_TYPE)
                    .body(e.to_json().to_string())
            }
        }
    }
}
