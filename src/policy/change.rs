//! A policy change as a trigger: store the new version, audit it, and enqueue "converge user"
//! for every user of the tenant, all in the caller's transaction. The admin API, the CLI and
//! the configuration loader all change policies through this one function.

use serde_json::json;
use sqlx::AnyConnection;

use super::store::{latest_version, set_policy, tenant_user_ids, PolicyStoreError, PolicyVersion};
use crate::audit::{self, AuditActor, AuditEntry};

/// What a change did: the version now current, and how many users were queued to converge
/// (None when the text equals the current version, which stores and queues nothing).
pub struct PolicyChange {
    pub version: PolicyVersion,
    pub users_queued: Option<usize>,
}

pub async fn change_policy(
    conn: &mut AnyConnection,
    tenant: &str,
    text: &str,
    set_by: &str,
    actor: AuditActor,
) -> Result<PolicyChange, PolicyStoreError> {
    let before = latest_version(conn, tenant).await?;
    let version = set_policy(conn, tenant, text, set_by).await?;
    if before == Some(version.version) {
        return Ok(PolicyChange {
            version,
            users_queued: None,
        });
    }
    let entry = AuditEntry::new(
        "policy.set",
        actor,
        None,
        json!({"version": version.version, "hash": version.hash, "previous_version": before, "set_by": set_by}),
    );
    audit::append(conn, tenant, entry).await?;
    let ids = tenant_user_ids(conn, tenant).await?;
    for id in &ids {
        crate::jobs::enqueue_converge(conn, tenant, id, "policy_changed", None).await?;
    }
    Ok(PolicyChange {
        version,
        users_queued: Some(ids.len()),
    })
}
