//! actix extractors that authenticate a request for one API: `ScimPrincipal` for `/scim/v2`
//! (SCIM tokens and OAuth JWTs) and `AdminPrincipal` for `/admin/v1` (admin and auditor
//! tokens). The checks themselves live in `crate::auth`; this only adapts them to HTTP.

use std::future::Future;
use std::pin::Pin;

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};

use super::error::ScimHttpError;
use super::{AppState, RequestMeta};
use crate::auth::{AuthError, Principal, Scope};
use crate::directory::{Actor, ActorKind};

fn authorization(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn authenticate(
    req: HttpRequest,
    scopes: &'static [Scope],
) -> Result<(Principal, RequestMeta), AuthError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| AuthError::Unavailable("application state missing".into()))?;
    let meta = RequestMeta::of(&req);
    let header = authorization(&req);
    let principal = state
        .auth
        .authenticate(header.as_deref(), meta.client_ip, scopes)
        .await?;
    Ok((principal, meta))
}

/// Who did it, for lifecycle rows and the audit log.
pub fn actor_for(principal: &Principal, meta: &RequestMeta) -> Actor {
    let kind = if principal.via_jwt {
        ActorKind::Jwt
    } else {
        match principal.scope {
            Scope::Scim => ActorKind::ScimToken,
            _ => ActorKind::AdminToken,
        }
    };
    Actor {
        tenant_id: principal.tenant_id.clone(),
        kind,
        id: principal.token_id.clone(),
        name: principal.token_name.clone(),
        client_ip: Some(meta.client_ip.to_string()),
        request_id: Some(meta.request_id.clone()),
    }
}

/// A request authenticated for SCIM provisioning.
pub struct ScimPrincipal {
    pub principal: Principal,
    pub meta: RequestMeta,
}

impl ScimPrincipal {
    pub fn tenant(&self) -> &str {
        &self.principal.tenant_id
    }
    pub fn actor(&self) -> Actor {
        actor_for(&self.principal, &self.meta)
    }
}

impl FromRequest for ScimPrincipal {
    type Error = ScimHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let (principal, meta) = authenticate(req, &[Scope::Scim]).await?;
            Ok(ScimPrincipal { principal, meta })
        })
    }
}

/// A request authenticated with an admin (read/write) or auditor (read-only) token.
pub struct AdminPrincipal {
    pub principal: Principal,
    pub meta: RequestMeta,
}

impl AdminPrincipal {
    pub fn tenant(&self) -> &str {
        &self.principal.tenant_id
    }
    pub fn actor(&self) -> Actor {
        actor_for(&self.principal, &self.meta)
    }
    pub fn can_write(&self) -> bool {
        self.principal.scope == Scope::Admin
    }
}

/// Authentication failure on the admin API, answered in the admin API's JSON error shape.
#[derive(Debug)]
pub struct AdminAuthError(pub AuthError);

impl std::fmt::Display for AdminAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl actix_web::ResponseError for AdminAuthError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        let e = super::error::auth_scim_error(&self.0);
        actix_web::http::StatusCode::from_u16(e.status)
            .unwrap_or(actix_web::http::StatusCode::UNAUTHORIZED)
    }
    fn error_response(&self) -> actix_web::HttpResponse {
        let e = super::error::auth_scim_error(&self.0);
        let code = match e.status {
            401 => "unauthorized",
            403 => "forbidden",
            429 => "too_many_requests",
            _ => "unavailable",
        };
        let mut res = actix_web::HttpResponse::build(self.status_code());
        super::error::auth_headers(&self.0, &mut res);
        res.json(serde_json::json!({"error": {"code": code, "message": e.detail}}))
    }
}

impl FromRequest for AdminPrincipal {
    type Error = AdminAuthError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let (principal, meta) = authenticate(req, &[Scope::Admin, Scope::Auditor])
                .await
                .map_err(AdminAuthError)?;
            Ok(AdminPrincipal { principal, meta })
        })
    }
}
