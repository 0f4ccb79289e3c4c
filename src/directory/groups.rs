//! Groups and membership. Member changes are applied as SQL deltas (insert/delete the named
//! rows), never by loading and rewriting the member list, so a change to a 100k-member group
//! costs what the change costs. Members may be users or groups (nested); the type is taken from
//! where the id exists in the tenant, and a group can never contain itself, even indirectly.
//!
//! Every user whose membership a change touches gets a lifecycle row (`groups_joined` /
//! `groups_left`), including users under a nested group that was added or removed; a rename
//! gives every user under the group an `attributes_changed` row for `groups`, since policy can
//! match on `groups.display`. The engine re-reads the user's state anyway (level-triggered), so
//! the rows are triggers and evidence, not a ledger to replay.
//!
//! Not here: SCIM PATCH semantics (`scim::patch` turns operations into [`MemberChange`]s).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use super::lifecycle::{record_lifecycle, LifecycleKind};
use super::sql_filter::{bind_args, filter_sql, SqlBuilder, Target};
use super::users::Mutate;
use super::{
    for_update, if_match_ok, invalid, stored_from_cells, stored_from_row, str_attr, strip_keys,
    text, Actor, DirError, Directory, MemberChange, MemberRef, StoredResource, MAX_NESTING,
    STORED_COLS,
};
use crate::scim::ScimError;
use crate::store::{is_unique_violation, now_ts, Engine};
use crate::store::{Cell, StoreError};

/// Keys never stored on a group row (`members` live in `group_members`).
const GROUP_UNSTORED: &[&str] = &["id", "meta", "members"];

/// Ids per `IN (…)` list or multi-row insert: well under both engines' parameter limits.
const CHUNK: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MemberType {
    User,
    Group,
}

impl MemberType {
    fn as_str(self) -> &'static str {
        match self {
            MemberType::User => "User",
            MemberType::Group => "Group",
        }
    }

    fn parse(s: &str) -> MemberType {
        if s == "Group" {
            MemberType::Group
        } else {
            MemberType::User
        }
    }
}

/// What a run of member changes did, for the lifecycle rows.
#[derive(Default)]
struct Delta {
    added: Vec<(String, MemberType)>,
    removed: Vec<(String, MemberType)>,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

fn group_cols(resource: &Value) -> Result<(String, String, Option<String>), DirError> {
    if !resource.is_object() {
        return Err(invalid("a Group must be a JSON object"));
    }
    let name = match str_attr(resource, "displayName") {
        Some(d) if !d.trim().is_empty() => d.to_string(),
        _ => {
            return Err(invalid(
                "displayName is required and must be a non-empty string",
            ))
        }
    };
    let ci = name.to_lowercase();
    Ok((
        name,
        ci,
        str_attr(resource, "externalId").map(str::to_string),
    ))
}

fn group_conflict(name: &str) -> DirError {
    DirError::Conflict(format!(
        "a Group with displayName \"{name}\" already exists"
    ))
}

async fn load_group(
    conn: &mut AnyConnection,
    engine: Engine,
    tenant: &str,
    id: &str,
) -> Result<Option<StoredResource>, DirError> {
    let sql = format!(
        "SELECT {STORED_COLS} FROM groups r WHERE r.tenant_id = $1 AND r.id = $2{}",
        for_update(engine)
    );
    let row = sqlx::query(&sql)
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(stored_from_row).transpose()
}

fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which of `ids` exist in the tenant, and as what.
async fn member_types(
    conn: &mut AnyConnection,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, MemberType>, DirError> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        for (table, ty) in [("users", MemberType::User), ("groups", MemberType::Group)] {
            let sql = format!(
                "SELECT id FROM {table} WHERE tenant_id = $1 AND id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for row in q.fetch_all(&mut *conn).await? {
                found.insert(row.try_get::<String, _>(0)?, ty);
            }
        }
    }
    Ok(found)
}

/// Whether `group_id` is reachable downwards from `from` (so adding `from` to it would loop).
async fn contains_group(
    conn: &mut AnyConnection,
    tenant: &str,
    from: &str,
    group_id: &str,
) -> Result<bool, DirError> {
    let row = sqlx::query(
        "WITH RECURSIVE d(id, depth) AS ( \
           SELECT member_id, 1 FROM group_members \
             WHERE tenant_id = $1 AND group_id = $2 AND member_type = 'Group' \
           UNION \
           SELECT gm.member_id, d.depth + 1 FROM group_members gm JOIN d ON gm.group_id = d.id \
             WHERE gm.tenant_id = $1 AND gm.member_type = 'Group' AND d.depth < $4) \
         SELECT 1 FROM d WHERE id = $3 LIMIT 1",
    )
    .bind(tenant)
    .bind(from)
    .bind(group_id)
    .bind(MAX_NESTING * 4)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

/// Resolves member references to (id, type); a group may not contain itself.
///
/// A reference to an id this tenant does not have is kept, typed as the client said (User by
/// default), rather than refused: Entra ID bundles a whole sync into one atomic PATCH, so
/// refusing one stale member id would also block a member *removal* in the same request, and
/// removals are what take privileges away. Such a reference matches no user, so it gives no
/// one anything; it is logged so an admin can see the IdP's mapping is stale.
async fn check_refs(
    conn: &mut AnyConnection,
    tenant: &str,
    group_id: &str,
    refs: &[MemberRef],
) -> Result<Vec<(String, MemberType)>, DirError> {
    let mut declared: HashMap<String, MemberType> = HashMap::new();
    let mut ids: Vec<String> = Vec::new();
    for r in refs {
        let id = r.value.trim().to_lowercase();
        if id.is_empty() {
            return Err(DirError::Invalid(ScimError::invalid_value(
                "a member has an empty \"value\"",
            )));
        }
        if !declared.contains_key(&id) {
            let ty = match r.member_type.as_deref() {
                Some(t) if t.eq_ignore_ascii_case("Group") => MemberType::Group,
                _ => MemberType::User,
            };
            declared.insert(id.clone(), ty);
            ids.push(id);
        }
    }
    let types = member_types(conn, tenant, &ids).await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let ty = match types.get(&id).copied() {
            Some(ty) => ty,
            None => {
                tracing::warn!(tenant, group = group_id, member = %id, "group member references an id this tenant does not have; kept as given");
                declared.get(&id).copied().unwrap_or(MemberType::User)
            }
        };
        if ty == MemberType::Group
            && (id == group_id || contains_group(conn, tenant, &id, group_id).await?)
        {
            return Err(DirError::Invalid(ScimError::invalid_value(format!(
                "group \"{id}\" cannot be a member: the group would contain itself"
            ))));
        }
        out.push((id, ty));
    }
    Ok(out)
}

async fn insert_members(
    conn: &mut AnyConnection,
    tenant: &str,
    group_id: &str,
    members: &[(String, MemberType)],
) -> Result<Vec<(String, MemberType)>, DirError> {
    let mut added = Vec::new();
    for chunk in members.chunks(CHUNK) {
        let values = (0..chunk.len())
            .map(|i| format!("($1, $2, ${}, ${})", 3 + 2 * i, 4 + 2 * i))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO group_members (tenant_id, group_id, member_id, member_type) VALUES {values} \
             ON CONFLICT DO NOTHING RETURNING member_id, member_type"
        );
        let mut q = sqlx::query(&sql).bind(tenant).bind(group_id);
        for (id, ty) in chunk {
            q = q.bind(id.as_str()).bind(ty.as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            added.push((
                row.try_get(0)?,
                MemberType::parse(&row.try_get::<String, _>(1)?),
            ));
        }
    }
    Ok(added)
}

async fn delete_members(
    conn: &mut AnyConnection,
    tenant: &str,
    group_id: &str,
    ids: &[String],
) -> Result<Vec<(String, MemberType)>, DirError> {
    let mut removed = Vec::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2 AND member_id IN ({}) \
             RETURNING member_id, member_type",
            placeholders(3, chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(tenant).bind(group_id);
        for id in chunk {
            q = q.bind(id.as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            removed.push((
                row.try_get(0)?,
                MemberType::parse(&row.try_get::<String, _>(1)?),
            ));
        }
    }
    Ok(removed)
}

fn rows_to_members(rows: &[sqlx::any::AnyRow]) -> Result<Vec<(String, MemberType)>, DirError> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                MemberType::parse(&r.try_get::<String, _>(1)?),
            ))
        })
        .collect()
}

/// Apply member changes in order, as deltas.
async fn apply_changes(
    conn: &mut AnyConnection,
    engine: Engine,
    tenant: &str,
    group_id: &str,
    changes: Vec<MemberChange>,
) -> Result<Delta, DirError> {
    let mut delta = Delta::default();
    for change in changes {
        match change {
            MemberChange::Add(refs) => {
                let members = check_refs(conn, tenant, group_id, &refs).await?;
                delta
                    .added
                    .extend(insert_members(conn, tenant, group_id, &members).await?);
            }
            MemberChange::Remove(ids) => {
                let ids: Vec<String> = ids.iter().map(|i| i.trim().to_lowercase()).collect();
                delta
                    .removed
                    .extend(delete_members(conn, tenant, group_id, &ids).await?);
            }
            MemberChange::RemoveAll => {
                let rows = sqlx::query(
                    "DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2 \
                     RETURNING member_id, member_type",
                )
                .bind(tenant)
                .bind(group_id)
                .fetch_all(&mut *conn)
                .await?;
                delta.removed.extend(rows_to_members(&rows)?);
            }
            MemberChange::Replace(refs) => {
                let wanted = check_refs(conn, tenant, group_id, &refs).await?;
                let current = sqlx::query(
                    "SELECT member_id, member_type FROM group_members \
                     WHERE tenant_id = $1 AND group_id = $2",
                )
                .bind(tenant)
                .bind(group_id)
                .fetch_all(&mut *conn)
                .await?;
                let current: HashSet<String> = rows_to_members(&current)?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                let wanted_ids: HashSet<&String> = wanted.iter().map(|(id, _)| id).collect();
                let gone: Vec<String> = current
                    .iter()
                    .filter(|id| !wanted_ids.contains(id))
                    .cloned()
                    .collect();
                let new: Vec<(String, MemberType)> = wanted
                    .into_iter()
                    .filter(|(id, _)| !current.contains(id))
                    .collect();
                delta
                    .removed
                    .extend(delete_members(conn, tenant, group_id, &gone).await?);
                delta
                    .added
                    .extend(insert_members(conn, tenant, group_id, &new).await?);
            }
            MemberChange::RemoveMatching(filter) => {
                let mut b = SqlBuilder::new(engine);
                b.text(tenant);
                b.text(group_id);
                let cond = filter_sql(&mut b, Target::Members, &filter)?;
                let sql = format!(
                    "DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2 AND member_id IN ( \
                       SELECT gm.member_id FROM group_members gm \
                       LEFT JOIN users mu ON mu.tenant_id = gm.tenant_id AND mu.id = gm.member_id \
                       LEFT JOIN groups mg ON mg.tenant_id = gm.tenant_id AND mg.id = gm.member_id \
                       WHERE gm.tenant_id = $1 AND gm.group_id = $2 AND {cond}) \
                     RETURNING member_id, member_type"
                );
                let rows = bind_args(sqlx::query(&sql), &b.args)
                    .fetch_all(&mut *conn)
                    .await?;
                delta.removed.extend(rows_to_members(&rows)?);
            }
        }
    }
    Ok(delta)
}

/// Every user under `group_id`, through nested groups.
async fn users_under(
    conn: &mut AnyConnection,
    tenant: &str,
    group_id: &str,
) -> Result<Vec<String>, DirError> {
    let rows = sqlx::query(
        "WITH RECURSIVE sub(member_id, member_type, depth) AS ( \
           SELECT member_id, member_type, 1 FROM group_members WHERE tenant_id = $1 AND group_id = $2 \
           UNION \
           SELECT gm.member_id, gm.member_type, sub.depth + 1 FROM group_members gm \
             JOIN sub ON gm.group_id = sub.member_id \
             WHERE gm.tenant_id = $1 AND sub.member_type = 'Group' AND sub.depth < $3) \
         SELECT DISTINCT member_id FROM sub WHERE member_type = 'User' ORDER BY member_id",
    )
    .bind(tenant)
    .bind(group_id)
    .bind(MAX_NESTING)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// One `groups_joined` / `groups_left` row per affected user: direct user members, and every
/// user under a group member that was added or removed.
async fn record_delta(
    conn: &mut AnyConnection,
    actor: &Actor,
    tenant: &str,
    group: &Value,
    delta: &Delta,
) -> Result<(), DirError> {
    for (list, kind) in [
        (&delta.added, LifecycleKind::GroupsJoined),
        (&delta.removed, LifecycleKind::GroupsLeft),
    ] {
        for (id, ty) in list {
            match ty {
                MemberType::User => {
                    let detail = json!({"groups": [group], "direct": true});
                    record_lifecycle(conn, actor, id, kind, detail).await?;
                }
                MemberType::Group => {
                    for user in users_under(conn, tenant, id).await? {
                        let detail = json!({"groups": [group], "direct": false, "via": id});
                        record_lifecycle(conn, actor, &user, kind, detail).await?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn group_ref(id: &str, resource: &Value) -> Value {
    json!({"id": id, "displayName": str_attr(resource, "displayName").unwrap_or("")})
}

impl Directory {
    /// Store a new group with its initial members.
    pub async fn create_group(
        &self,
        actor: &Actor,
        resource: Value,
        members: Vec<MemberRef>,
    ) -> Result<StoredResource, DirError> {
        let mut resource = resource;
        strip_keys(&mut resource, GROUP_UNSTORED);
        let (name, name_ci, external_id) = group_cols(&resource)?;
        let (actor, engine) = (actor.clone(), self.db.engine);
        self.db
            .write(move |conn| {
                Box::pin(async move {
                    let tenant = actor.tenant_id.clone();
                    let id = uuid::Uuid::new_v4().to_string();
                    let now = now_ts();
                    let res = sqlx::query(
                        "INSERT INTO groups (tenant_id, id, display_name, display_name_ci, external_id, \
                         resource, version, created, last_modified) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)",
                    )
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .bind(name.as_str())
                    .bind(name_ci.as_str())
                    .bind(external_id)
                    .bind(resource.to_string())
                    .bind(now.as_str())
                    .execute(&mut *conn)
                    .await;
                    match res {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => return Err(group_conflict(&name)),
                        Err(e) => return Err(e.into()),
                    }
                    if !members.is_empty() {
                        let delta =
                            apply_changes(conn, engine, &tenant, &id, vec![MemberChange::Add(members)]).await?;
                        record_delta(conn, &actor, &tenant, &group_ref(&id, &resource), &delta).await?;
                    }
                    Ok(StoredResource { id, version: 1, created: now.clone(), last_modified: now, resource })
                })
            })
            .await
    }

    pub async fn get_group(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<StoredResource>, DirError> {
        let sql =
            format!("SELECT {STORED_COLS} FROM groups r WHERE r.tenant_id = $1 AND r.id = $2");
        let rows = self.db.read_rows(&sql, &[text(tenant), text(id)]).await?;
        rows.first().map(|r| stored_from_cells(r)).transpose()
    }

    /// Direct members of a group as (id, "User" | "Group", display): a user's userName, a
    /// group's displayName. One query, whatever the size.
    pub async fn group_members(
        &self,
        tenant: &str,
        group_id: &str,
    ) -> Result<Vec<(String, String, String)>, DirError> {
        let rows = self
            .db
            .read_rows(
                "SELECT gm.member_id, gm.member_type, COALESCE(mu.user_name, mg.display_name, '') \
                 FROM group_members gm \
                 LEFT JOIN users mu ON gm.member_type = 'User' AND mu.tenant_id = gm.tenant_id AND mu.id = gm.member_id \
                 LEFT JOIN groups mg ON gm.member_type = 'Group' AND mg.tenant_id = gm.tenant_id AND mg.id = gm.member_id \
                 WHERE gm.tenant_id = $1 AND gm.group_id = $2 ORDER BY gm.member_type DESC, gm.member_id",
                &[text(tenant), text(group_id)],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let mut r = r.into_iter().map(Cell::into_text);
                match (r.next(), r.next(), r.next()) {
                    (Some(Some(id)), Some(Some(ty)), Some(Some(display))) => Ok((id, ty, display)),
                    _ => Err(DirError::Store(StoreError::Read("group member row".into()))),
                }
            })
            .collect()
    }

    /// PUT and PATCH on a group: check `If-Match`, apply `mutate` to the resource and the
    /// member changes in order, in one transaction. Nothing changed → nothing written.
    pub async fn update_group(
        &self,
        actor: &Actor,
        tenant: &str,
        id: &str,
        if_match: Option<String>,
        mutate: Mutate,
        member_changes: Vec<MemberChange>,
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
                    let old = load_group(conn, engine, &tenant, &id).await?.ok_or(DirError::NotFound)?;
                    if !if_match_ok(if_match.as_deref(), old.version) {
                        return Err(DirError::PreconditionFailed);
                    }
                    let mut new = mutate(&old).map_err(DirError::Invalid)?;
                    strip_keys(&mut new, GROUP_UNSTORED);
                    let (name, name_ci, external_id) = group_cols(&new)?;
                    let delta = apply_changes(conn, engine, &tenant, &id, member_changes).await?;
                    if new == old.resource && delta.is_empty() {
                        return Ok(old);
                    }
                    let now = now_ts();
                    let res = sqlx::query(
                        "UPDATE groups SET display_name = $3, display_name_ci = $4, external_id = $5, \
                         resource = $6, version = version + 1, last_modified = $7 \
                         WHERE tenant_id = $1 AND id = $2",
                    )
                    .bind(tenant.as_str())
                    .bind(id.as_str())
                    .bind(name.as_str())
                    .bind(name_ci.as_str())
                    .bind(external_id)
                    .bind(new.to_string())
                    .bind(now.as_str())
                    .execute(&mut *conn)
                    .await;
                    match res {
                        Ok(_) => {}
                        Err(e) if is_unique_violation(&e) => return Err(group_conflict(&name)),
                        Err(e) => return Err(e.into()),
                    }
                    let gref = group_ref(&id, &new);
                    record_delta(conn, &actor, &tenant, &gref, &delta).await?;
                    let old_name = str_attr(&old.resource, "displayName").unwrap_or("");
                    if old_name != name {
                        // Policy may match on groups.display: every user under the group changed.
                        let detail = json!({
                            "attributes": ["groups"],
                            "group": id,
                            "before": {"groups.display": old_name},
                            "after": {"groups.display": name},
                        });
                        for user in users_under(conn, &tenant, &id).await? {
                            record_lifecycle(conn, &actor, &user, LifecycleKind::AttributesChanged, detail.clone())
                                .await?;
                        }
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

    /// PUT on a group: the new resource and exactly these members.
    pub async fn replace_group(
        &self,
        actor: &Actor,
        tenant: &str,
        id: &str,
        if_match: Option<String>,
        mutate: Mutate,
        members: Vec<MemberRef>,
    ) -> Result<StoredResource, DirError> {
        self.update_group(
            actor,
            tenant,
            id,
            if_match,
            mutate,
            vec![MemberChange::Replace(members)],
        )
        .await
    }

    /// Delete a group: every user under it leaves it (`groups_left`), groups containing it
    /// move to their next version.
    pub async fn delete_group(
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
                    let old = load_group(conn, engine, &tenant, &id).await?.ok_or(DirError::NotFound)?;
                    if !if_match_ok(if_match.as_deref(), old.version) {
                        return Err(DirError::PreconditionFailed);
                    }
                    let affected = users_under(conn, &tenant, &id).await?;
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
                    sqlx::query("DELETE FROM group_members WHERE tenant_id = $1 AND (group_id = $2 OR member_id = $2)")
                        .bind(tenant.as_str())
                        .bind(id.as_str())
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("DELETE FROM groups WHERE tenant_id = $1 AND id = $2")
                        .bind(tenant.as_str())
                        .bind(id.as_str())
                        .execute(&mut *conn)
                        .await?;
                    let gref = group_ref(&id, &old.resource);
                    for user in affected {
                        let detail = json!({"groups": [gref], "deleted": true, "before": old.resource});
                        record_lifecycle(conn, &actor, &user, LifecycleKind::GroupsLeft, detail).await?;
                    }
                    Ok(())
                })
            })
            .await
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(2, 0), "");
    }
}
