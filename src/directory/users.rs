//! Users: create, read, update (PUT and PATCH share one read-modify-write), delete, and the
//! groups a user belongs to. Each write is one `Db::write` operation: the row, its version and
//! its lifecycle rows commit together.
//!
//! Not here: SCIM validation (done before, in `scim::resource`), listing (`list.rs`).

use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use super::lifecycle::{record_lifecycle, update_events, LifecycleKind};
use super::{
    for_update, if_match_ok, invalid, stored_from_cells, stored_from_row, str_attr, strip_keys,
    text, Actor, DirError, Directory, GroupRef, StoredResource, MAX_NESTING, STORED_COLS,
};
use crate::scim::ScimError;
use crate::store::{cell, is_unique_violation, now_ts, Engine, SqlValue, StoreError};

/// Keys never stored on a user row: assigned by the directory (`id`, `meta`), derived from
/// membership (`groups`), or write-only and never needed (`password`).
const USER_UNSTORED: &[&str] = &["id", "meta", "groups", "password"];

/// The mutation a PUT or PATCH applies: the stored user in, the new resource out.
pub type Mutate = Box<dyn FnOnce(&StoredResource) -> Result<Value, ScimError> + Send>;

/// The indexed columns of a user, derived from its resource.
struct UserCols {
    user_name: String,
    user_name_ci: String,
    external_id: Option<String>,
    display_name: Option<String>,
    display_name_ci: Option<String>,
    active: i64,
}

fn user_cols(resource: &Value) -> Result<UserCols, DirError> {
    if !resource.is_object() {
        return Err(invalid("a User must be a JSON object"));
    }
    let user_name = match str_attr(resource, "userName") {
        Some(u) if !u.trim().is_empty() => u.to_string(),
        _ => {
            return Err(DirError::Invalid(ScimError::invalid_value(
                "userName is required and must be a non-empty string",
            )))
        }
    };
    let active = match resource.get("active") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("active must be a boolean")),
    };
    let display_name = str_attr(resource, "displayName").map(str::to_string);
    Ok(UserCols {
        user_name_ci: user_name.to_lowercase(),
        user_name,
        external_id: str_attr(resource, "externalId").map(str::to_string),
        display_name_ci: display_name.as_ref().map(|d| d.to_lowercase()),
        display_name,
        active: i64::from(active),
    })
}

fn user_conflict(user_name: &str) -> DirError {
    DirError::Conflict(format!(
        "a User with userName \"{user_name}\" already exists"
    ))
}

/// Load one user row on the write connection (locked on PostgreSQL).
pub(crate) async fn load_user(
    conn: &mut AnyConnection,
    engine: Engine,
    tenant: &str,
    id: &str,
) -> Result<Option<StoredResource>, DirError> {
    let sql = format!(
        "SELECT {STORED_COLS} FROM users r WHERE r.tenant_id = $1 AND r.id = $2{}",
        for_update(engine)
    );
    let row = sqlx::query(&sql)
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(stored_from_row).transpose()
}

/// A user's groups, direct and through nested groups ($3 levels), by display name; see
/// [`Directory::user_groups`]. `CROSS JOIN` keeps SQLite walking from the user's memberships
/// out (it would otherwise scan the tenant's groups in display order).
pub(crate) const USER_GROUPS_SQL: &str = "WITH RECURSIVE anc(group_id, depth) AS ( \
               SELECT gm.group_id, 1 FROM group_members gm \
                 WHERE gm.tenant_id = $1 AND gm.member_id = $2 \
               UNION \
               SELECT gm.group_id, anc.depth + 1 FROM anc CROSS JOIN group_members gm \
                 WHERE gm.tenant_id = $1 AND gm.member_id = anc.group_id \
                   AND gm.member_type = 'Group' AND anc.depth < $3 \
             ) \
             SELECT g.id, g.display_name, CAST(MIN(anc.depth) AS BIGINT) \
             FROM anc CROSS JOIN groups g WHERE g.tenant_id = $1 AND g.id = anc.group_id \
             GROUP BY g.id, g.display_name, g.display_name_ci \
             ORDER BY g.display_name_ci, g.id";

impl Directory {
    /// Store a new user. `resource` is validated and normalised; `id`, `meta`, `groups` and
    /// `password` in it are ignored.
    pub async fn create_user(
        &self,
        actor: &Actor,
        resource: Value,
    ) -> Result<StoredResource, DirError> {
        let mut resource = resource;
        strip_keys(&mut resource, USER_UNSTORED);
        let cols = user_cols(&resource)?;
        let actor = actor.clone();
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    let id = uuid::Uuid::new_v4().to_string();
                    let now = now_ts();
                    let res = sqlx::query(
                        "INSERT INTO users (tenant_id, id, user_name, user_name_ci, external_id, \
                         display_name, display_name_ci, active, resource, version, created, \
                         last_modified) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10)",
                    )
                    .bind(actor.tenant_id.as_str())
                    .bind(id.as_str())
                    .bind(cols.user_name.as_str())
                    .bind(cols.user_name_ci.as_str())
                    .bind(cols.external_id.clone())
                    .bind(cols.display_name.clone())
                    .bind(cols.display_name_ci.clone())
                    .bind(cols.active)
                    .bind(resource.to_string())
                    .bind(now.as_str())
                    .execute(&mut *conn)
                    .await;
                    match res {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => {
                            return Err(user_conflict(&cols.user_name))
                        }
                        Err(e) => return Err(e.into()),
                    }
                    record_lifecycle(
                        conn,
                        &actor,
                        &id,
                        LifecycleKind::Created,
                        json!({"after": resource}),
                    )
                    .await?;
                    Ok(StoredResource {
                        id,
                        version: 1,
                        created: now.clone(),
                        last_modified: now,
                        resource,
                    })
                })
            })
            .await
    }

    pub async fn get_user(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, DirError> {
        let sql = format!("SELECT {STORED_COLS} FROM users r WHERE r.tenant_id = $1 AND r.id = $2");
        let rows = self.db.read_rows(&sql, &[text(tenant), text(id)]).await?;
        rows.first().map(|r| stored_from_cells(r)).transpose()
    }

    /// The user with this userName (compared case-insensitively, as SCIM says), by index.
    pub async fn find_user_by_user_name(
        &self,
        tenant: &str,
        user_name: &str,
    ) -> Result<Option<StoredResource>, DirError> {
        let sql = format!(
            "SELECT {STORED_COLS} FROM users r WHERE r.tenant_id = $1 AND r.user_name_ci = $2"
        );
        let rows = self
            .db
            .read_rows(
                &sql,
                &[text(tenant), SqlValue::Text(user_name.to_lowercase())],
            )
            .await?;
        rows.first().map(|r| stored_from_cells(r)).transpose()
    }

    /// The groups a user belongs to: direct memberships and those through nested groups (up
    /// to [`MAX_NESTING`] levels), by display name.
    pub async fn user_groups(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<GroupRef>, DirError> {
        let rows = self
            .db
            .read_rows(
                USER_GROUPS_SQL,
                &[text(tenant), text(user_id), SqlValue::Int(MAX_NESTING)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let text_at = |i| {
                    cell(r, i)?.text().map(str::to_string).ok_or_else(|| {
                        DirError::Store(StoreError::Read("group: text expected".into()))
                    })
                };
                Ok(GroupRef {
                    value: text_at(0)?,
                    display: text_at(1)?,
                    direct: cell(r, 2)?.int() == Some(1),
                })
            })
            .collect()
    }

    /// PUT and PATCH: load the user, check `If-Match`, apply `mutate`, and store the result as
    /// the next version, with its lifecycle rows, in one transaction. A result equal to the
    /// stored resource writes nothing (an IdP retrying the same PATCH leaves no trace).
    pub async fn update_user(
        &self,
        actor: &Actor,
        tenant: &str,
        id: &str,
        if_match: Option<String>,
        mutate: Mutate,
    ) -> Result<StoredResource, DirError> {
        if actor.tenant_id != tenant {
            return Err(DirError::NotFound);
        }
        let (actor, tenant, id, engine) = (
            actor.clone(),
            tenant.to_string(),
            id.to_string(),
            self.db.engine,
        );
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    let old = load_user(conn, engine, &tenant, &id)
                        .await?
                        .ok_or(DirError::NotFound)?;
                    if !if_match_ok(if_match.as_deref(), old.version) {
                        return Err(DirError::PreconditionFailed);
                    }
                    let mut new = mutate(&old).map_err(DirError::Invalid)?;
                    strip_keys(&mut new, USER_UNSTORED);
                    if new == old.resource {
                        return Ok(old);
                    }
                    let cols = user_cols(&new)?;
                    let now = now_ts();
                    let res = sqlx::query(
                        "UPDATE users SET user_name = $3, user_name_ci = $4, external_id = $5, \
                         display_name = $6, display_name_ci = $7, active = $8, resource = $9, \
                         version = version + 1, last_modified = $10 \
                         WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .bind(cols.user_name.as_str())
                    .bind(cols.user_name_ci.as_str())
                    .bind(cols.external_id.clone())
                    .bind(cols.display_name.clone())
                    .bind(cols.display_name_ci.clone())
                    .bind(cols.active)
                    .bind(new.to_string())
                    .bind(now.as_str())
                    .execute(&mut *conn)
                    .await;
                    match res {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => {
                            return Err(user_conflict(&cols.user_name))
                        }
                        Err(e) => return Err(e.into()),
                    }
                    for (kind, detail) in update_events(&old.resource, &new) {
                        record_lifecycle(conn, &actor, &id, kind, detail).await?;
                    }
                    Ok(StoredResource {
                        id,
                        version: old.version + 1,
                        created: old.created,
                        last_modified: now,
                        resource: new,
                    })
                })
            })
            .await
    }

    /// Delete a user and its memberships; records `deleted` with the last resource and the
    /// groups it was directly in.
    pub async fn delete_user(
        &self,
        actor: &Actor,
        tenant: &str,
        id: &str,
        if_match: Option<String>,
    ) -> Result<(), DirError> {
        if actor.tenant_id != tenant {
            return Err(DirError::NotFound);
        }
        let (actor, tenant, id, engine) = (
            actor.clone(),
            tenant.to_string(),
            id.to_string(),
            self.db.engine,
        );
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    let old = load_user(conn, engine, &tenant, &id).await?.ok_or(DirError::NotFound)?;
                    if !if_match_ok(if_match.as_deref(), old.version) {
                        return Err(DirError::PreconditionFailed);
                    }
                    let groups: Vec<Value> = sqlx::query(
                        "SELECT g.id, g.display_name FROM group_members gm \
                         JOIN groups g ON g.tenant_id = gm.tenant_id AND g.id = gm.group_id \
                         WHERE gm.tenant_id = $1 AND gm.member_id = $2 ORDER BY g.display_name_ci",
                    )
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|r| -> Result<Value, sqlx::Error> {
                        Ok(json!({"id": r.try_get::<String, _>(0)?, "displayName": r.try_get::<String, _>(1)?}))
                    })
                    .collect::<Result<_, _>>()?;
                    // The groups' member lists change: their versions move on.
                    sqlx::query(
                        "UPDATE groups SET version = version + 1, last_modified = $3 \
                         WHERE tenant_id = $1 AND id IN (SELECT group_id FROM group_members \
                         WHERE tenant_id = $1 AND member_id = $2)",
                    )
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .bind(now_ts())
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query("DELETE FROM group_members WHERE tenant_id = $1 AND member_id = $2")
                        .bind(tenant.as_str())
                        .bind(id.as_str())
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant.as_str())
                        .bind(id.as_str())
                        .execute(&mut *conn)
                        .await?;
                    record_lifecycle(
                        conn,
                        &actor,
                        &id,
                        LifecycleKind::Deleted,
                        json!({"before": old.resource, "groups": groups}),
                    )
                    .await?;
                    Ok(())
                })
            })
            .await
    }
}
