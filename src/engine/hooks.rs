//! The one hook the directory calls for every lifecycle row it records, inside the write's own
//! transaction: it appends the audit entry for the SCIM write and enqueues "converge this user".
//! So a SCIM change, its audit entry and its converge job commit together or not at all (a 2xx
//! means it will happen). Not here: what converge does.

use serde_json::Value;
use sqlx::AnyConnection;

use crate::audit::{self, AuditActor, AuditEntry};
use crate::directory::Actor;

/// Audit kind of a directory write: `scim.user.<lifecycle kind>` (`scim.user.deactivated`, …),
/// whoever the actor (the actor fields say who: an IdP token, an admin, an offboarding).
pub fn audit_kind(lifecycle_kind: &str) -> String {
    format!("scim.user.{lifecycle_kind}")
}

/// Called by `directory::lifecycle::record_lifecycle` for every row, on the write's connection.
pub async fn on_lifecycle_event(
    conn: &mut AnyConnection,
    actor: &Actor,
    tenant_id: &str,
    user_id: &str,
    kind: &str,
    detail: &Value,
) -> Result<(), sqlx::Error> {
    crate::jobs::enqueue_converge(conn, tenant_id, user_id, kind, None).await?;
    // Last: on PostgreSQL the tenant's chain head stays locked from here to commit.
    audit::append(
        conn,
        tenant_id,
        AuditEntry::new(
            &audit_kind(kind),
            AuditActor::from_actor(actor),
            Some(user_id),
            detail.clone(),
        ),
    )
    .await
}
