//! The directory: SCIM users and groups as stored rows, group membership, versions (ETags),
//! uniqueness, and the lifecycle rows every change leaves behind; SCIM filters run here as SQL.
//!
//! Callers hand in resources already validated and normalised by `scim::resource` (canonical
//! attribute names, no read-only input); this layer assigns ids, versions and timestamps,
//! enforces uniqueness (a unique-index race is a `Conflict`, never a 500), and records
//! lifecycle rows in the same transaction as the change (see [`lifecycle`]). Every query is
//! scoped by tenant.
//!
//! Not here: SCIM validation, PATCH semantics and projection (`scim/`), HTTP (`http/`).

pub mod groups;
pub mod lifecycle;
pub mod list;
pub mod sql_filter;
pub mod users;

#[cfg(test)]
mod tests;

use serde_json::Value;
use sqlx::any::AnyRow;

use crate::scim::filter::{AttrPath, Filter};
use crate::scim::ScimError;
use crate::store::{cell, cells_of, Cell, Db, Engine, SqlValue, StoreError};

pub use crate::scim::patch::MemberChange;
pub use crate::scim::resource::MemberRef;
pub use lifecycle::{LifecycleEvent, LifecycleKind};

/// Who made a change; stored on every lifecycle row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub tenant_id: String,
    pub kind: ActorKind,
    pub id: String,
    pub name: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    ScimToken,
    Jwt,
    AdminToken,
    Cli,
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::ScimToken => "scim_token",
            ActorKind::Jwt => "jwt",
            ActorKind::AdminToken => "admin_token",
            ActorKind::Cli => "cli",
            ActorKind::System => "system",
        }
    }
}

impl Actor {
    /// The service itself acting in a tenant (scheduled jobs, tests).
    pub fn system(tenant_id: impl Into<String>) -> Actor {
        Actor {
            tenant_id: tenant_id.into(),
            kind: ActorKind::System,
            id: "system".into(),
            name: "deprovd".into(),
            client_ip: None,
            request_id: None,
        }
    }
}

/// A user or group as stored: the resource JSON without `id`, `meta`, `groups`/`members`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub id: String,
    pub version: i64,
    pub created: String,
    pub last_modified: String,
    pub resource: Value,
}

impl StoredResource {
    /// The weak ETag of this version: `W/"3"`.
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }
}

/// One group a user belongs to (User `groups`): directly or through nested groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub value: String,
    pub display: String,
    pub direct: bool,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub total_results: u64,
    pub items: Vec<StoredResource>,
    /// Cursor paging (RFC 9865): the cursor of the next page, `None` on the last page.
    pub next_cursor: Option<String>,
}

/// What to list. Index paging with `start_index` (1-based) and `count`, or cursor paging when
/// `cursor` is `Some` (`Some("")` asks for the first page).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub sort_by: Option<AttrPath>,
    pub descending: bool,
    pub start_index: u64,
    pub count: u64,
    pub cursor: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("resource not found")]
    NotFound,
    /// A uniqueness violation: `409 uniqueness`.
    #[error("{0}")]
    Conflict(String),
    /// If-Match did not match the current version: `412`.
    #[error("the resource has changed (If-Match does not match its current version)")]
    PreconditionFailed,
    /// Bad input only the directory can see (unknown member, bad filter attribute, bad cursor).
    #[error("{0}")]
    Invalid(ScimError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for DirError {
    fn from(e: sqlx::Error) -> Self {
        DirError::Store(StoreError::Database(e))
    }
}

impl From<DirError> for ScimError {
    fn from(e: DirError) -> Self {
        match e {
            DirError::NotFound => ScimError::not_found("resource not found"),
            DirError::Conflict(m) => ScimError::uniqueness(m),
            DirError::PreconditionFailed => ScimError::precondition_failed(
                "the resource has changed since it was read (If-Match does not match)",
            ),
            DirError::Invalid(e) => e,
            // Nothing was written: the client may retry (IdPs do).
            DirError::Store(e @ (StoreError::Aborted(_) | StoreError::Closed)) => {
                tracing::warn!(error = %e, "write not done");
                ScimError::new(503, None, "the service could not complete the write; retry")
            }
            DirError::Store(e) => {
                tracing::error!(error = %e, "directory storage error");
                ScimError::internal("internal storage error")
            }
        }
    }
}

/// Users and groups of every tenant, on one database.
#[derive(Debug, Clone)]
pub struct Directory {
    db: Db,
}

/// Deepest group nesting followed when resolving indirect membership.
pub const MAX_NESTING: i64 = 16;

impl Directory {
    pub fn new(db: Db) -> Directory {
        Directory { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// Whether an `If-Match` header value admits `version`: `*`, or a list of (weak or strong)
/// ETags one of which is `"<version>"`. Weak comparison (RFC 7232 §2.3.2).
pub fn if_match_ok(if_match: Option<&str>, version: i64) -> bool {
    let Some(h) = if_match else { return true };
    let want = version.to_string();
    h.split(',').map(str::trim).any(|tag| {
        if tag == "*" {
            return true;
        }
        let tag = tag
            .strip_prefix("W/")
            .or_else(|| tag.strip_prefix("w/"))
            .unwrap_or(tag);
        let tag = tag
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(tag);
        tag == want
    })
}

/// `SELECT` column list that [`stored_from_row`] reads.
pub(crate) const STORED_COLS: &str = "r.id, r.version, r.created, r.last_modified, r.resource";

pub(crate) fn stored_from_row(row: &AnyRow) -> Result<StoredResource, DirError> {
    stored_from_cells(&cells_of(row)?)
}

/// A text parameter for `Db::read_rows`.
pub(crate) fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

/// [`stored_from_row`] for a row read with `Db::read_rows` ([`STORED_COLS`] first).
pub(crate) fn stored_from_cells(row: &[Cell]) -> Result<StoredResource, DirError> {
    let bad = |what: &str| DirError::Store(StoreError::Read(format!("stored row: {what}")));
    let text = |i: usize| -> Result<String, DirError> {
        cell(row, i)?
            .text()
            .map(str::to_string)
            .ok_or_else(|| bad("text expected"))
    };
    let resource: Value =
        serde_json::from_str(&text(4)?).map_err(|e| bad(&format!("resource: {e}")))?;
    Ok(StoredResource {
        id: text(0)?,
        version: cell(row, 1)?.int().ok_or_else(|| bad("version"))?,
        created: text(2)?,
        last_modified: text(3)?,
        resource,
    })
}

/// ` FOR UPDATE` on PostgreSQL (lock the row for the read-modify-write); SQLite's writer is
/// already alone.
pub(crate) fn for_update(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => " FOR UPDATE",
        Engine::Sqlite => "",
    }
}

/// Remove keys the directory keeps elsewhere or never stores (case-insensitively).
pub(crate) fn strip_keys(resource: &mut Value, keys: &[&str]) {
    if let Value::Object(map) = resource {
        map.retain(|k, _| !keys.iter().any(|x| k.eq_ignore_ascii_case(x)));
    }
}

/// A string attribute of a normalised resource (canonical name, exact key).
pub(crate) fn str_attr<'a>(resource: &'a Value, name: &str) -> Option<&'a str> {
    resource.get(name).and_then(Value::as_str)
}

pub(crate) fn invalid(detail: impl Into<String>) -> DirError {
    DirError::Invalid(ScimError::invalid_value(detail))
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn if_match_weak_comparison() {
        assert!(if_match_ok(None, 3));
        assert!(if_match_ok(Some("*"), 3));
        assert!(if_match_ok(Some("W/\"3\""), 3));
        assert!(if_match_ok(Some("\"3\""), 3));
        assert!(if_match_ok(Some("W/\"1\", W/\"3\""), 3));
        assert!(!if_match_ok(Some("W/\"2\""), 3));
        assert!(!if_match_ok(Some(""), 3));
        assert!(!if_match_ok(Some("W/\"33\""), 3));
    }

    #[test]
    fn errors_map_to_scim() {
        assert_eq!(ScimError::from(DirError::NotFound).status, 404);
        let c = ScimError::from(DirError::Conflict("dup".into()));
        assert_eq!(
            (c.status, c.scim_type),
            (409, Some(crate::scim::ScimType::Uniqueness))
        );
        assert_eq!(ScimError::from(DirError::PreconditionFailed).status, 412);
        assert_eq!(
            ScimError::from(DirError::Store(StoreError::Closed)).status,
            503
        );
        assert_eq!(
            ScimError::from(DirError::Store(StoreError::Config("x".into()))).status,
            500
        );
    }
}
