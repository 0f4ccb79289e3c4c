//! The `/scim/v2` endpoints (RFC 7644): discovery, Users, Groups, `.search`, Bulk and `/Me`.
//! Handlers only adapt HTTP: read and bound the body, parse JSON, authenticate, then call the
//! protocol logic in `crate::scim` and the persistence in `crate::directory`, and render
//! `meta`, `Location` and `ETag`. The per-resource operations are plain functions so `/Bulk`
//! runs exactly the same code as the single-resource endpoints.

use std::collections::HashMap;

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

use super::auth::ScimPrincipal;
use super::error::{scim_error_response, ScimHttpError, SCIM_CONTENT_TYPE};
use super::AppState;
use crate::directory::{GroupRef, ListQuery, StoredResource};
use crate::scim::bulk;
use crate::scim::list::{self, ListParams};
use crate::scim::patch::{self, MemberChange};
use crate::scim::resource::{self, AttrSelection};
use crate::scim::schema::{ResourceKind, SchemaRegistry, GROUP_SCHEMA, USER_SCHEMA};
use crate::scim::ScimError;

type ScimResult<T> = Result<T, ScimHttpError>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/scim/v2")
            .route(
                "/ServiceProviderConfig",
                web::get().to(service_provider_config),
            )
            .route("/ResourceTypes", web::get().to(resource_types))
            .route("/ResourceTypes/{name}", web::get().to(resource_type))
            .route("/Schemas", web::get().to(schemas))
            .route("/Schemas/{urn}", web::get().to(schema))
            .route("/Users/.search", web::post().to(users_search))
            .route("/Groups/.search", web::post().to(groups_search))
            .route("/.search", web::post().to(root_search))
            .route("/Bulk", web::post().to(bulk_endpoint))
            .route("/Users", web::get().to(users_list))
            .route("/Users", web::post().to(users_create))
            .route("/Users/{id}", web::get().to(users_get))
            .route("/Users/{id}", web::put().to(users_replace))
            .route("/Users/{id}", web::patch().to(users_patch))
            .route("/Users/{id}", web::delete().to(users_delete))
            .route("/Groups", web::get().to(groups_list))
            .route("/Groups", web::post().to(groups_create))
            .route("/Groups/{id}", web::get().to(groups_get))
            .route("/Groups/{id}", web::put().to(groups_replace))
            .route("/Groups/{id}", web::patch().to(groups_patch))
            .route("/Groups/{id}", web::delete().to(groups_delete))
            // Known paths with a method they do not take: 405, not 404 (RFC 7644 §3.12).
            .route(
                "/ServiceProviderConfig",
                web::route().to(method_not_allowed),
            )
            .route("/ResourceTypes", web::route().to(method_not_allowed))
            .route("/ResourceTypes/{name}", web::route().to(method_not_allowed))
            .route("/Schemas", web::route().to(method_not_allowed))
            .route("/Schemas/{urn}", web::route().to(method_not_allowed))
            .route("/Users", web::route().to(method_not_allowed))
            .route("/Users/{id}", web::route().to(method_not_allowed))
            .route("/Groups", web::route().to(method_not_allowed))
            .route("/Groups/{id}", web::route().to(method_not_allowed))
            .route("/Bulk", web::route().to(method_not_allowed))
            .route("/.search", web::route().to(method_not_allowed))
            .route("/Me", web::route().to(me))
            .route("/Me/{tail:.*}", web::route().to(me))
            .default_service(web::route().to(not_found)),
    );
}

// ---------------------------------------------------------------------------------------------
// Request plumbing
// ---------------------------------------------------------------------------------------------

/// `https://host/scim/v2`: from `DEPROVD_PUBLIC_URL` when set, else from the request.
fn base_url(state: &AppState, req: &HttpRequest) -> String {
    match &state.config.public_url {
        Some(u) => format!("{u}/scim/v2"),
        None => {
            let info = req.connection_info();
            format!("{}://{}/scim/v2", info.scheme(), info.host())
        }
    }
}

fn query_map(req: &HttpRequest) -> Result<HashMap<String, String>, ScimError> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| ScimError::invalid_value(format!("the query string cannot be decoded: {e}")))
}

fn selection(req: &HttpRequest) -> Result<AttrSelection, ScimError> {
    let q = query_map(req)?;
    let get = |name: &str| {
        q.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    resource::parse_selection(get("attributes"), get("excludedAttributes"))
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ScimError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if ct.is_empty() || ct == "application/scim+json" || ct == "application/json" {
        Ok(())
    } else {
        Err(ScimError::new(
            415,
            None,
            format!(
                "unsupported Content-Type {ct:?}: send application/scim+json or application/json"
            ),
        ))
    }
}

/// Reads the body up to `limit` bytes (413 past it, checked against Content-Length first so an
/// oversized upload is refused before it is read) and parses it as JSON (400 invalidSyntax).
async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Value, ScimError> {
    check_content_type(req.headers())?;
    let too_large = || {
        ScimError::too_large(format!(
            "the request body is larger than the maxPayloadSize of {limit} bytes"
        ))
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ScimError::invalid_syntax(format!("the request body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        return Err(ScimError::invalid_syntax(
            "the request body is empty; a JSON object is required",
        ));
    }
    // serde_json refuses nesting deeper than 128 levels, so hostile nesting cannot exhaust the stack.
    serde_json::from_slice(&body)
        .map_err(|e| ScimError::invalid_syntax(format!("the request body is not valid JSON: {e}")))
}

fn max_payload() -> usize {
    SchemaRegistry::get().limits().bulk_max_payload as usize
}

fn if_match(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

fn scim_json(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(SCIM_CONTENT_TYPE)
        .body(body.to_string())
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

fn kind_name(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "User",
        ResourceKind::Group => "Group",
    }
}

fn endpoint(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "Users",
        ResourceKind::Group => "Groups",
    }
}

/// A resource with `id`, `schemas` and `meta` (and computed `groups` / `members`), before
/// projection.
struct Rendered {
    resource: Value,
    version: i64,
    location: String,
}

fn render(
    kind: ResourceKind,
    base: &str,
    stored: &StoredResource,
    computed: Option<(&str, Value)>,
) -> Rendered {
    let mut obj: Map<String, Value> = match &stored.resource {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut schemas = vec![json!(match kind {
        ResourceKind::User => USER_SCHEMA,
        ResourceKind::Group => GROUP_SCHEMA,
    })];
    for ext in SchemaRegistry::get().extensions(kind) {
        if obj.contains_key(&ext.id) {
            schemas.push(json!(ext.id));
        }
    }
    let location = format!("{base}/{}/{}", endpoint(kind), stored.id);
    obj.insert("schemas".into(), Value::Array(schemas));
    obj.insert("id".into(), json!(stored.id));
    if let Some((name, value)) = computed {
        obj.insert(name.into(), value);
    }
    obj.insert(
        "meta".into(),
        json!({
            "resourceType": kind_name(kind),
            "created": stored.created,
            "lastModified": stored.last_modified,
            "location": location,
            "version": etag(stored.version),
        }),
    );
    Rendered {
        resource: Value::Object(obj),
        version: stored.version,
        location,
    }
}

fn groups_json(base: &str, groups: &[GroupRef]) -> Value {
    Value::Array(
        groups
            .iter()
            .map(|g| {
                json!({
                    "value": g.value,
                    "$ref": format!("{base}/Groups/{}", g.value),
                    "display": g.display,
                    "type": if g.direct { "direct" } else { "indirect" },
                })
            })
            .collect(),
    )
}

/// Whether the answer will show `attr` (a top-level attribute with `returned: default`), so
/// computed attributes that cost a query (`groups`, `members`) are only loaded when shown.
fn wants(sel: &AttrSelection, attr: &str) -> bool {
    if !sel.attributes.is_empty() {
        sel.attributes.iter().any(|p| {
            p.attr.eq_ignore_ascii_case(attr)
                && p.urn.as_deref().is_none_or(|u| !u.contains("extension"))
        })
    } else {
        !sel.excluded
            .iter()
            .any(|p| p.attr.eq_ignore_ascii_case(attr) && p.sub_attr.is_none())
    }
}

struct Ctx<'a> {
    state: &'a AppState,
    who: &'a ScimPrincipal,
    base: String,
}

impl Ctx<'_> {
    fn tenant(&self) -> &str {
        self.who.tenant()
    }

    async fn load(
        &self,
        kind: ResourceKind,
        id: &str,
        sel: &AttrSelection,
    ) -> Result<Rendered, ScimError> {
        let dir = &self.state.directory;
        let stored = match kind {
            ResourceKind::User => dir.get_user(self.tenant(), id).await?,
            ResourceKind::Group => dir.get_group(self.tenant(), id).await?,
        }
        .ok_or_else(|| ScimError::not_found(format!("{} {id} not found", kind_name(kind))))?;
        self.finish(kind, stored, sel).await
    }

    /// Adds the computed attribute the answer shows (User.groups, Group.members).
    async fn finish(
        &self,
        kind: ResourceKind,
        stored: StoredResource,
        sel: &AttrSelection,
    ) -> Result<Rendered, ScimError> {
        let dir = &self.state.directory;
        let computed = match kind {
            ResourceKind::User if wants(sel, "groups") => {
                let groups = dir.user_groups(self.tenant(), &stored.id).await?;
                Some(("groups", groups_json(&self.base, &groups)))
            }
            ResourceKind::Group if wants(sel, "members") => {
                let members = dir.group_members(self.tenant(), &stored.id).await?;
                let list: Vec<Value> = members
                    .into_iter()
                    .map(|(id, member_type, display)| {
                        let mut m = json!({
                            "$ref": format!("{}/{}/{}", self.base, if member_type == "Group" { "Groups" } else { "Users" }, id),
                            "value": id,
                            "type": member_type,
                        });
                        // A reference the tenant cannot resolve has no display name.
                        if !display.is_empty() {
                            m["display"] = json!(display);
                        }
                        m
                    })
                    .collect();
                Some(("members", Value::Array(list)))
            }
            _ => None,
        };
        Ok(render(kind, &self.base, &stored, computed))
    }

    async fn create(
        &self,
        kind: ResourceKind,
        body: &Value,
        sel: &AttrSelection,
    ) -> Result<Rendered, ScimError> {
        let normalized = resource::validate_create(kind, body)?;
        let actor = self.who.actor();
        let dir = &self.state.directory;
        let stored = match kind {
            ResourceKind::User => dir.create_user(&actor, normalized.resource).await?,
            ResourceKind::Group => {
                dir.create_group(
                    &actor,
                    normalized.resource,
                    normalized.members.unwrap_or_default(),
                )
                .await?
            }
        };
        self.finish(kind, stored, sel).await
    }

    async fn replace(
        &self,
        kind: ResourceKind,
        id: &str,
        body: Value,
        if_match: Option<String>,
        sel: &AttrSelection,
    ) -> Result<Rendered, ScimError> {
        let actor = self.who.actor();
        let dir = &self.state.directory;
        let stored = match kind {
            ResourceKind::User => {
                let mutate = Box::new(move |current: &StoredResource| {
                    resource::validate_replace(kind, &body, &current.resource).map(|n| n.resource)
                });
                dir.update_user(&actor, self.tenant(), id, if_match, mutate)
                    .await?
            }
            ResourceKind::Group => {
                // Members come out of validation as a list; PUT replaces the whole set (RFC 7644 §3.5.1).
                // A PUT without a `members` key leaves membership alone (RFC 7644 §3.5.1 lets
                // the server keep what the client did not send; emptying a group by omission
                // would end sessions of everyone in it).
                let normalized = resource::validate_create(kind, &body)?;
                let changes = normalized
                    .members
                    .map(|m| vec![MemberChange::Replace(m)])
                    .unwrap_or_default();
                let mutate = Box::new(move |current: &StoredResource| {
                    resource::validate_replace(kind, &body, &current.resource).map(|n| n.resource)
                });
                dir.update_group(&actor, self.tenant(), id, if_match, mutate, changes)
                    .await?
            }
        };
        self.finish(kind, stored, sel).await
    }

    async fn patch(
        &self,
        kind: ResourceKind,
        id: &str,
        body: &Value,
        if_match: Option<String>,
        sel: &AttrSelection,
    ) -> Result<Rendered, ScimError> {
        let ops = patch::parse_patch_request(body)?;
        let actor = self.who.actor();
        let dir = &self.state.directory;
        let stored = match kind {
            ResourceKind::User => {
                let mutate = Box::new(move |current: &StoredResource| {
                    let patched = patch::apply_patch(kind, &current.resource, &ops)?;
                    resource::validate_patched(kind, &patched, &current.resource)
                        .map(|n| n.resource)
                });
                dir.update_user(&actor, self.tenant(), id, if_match, mutate)
                    .await?
            }
            ResourceKind::Group => {
                let (attr_ops, member_changes) = patch::split_group_ops(ops)?;
                let mutate = Box::new(move |current: &StoredResource| {
                    if attr_ops.is_empty() {
                        return Ok(current.resource.clone());
                    }
                    let patched = patch::apply_patch(kind, &current.resource, &attr_ops)?;
                    resource::validate_patched(kind, &patched, &current.resource)
                        .map(|n| n.resource)
                });
                dir.update_group(&actor, self.tenant(), id, if_match, mutate, member_changes)
                    .await?
            }
        };
        self.finish(kind, stored, sel).await
    }

    async fn delete(
        &self,
        kind: ResourceKind,
        id: &str,
        if_match: Option<String>,
    ) -> Result<(), ScimError> {
        let actor = self.who.actor();
        match kind {
            ResourceKind::User => {
                self.state
                    .directory
                    .delete_user(&actor, self.tenant(), id, if_match)
                    .await?
            }
            ResourceKind::Group => {
                self.state
                    .directory
                    .delete_group(&actor, self.tenant(), id, if_match)
                    .await?
            }
        }
        Ok(())
    }

    async fn list(&self, kind: ResourceKind, params: &ListParams) -> Result<Value, ScimError> {
        let query = ListQuery {
            filter: params.filter.clone(),
            sort_by: params.sort_by.clone(),
            descending: params.descending,
            start_index: params.start_index,
            count: params.count,
            cursor: params.cursor.clone(),
        };
        let dir = &self.state.directory;
        let page = match kind {
            ResourceKind::User => dir.list_users(self.tenant(), &query).await?,
            ResourceKind::Group => dir.list_groups(self.tenant(), &query).await?,
        };
        let mut resources = Vec::with_capacity(page.items.len());
        for stored in page.items {
            let rendered = self.finish(kind, stored, &params.selection).await?;
            resources.push(resource::project(
                kind,
                &rendered.resource,
                &params.selection,
            ));
        }
        Ok(list::list_response(
            page.total_results,
            params.start_index,
            resources,
            page.next_cursor,
            None,
        ))
    }
}

fn ctx<'a>(state: &'a AppState, who: &'a ScimPrincipal, req: &HttpRequest) -> Ctx<'a> {
    Ctx {
        state,
        who,
        base: base_url(state, req),
    }
}

fn resource_response(
    status: StatusCode,
    kind: ResourceKind,
    rendered: &Rendered,
    sel: &AttrSelection,
) -> HttpResponse {
    let body = resource::project(kind, &rendered.resource, sel);
    let mut res = HttpResponse::build(status);
    res.content_type(SCIM_CONTENT_TYPE)
        .insert_header((header::ETAG, etag(rendered.version)));
    if status == StatusCode::CREATED {
        res.insert_header((header::LOCATION, rendered.location.clone()));
    }
    res.body(body.to_string())
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn create_handler(
    kind: ResourceKind,
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
    payload: web::Payload,
) -> ScimResult<HttpResponse> {
    let body = read_json(&req, payload, max_payload()).await?;
    let sel = selection(&req)?;
    let c = ctx(&state, &who, &req);
    let rendered = c.create(kind, &body, &sel).await?;
    Ok(resource_response(
        StatusCode::CREATED,
        kind,
        &rendered,
        &sel,
    ))
}

async fn get_handler(
    kind: ResourceKind,
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
    id: String,
) -> ScimResult<HttpResponse> {
    let sel = selection(&req)?;
    let c = ctx(&state, &who, &req);
    let rendered = c.load(kind, &id, &sel).await?;
    let tag = etag(rendered.version);
    if let Some(inm) = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == tag.trim_start_matches("W/")
        }) {
            return Ok(HttpResponse::NotModified()
                .insert_header((header::ETAG, tag))
                .finish());
        }
    }
    Ok(resource_response(StatusCode::OK, kind, &rendered, &sel))
}

async fn replace_handler(
    kind: ResourceKind,
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
    id: String,
    payload: web::Payload,
) -> ScimResult<HttpResponse> {
    let body = read_json(&req, payload, max_payload()).await?;
    let sel = selection(&req)?;
    let c = ctx(&state, &who, &req);
    let rendered = c.replace(kind, &id, body, if_match(&req), &sel).await?;
    Ok(resource_response(StatusCode::OK, kind, &rendered, &sel))
}

async fn patch_handler(
    kind: ResourceKind,
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
    id: String,
    payload: web::Payload,
) -> ScimResult<HttpResponse> {
    let body = read_json(&req, payload, max_payload()).await?;
    let sel = selection(&req)?;
    let c = ctx(&state, &who, &req);
    let rendered = c.patch(kind, &id, &body, if_match(&req), &sel).await?;
    Ok(resource_response(StatusCode::OK, kind, &rendered, &sel))
}

async fn delete_handler(
    kind: ResourceKind,
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
    id: String,
) -> ScimResult<HttpResponse> {
    let c = ctx(&state, &who, &req);
    c.delete(kind, &id, if_match(&req)).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn list_handler(
    kind: ResourceKind,
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
) -> ScimResult<HttpResponse> {
    let q = query_map(&req)?;
    let params = list::parse_list_query(&q, &SchemaRegistry::get().limits())?;
    let c = ctx(&state, &who, &req);
    Ok(scim_json(StatusCode::OK, &c.list(kind, &params).await?))
}

async fn search_handler(
    kind: ResourceKind,
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
    payload: web::Payload,
) -> ScimResult<HttpResponse> {
    let body = read_json(&req, payload, max_payload()).await?;
    let params = list::parse_search_request(&body, &SchemaRegistry::get().limits())?;
    let c = ctx(&state, &who, &req);
    Ok(scim_json(StatusCode::OK, &c.list(kind, &params).await?))
}

macro_rules! per_kind {
    ($($kind:ident => $create:ident, $get:ident, $replace:ident, $patch:ident, $delete:ident, $list:ident, $search:ident;)*) => {$(
        async fn $create(state: web::Data<AppState>, who: ScimPrincipal, req: HttpRequest, payload: web::Payload) -> ScimResult<HttpResponse> {
            create_handler(ResourceKind::$kind, state, who, req, payload).await
        }
        async fn $get(state: web::Data<AppState>, who: ScimPrincipal, req: HttpRequest, id: web::Path<String>) -> ScimResult<HttpResponse> {
            get_handler(ResourceKind::$kind, state, who, req, id.into_inner()).await
        }
        async fn $replace(state: web::Data<AppState>, who: ScimPrincipal, req: HttpRequest, id: web::Path<String>, payload: web::Payload) -> ScimResult<HttpResponse> {
            replace_handler(ResourceKind::$kind, state, who, req, id.into_inner(), payload).await
        }
        async fn $patch(state: web::Data<AppState>, who: ScimPrincipal, req: HttpRequest, id: web::Path<String>, payload: web::Payload) -> ScimResult<HttpResponse> {
            patch_handler(ResourceKind::$kind, state, who, req, id.into_inner(), payload).await
        }
        async fn $delete(state: web::Data<AppState>, who: ScimPrincipal, req: HttpRequest, id: web::Path<String>) -> ScimResult<HttpResponse> {
            delete_handler(ResourceKind::$kind, state, who, req, id.into_inner()).await
        }
        async fn $list(state: web::Data<AppState>, who: ScimPrincipal, req: HttpRequest) -> ScimResult<HttpResponse> {
            list_handler(ResourceKind::$kind, state, who, req).await
        }
        async fn $search(state: web::Data<AppState>, who: ScimPrincipal, req: HttpRequest, payload: web::Payload) -> ScimResult<HttpResponse> {
            search_handler(ResourceKind::$kind, state, who, req, payload).await
        }
    )*};
}

per_kind! {
    User => users_create, users_get, users_replace, users_patch, users_delete, users_list, users_search;
    Group => groups_create, groups_get, groups_replace, groups_patch, groups_delete, groups_list, groups_search;
}

/// `POST /.search` at the root (RFC 7644 §3.4.3): Users then Groups as one result set. A
/// filter naming an attribute one type lacks matches nothing of that type.
async fn root_search(
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
    payload: web::Payload,
) -> ScimResult<HttpResponse> {
    let body = read_json(&req, payload, max_payload()).await?;
    let params = list::parse_search_request(&body, &SchemaRegistry::get().limits())?;
    if params.cursor.is_some() {
        return Err(ScimError::invalid_value(
            "cursor pagination is supported per resource type (/Users, /Groups), not at the root",
        )
        .into());
    }
    let c = ctx(&state, &who, &req);
    // Count both sides first, then take the requested window across the concatenation.
    let mut totals = [0u64; 2];
    let kinds = [ResourceKind::User, ResourceKind::Group];
    for (i, kind) in kinds.iter().enumerate() {
        let probe = ListParams {
            count: 0,
            cursor: None,
            ..params.clone()
        };
        totals[i] = match c.list(*kind, &probe).await {
            Ok(v) => v["totalResults"].as_u64().unwrap_or(0),
            Err(e) if e.scim_type == Some(crate::scim::ScimType::InvalidFilter) => 0,
            Err(e) => return Err(e.into()),
        };
    }
    let mut resources = Vec::new();
    let mut skip = params.start_index.saturating_sub(1);
    let mut want = params.count;
    for (i, kind) in kinds.iter().enumerate() {
        if want == 0 {
            break;
        }
        if skip >= totals[i] {
            skip -= totals[i];
            continue;
        }
        let part = ListParams {
            start_index: skip + 1,
            count: want,
            cursor: None,
            ..params.clone()
        };
        let v = c.list(*kind, &part).await?;
        let items = v["Resources"].as_array().cloned().unwrap_or_default();
        want = want.saturating_sub(items.len() as u64);
        resources.extend(items);
        skip = 0;
    }
    Ok(scim_json(
        StatusCode::OK,
        &list::list_response(
            totals[0] + totals[1],
            params.start_index,
            resources,
            None,
            None,
        ),
    ))
}

/// `/Me` (RFC 7644 §3.11) means "the resource of the authenticated subject". Our callers are
/// provisioning clients (an IdP's token), not users, so there is no subject to map: 501.
async fn me() -> HttpResponse {
    scim_error_response(&ScimError::new(
        501,
        None,
        "/Me is not supported: deprovd is provisioned by identity providers whose tokens do not name a SCIM user",
    ))
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    scim_error_response(&ScimError::new(
        405,
        None,
        format!("{} is not supported on {}", req.method(), req.path()),
    ))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    scim_error_response(&ScimError::not_found(format!(
        "no SCIM endpoint {} {}",
        req.method(),
        req.path()
    )))
}

// ---------------------------------------------------------------------------------------------
// Discovery (RFC 7644 §4): served from scim-schemas/, public (it describes, it holds no data)
// ---------------------------------------------------------------------------------------------

async fn service_provider_config(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let base = base_url(&state, &req);
    let mut spc = SchemaRegistry::get().service_provider_config().clone();
    spc["meta"] = json!({"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")});
    scim_json(StatusCode::OK, &spc)
}

fn resource_type_json(base: &str, rt: &crate::scim::schema::ResourceTypeDef) -> Value {
    let mut v = rt.raw.clone();
    v["meta"] = json!({"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{}", rt.name)});
    v
}

fn schema_json(base: &str, s: &crate::scim::schema::Schema) -> Value {
    let mut v = s.raw.clone();
    v["meta"] = json!({"resourceType": "Schema", "location": format!("{base}/Schemas/{}", s.id)});
    v
}

/// A whole discovery collection as one ListResponse (no paging: it is a handful of entries).
fn discovery_list(all: Vec<Value>) -> HttpResponse {
    let n = all.len() as u64;
    scim_json(StatusCode::OK, &list::list_response(n, 1, all, None, None))
}

async fn resource_types(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let base = base_url(&state, &req);
    let all = SchemaRegistry::get()
        .resource_types()
        .iter()
        .map(|rt| resource_type_json(&base, rt))
        .collect();
    discovery_list(all)
}

async fn resource_type(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
) -> HttpResponse {
    let base = base_url(&state, &req);
    match SchemaRegistry::get().resource_types().iter().find(|rt| {
        rt.name.eq_ignore_ascii_case(&name) || rt.raw["id"].as_str() == Some(name.as_str())
    }) {
        Some(rt) => scim_json(StatusCode::OK, &resource_type_json(&base, rt)),
        None => scim_error_response(&ScimError::not_found(format!(
            "resource type {name:?} not found"
        ))),
    }
}

async fn schemas(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let base = base_url(&state, &req);
    let all = SchemaRegistry::get()
        .schemas()
        .iter()
        .map(|s| schema_json(&base, s))
        .collect();
    discovery_list(all)
}

async fn schema(
    state: web::Data<AppState>,
    req: HttpRequest,
    urn: web::Path<String>,
) -> HttpResponse {
    let base = base_url(&state, &req);
    match SchemaRegistry::get().schema(&urn) {
        Some(s) => scim_json(StatusCode::OK, &schema_json(&base, s)),
        None => scim_error_response(&ScimError::not_found(format!("schema {urn:?} not found"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Bulk (RFC 7644 §3.7)
// ---------------------------------------------------------------------------------------------

async fn bulk_endpoint(
    state: web::Data<AppState>,
    who: ScimPrincipal,
    req: HttpRequest,
    payload: web::Payload,
) -> ScimResult<HttpResponse> {
    let limits = SchemaRegistry::get().limits();
    let body = read_json(&req, payload, limits.bulk_max_payload as usize).await?;
    let request = bulk::parse_bulk_request(&body, &limits)?;
    let c = ctx(&state, &who, &req);
    let no_selection = AttrSelection {
        attributes: Vec::new(),
        excluded: Vec::new(),
    };
    let plan = bulk::bulk_dependencies(&request.operations);
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut results: Vec<Option<bulk::BulkResult>> = vec![None; request.operations.len()];
    let mut errors = 0u64;
    for &index in &plan.circular {
        if let Some(op) = request.operations.get(index) {
            errors += 1;
            results[index] = Some(bulk::BulkResult::error(op, &bulk::circular_error()));
        }
    }
    for &index in &plan.order {
        // failOnErrors: stop processing once this many operations have failed (RFC 7644 §3.7.3).
        if request.fail_on_errors.is_some_and(|limit| errors >= limit) {
            break;
        }
        let Some(op) = request.operations.get(index) else {
            continue;
        };
        let result = match run_bulk_op(&c, op, &ids, &no_selection).await {
            Ok((status, version, location, id)) => {
                if let (Some(bulk_id), Some(id)) = (&op.bulk_id, id) {
                    ids.insert(bulk_id.clone(), id);
                }
                bulk::BulkResult {
                    method: op.method,
                    bulk_id: op.bulk_id.clone(),
                    version: version.map(etag),
                    location,
                    status,
                    response: None,
                }
            }
            Err(e) => {
                errors += 1;
                bulk::BulkResult::error(op, &e)
            }
        };
        results[index] = Some(result);
    }
    Ok(scim_json(
        StatusCode::OK,
        &bulk::bulk_response(results.into_iter().flatten().collect()),
    ))
}

/// One bulk operation through the same functions as the single endpoints.
/// Returns (status, version, location, new id).
async fn run_bulk_op(
    c: &Ctx<'_>,
    op: &bulk::BulkOperation,
    ids: &HashMap<String, String>,
    sel: &AttrSelection,
) -> Result<(u16, Option<i64>, Option<String>, Option<String>), ScimError> {
    let path = bulk::resolve_bulk_ids(&Value::String(op.path.clone()), ids)
        .map_err(|id| bulk::unresolved_error(&id))?;
    let path = path.as_str().unwrap_or_default().to_string();
    let data = match &op.data {
        Some(d) => Some(bulk::resolve_bulk_ids(d, ids).map_err(|id| bulk::unresolved_error(&id))?),
        None => None,
    };
    let (kind, id) = bulk::parse_bulk_path(&path)?;
    let need_data = || {
        data.clone()
            .ok_or_else(|| ScimError::invalid_syntax("this bulk operation needs \"data\""))
    };
    match (op.method, id) {
        (bulk::Method::Post, None) => {
            let r = c.create(kind, &need_data()?, sel).await?;
            let id = r.resource["id"].as_str().map(str::to_string);
            Ok((201, Some(r.version), Some(r.location), id))
        }
        (bulk::Method::Put, Some(id)) => {
            let r = c
                .replace(kind, &id, need_data()?, op.version.clone(), sel)
                .await?;
            Ok((200, Some(r.version), Some(r.location), None))
        }
        (bulk::Method::Patch, Some(id)) => {
            let r = c
                .patch(kind, &id, &need_data()?, op.version.clone(), sel)
                .await?;
            Ok((200, Some(r.version), Some(r.location), None))
        }
        (bulk::Method::Delete, Some(id)) => {
            c.delete(kind, &id, op.version.clone()).await?;
            Ok((
                204,
                None,
                Some(format!("{}/{}/{}", c.base, endpoint(kind), id)),
                None,
            ))
        }
        _ => Err(ScimError::invalid_value(format!(
            "{:?} is not allowed on path {path:?}",
            op.method
        ))),
    }
}
