//! Lifecycle rows: what happened to a user (created, deactivated, reactivated, deleted, joined or
//! left groups, attributes changed), by whom, written in the same transaction as the change.
//! [`record_lifecycle`] is the single choke point every directory write goes through, so the
//! converge job and audit entry that hang off a change can be added in one place.
//!
//! Not here: acting on the rows (the engine and jobs do), the audit chain.

use serde_json::{json, Map, Value};
use sqlx::{AnyConnection, Row};

use super::{Actor, DirError, Directory};
use crate::store::now_ts;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleKind {
    Created,
    /// `active` went true → false.
    Deactivated,
    /// `active` went false → true.
    Reactivated,
    Deleted,
    GroupsJoined,
    GroupsLeft,
    AttributesChanged,
}

impl LifecycleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleKind::Created => "created",
            LifecycleKind::Deactivated => "deactivated",
            LifecycleKind::Reactivated => "reactivated",
            LifecycleKind::Deleted => "deleted",
            LifecycleKind::GroupsJoined => "groups_joined",
            LifecycleKind::GroupsLeft => "groups_left",
            LifecycleKind::AttributesChanged => "attributes_changed",
        }
    }

    pub fn parse(s: &str) -> Option<LifecycleKind> {
        Some(match s {
            "created" => LifecycleKind::Created,
            "deactivated" => LifecycleKind::Deactivated,
            "reactivated" => LifecycleKind::Reactivated,
            "deleted" => LifecycleKind::Deleted,
            "groups_joined" => LifecycleKind::GroupsJoined,
            "groups_left" => LifecycleKind::GroupsLeft,
            "attributes_changed" => LifecycleKind::AttributesChanged,
            _ => return None,
        })
    }
}

/// A stored lifecycle row.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleEvent {
    pub seq: i64,
    pub tenant_id: String,
    pub user_id: String,
    pub kind: String,
    pub detail: Value,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_name: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub created: String,
}

/// Record one lifecycle row for `user_id` in the actor's tenant, on the write transaction's
/// connection. Every directory write calls this and nothing else to record what happened.
pub(crate) async fn record_lifecycle(
    conn: &mut AnyConnection,
    actor: &Actor,
    user_id: &str,
    kind: LifecycleKind,
    detail: Value,
) -> Result<(), sqlx::Error> {
    let detail = scrub(detail);
    sqlx::query(
        "INSERT INTO lifecycle_events (tenant_id, user_id, kind, detail, actor_kind, actor_id, \
         actor_name, client_ip, request_id, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(actor.tenant_id.as_str())
    .bind(user_id)
    .bind(kind.as_str())
    .bind(detail.to_string())
    .bind(actor.kind.as_str())
    .bind(actor.id.as_str())
    .bind(actor.name.as_str())
    .bind(actor.client_ip.clone())
    .bind(actor.request_id.clone())
    .bind(now_ts())
    .execute(&mut *conn)
    .await?;
    crate::engine::hooks::on_lifecycle_event(
        conn,
        actor,
        &actor.tenant_id,
        user_id,
        kind.as_str(),
        &detail,
    )
    .await?;
    Ok(())
}

/// Never let a password into a lifecycle row, whatever a caller put in the detail.
fn scrub(mut v: Value) -> Value {
    fn walk(v: &mut Value, depth: u8) {
        if depth == 0 {
            return;
        }
        match v {
            Value::Object(m) => {
                m.retain(|k, _| !k.eq_ignore_ascii_case("password"));
                for x in m.values_mut() {
                    walk(x, depth - 1);
                }
            }
            Value::Array(a) => {
                for x in a {
                    walk(x, depth - 1);
                }
            }
            _ => {}
        }
    }
    walk(&mut v, 8);
    v
}

/// The rows a user update leaves: `deactivated`/`reactivated` for a change of `active`, and
/// `attributes_changed` naming every other attribute that changed (top level; extension
/// attributes as `urn:…:name`), with before and after values.
pub(crate) fn update_events(before: &Value, after: &Value) -> Vec<(LifecycleKind, Value)> {
    let mut out = Vec::new();
    let active = |v: &Value| v.get("active").and_then(Value::as_bool).unwrap_or(true);
    let (a0, a1) = (active(before), active(after));
    if a0 && !a1 {
        out.push((
            LifecycleKind::Deactivated,
            json!({"before": {"active": true}, "after": {"active": false}}),
        ));
    } else if !a0 && a1 {
        out.push((
            LifecycleKind::Reactivated,
            json!({"before": {"active": false}, "after": {"active": true}}),
        ));
    }
    let mut names = Vec::new();
    let mut b = Map::new();
    let mut a = Map::new();
    diff_objects(before, after, None, &mut names, &mut b, &mut a);
    if !names.is_empty() {
        out.push((
            LifecycleKind::AttributesChanged,
            json!({"attributes": names, "before": b, "after": a}),
        ));
    }
    out
}

fn diff_objects(
    before: &Value,
    after: &Value,
    prefix: Option<&str>,
    names: &mut Vec<String>,
    b: &mut Map<String, Value>,
    a: &mut Map<String, Value>,
) {
    let empty = Map::new();
    let bm = before.as_object().unwrap_or(&empty);
    let am = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = bm.keys().chain(am.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if prefix.is_none() && (k == "active" || k.eq_ignore_ascii_case("password")) {
            continue;
        }
        if k.eq_ignore_ascii_case("password") {
            continue;
        }
        let (x, y) = (
            bm.get(k).unwrap_or(&Value::Null),
            am.get(k).unwrap_or(&Value::Null),
        );
        if x == y {
            continue;
        }
        // Extension objects: name the attributes inside them.
        if prefix.is_none() && k.starts_with("urn:") && (x.is_object() || y.is_object()) {
            diff_objects(x, y, Some(k), names, b, a);
            continue;
        }
        let name = match prefix {
            Some(p) => format!("{p}:{k}"),
            None => k.clone(),
        };
        b.insert(name.clone(), x.clone());
        a.insert(name.clone(), y.clone());
        names.push(name);
    }
}

impl Directory {
    /// A deleted user's last resource and when it was deleted (its `deleted` lifecycle row),
    /// or None when the user was never deleted. The factor store keeps a deleted user's factors
    /// (revoked): this is how they are still found by the user's SCIM id.
    pub async fn deleted_user(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<(String, Value)>, DirError> {
        let rows = self
            .db
            .read_rows(
                "SELECT created, detail FROM lifecycle_events \
                 WHERE tenant_id = $1 AND user_id = $2 AND kind = 'deleted' \
                 ORDER BY seq DESC LIMIT 1",
                &[super::text(tenant), super::text(user_id)],
            )
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        let mut cells = row.into_iter().map(crate::store::Cell::into_text);
        let (Some(Some(at)), Some(Some(detail))) = (cells.next(), cells.next()) else {
            return Err(DirError::Store(crate::store::StoreError::Read(
                "deleted lifecycle row".into(),
            )));
        };
        let detail: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
        let resource = match detail.get("before") {
            Some(v @ Value::Object(_)) => v.clone(),
            _ => Value::Object(Default::default()),
        };
        Ok(Some((at, resource)))
    }

    /// Every lifecycle row of one user, oldest first.
    pub async fn lifecycle_events(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<LifecycleEvent>, DirError> {
        let rows = sqlx::query(
            "SELECT seq, tenant_id, user_id, kind, detail, actor_kind, actor_id, actor_name, \
             client_ip, request_id, created FROM lifecycle_events \
             WHERE tenant_id = $1 AND user_id = $2 ORDER BY seq",
        )
        .bind(tenant)
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get(4)?;
                Ok(LifecycleEvent {
                    seq: r.try_get(0)?,
                    tenant_id: r.try_get(1)?,
                    user_id: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
                    actor_kind: r.try_get(5)?,
                    actor_id: r.try_get(6)?,
                    actor_name: r.try_get(7)?,
                    client_ip: r.try_get(8)?,
                    request_id: r.try_get(9)?,
                    created: r.try_get(10)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_events_name_changes_and_never_passwords() {
        let before = json!({"userName": "a", "active": true, "title": "x",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "1"}});
        let after = json!({"userName": "a", "active": false, "title": "y", "password": "secret",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "2"}});
        let ev = update_events(&before, &after);
        assert_eq!(ev[0].0, LifecycleKind::Deactivated);
        assert_eq!(ev[1].0, LifecycleKind::AttributesChanged);
        let names = ev[1].1["attributes"].as_array().unwrap();
        assert_eq!(
            names,
            &vec![
                json!("title"),
                json!("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber")
            ]
        );
        assert_eq!(ev[1].1["before"]["title"], "x");
        assert_eq!(ev[1].1["after"]["title"], "y");
        assert!(!ev[1].1.to_string().contains("secret"));
        // Only active changed: no attributes_changed row.
        let ev = update_events(&json!({"active": false}), &json!({"active": true}));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, LifecycleKind::Reactivated);
        assert!(update_events(&before, &before).is_empty());
        assert_eq!(
            scrub(json!({"a": {"Password": 1, "b": 2}})),
            json!({"a": {"b": 2}})
        );
    }
}
