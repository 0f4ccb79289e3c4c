//! HR offboarding: "deactivate this person now, or at this time". Scheduling stores the
//! offboarding and a due `offboard` job in one transaction; the job deactivates the user through
//! the directory (`active = false`), whose lifecycle row converges the user like any IdP
//! deactivation. A user who is already inactive (the IdP got there first, or gets there later) is
//! a no-op, never a conflict. Cancellable while its job has not started.
//!
//! Not here: what a deactivation does to factors (the engine), HTTP and CLI parsing.

pub mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::AnyConnection;

use crate::audit::{self, AuditActor, AuditEntry};
use crate::directory::{Actor, ActorKind, DirError};
use crate::engine::EngineCtx;
use crate::jobs::{self, Job, JobError};
use crate::scim::ScimError;
use crate::store::{now_ts, ts_from, Db, StoreError};

/// Longest reason and ticket kept.
const MAX_TEXT: usize = 1000;

/// One offboarding. JSON field names are the admin API's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Offboarding {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub user_name: String,
    /// When the user is (or was) deactivated.
    pub at: String,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    /// scheduled | done | cancelled | failed
    pub state: String,
    pub job_id: String,
    pub created_by: String,
    pub created: String,
    pub done_at: Option<String>,
    /// What happened: `deactivated`, `already_inactive`, `already_deleted`, or an error.
    pub outcome: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OffboardError {
    #[error("no user with userName {0:?} in this tenant")]
    UnknownUser(String),
    #[error("offboarding not found")]
    NotFound,
    /// Only a scheduled offboarding whose job has not started can be cancelled.
    #[error("offboarding is {0} and can no longer be cancelled")]
    NotCancellable(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for OffboardError {
    fn from(e: sqlx::Error) -> Self {
        OffboardError::Store(StoreError::Database(e))
    }
}

fn clean(text: Option<String>, what: &str) -> Result<Option<String>, OffboardError> {
    match text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        Some(t) if t.chars().count() > MAX_TEXT => Err(OffboardError::Invalid(format!(
            "{what} is longer than {MAX_TEXT} characters"
        ))),
        other => Ok(other),
    }
}

/// Schedules the offboarding of `user_name` at `at` (now when None or in the past).
pub async fn schedule(
    db: &Db,
    actor: &Actor,
    tenant_id: &str,
    user_name: &str,
    at: Option<DateTime<Utc>>,
    reason: Option<String>,
    ticket: Option<String>,
) -> Result<Offboarding, OffboardError> {
    let reason = clean(reason, "reason")?;
    let ticket = clean(ticket, "ticket")?;
    let user = crate::directory::Directory::new(db.clone())
        .find_user_by_user_name(tenant_id, user_name)
        .await
        .map_err(|e| match e {
            crate::directory::DirError::Store(e) => OffboardError::Store(e),
            other => OffboardError::Invalid(other.to_string()),
        })?;
    let Some(user) = user else {
        return Err(OffboardError::UnknownUser(user_name.to_string()));
    };
    let user_id = user.id;
    let stored_name = user.resource["userName"]
        .as_str()
        .unwrap_or(user_name)
        .to_string();
    let now = now_ts();
    let at = at
        .map(ts_from)
        .filter(|t| *t > now)
        .unwrap_or_else(|| now.clone());
    let o = Offboarding {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant_id.to_string(),
        user_id,
        user_name: stored_name,
        at,
        reason,
        ticket,
        state: "scheduled".into(),
        job_id: String::new(),
        created_by: format!("{}:{}", actor.kind.as_str(), actor.name),
        created: now,
        done_at: None,
        outcome: None,
    };
    let audit_actor = AuditActor::from_actor(actor);
    let out = db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                let mut o = o;
                o.job_id = jobs::enqueue_in_tx(
                    conn,
                    &o.tenant_id,
                    jobs::kinds::OFFBOARD,
                    Some(&o.user_id),
                    json!({ "offboarding_id": o.id }),
                    Some(&o.at),
                )
                .await?;
                store::insert(conn, &o).await?;
                audit::append(
                    conn,
                    &o.tenant_id,
                    AuditEntry::new(
                        audit::kinds::OFFBOARDING_SCHEDULED,
                        audit_actor,
                        Some(&o.user_id),
                        json!({
                            "offboarding_id": o.id, "user_name": o.user_name, "at": o.at,
                            "reason": o.reason, "ticket": o.ticket,
                        }),
                    ),
                )
                .await?;
                Ok::<_, StoreError>(o)
            })
        })
        .await?;
    Ok(out)
}

/// Cancels a scheduled offboarding whose job has not started.
pub async fn cancel(
    db: &Db,
    actor: &Actor,
    tenant_id: &str,
    id: &str,
) -> Result<Offboarding, OffboardError> {
    let (tenant, id) = (tenant_id.to_string(), id.to_string());
    let audit_actor = AuditActor::from_actor(actor);
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            let Some(o) = store::get(&mut *conn, &tenant, &id).await? else {
                return Err(OffboardError::NotFound);
            };
            if o.state != "scheduled" {
                return Err(OffboardError::NotCancellable(o.state));
            }
            // The job is the point of no return: once leased, the deactivation may be running.
            if !jobs::cancel_pending(conn, &o.job_id).await? {
                return Err(OffboardError::NotCancellable("in progress".into()));
            }
            store::finish(conn, &tenant, &id, "cancelled", "cancelled").await?;
            audit::append(
                conn,
                &tenant,
                AuditEntry::new(
                    audit::kinds::OFFBOARDING_CANCELLED,
                    audit_actor,
                    Some(&o.user_id),
                    json!({ "offboarding_id": o.id, "user_name": o.user_name, "at": o.at }),
                ),
            )
            .await?;
            let mut o = o;
            o.state = "cancelled".into();
            o.outcome = Some("cancelled".into());
            Ok(o)
        })
    })
    .await
}

/// The tenant's offboardings, newest first.
pub async fn list(db: &Db, tenant_id: &str) -> Result<Vec<Offboarding>, OffboardError> {
    Ok(store::list(&db.pool, tenant_id, 1000).await?)
}

pub async fn get(db: &Db, tenant_id: &str, id: &str) -> Result<Option<Offboarding>, OffboardError> {
    Ok(store::get(&db.pool, tenant_id, id).await?)
}

/// Records the end of an offboarding (and its audit entry) unless it was not scheduled any more.
async fn finish(
    db: &Db,
    o: &Offboarding,
    state: &'static str,
    outcome: String,
) -> Result<(), StoreError> {
    let o = o.clone();
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            if !store::finish(conn, &o.tenant_id, &o.id, state, &outcome).await? {
                return Ok::<_, StoreError>(());
            }
            let kind = if state == "done" {
                audit::kinds::OFFBOARDING_DONE
            } else {
                audit::kinds::OFFBOARDING_FAILED
            };
            audit::append(
                conn,
                &o.tenant_id,
                AuditEntry::new(
                    kind,
                    AuditActor::system("offboarding", "deprovd offboarding"),
                    Some(&o.user_id),
                    json!({
                        "offboarding_id": o.id, "user_name": o.user_name, "outcome": outcome,
                        "reason": o.reason, "ticket": o.ticket,
                    }),
                ),
            )
            .await?;
            Ok(())
        })
    })
    .await
}

/// The `offboard` job: deactivate the user and mark the offboarding done.
pub async fn run_job(ctx: &EngineCtx, job: &Job) -> Result<(), JobError> {
    let Some(id) = job.payload.get("offboarding_id").and_then(Value::as_str) else {
        return Err(JobError::permanent(
            "offboard job without an offboarding_id",
        ));
    };
    let retry = |e: &dyn std::fmt::Display| JobError::retryable(format!("offboarding {id}: {e}"));
    let Some(o) = store::get(&ctx.db.pool, &job.tenant_id, id)
        .await
        .map_err(|e| retry(&e))?
    else {
        tracing::warn!(
            offboarding = id,
            "offboard job for a missing offboarding; nothing to do"
        );
        return Ok(());
    };
    if o.state != "scheduled" {
        return Ok(());
    }
    let user = ctx
        .directory
        .get_user(&o.tenant_id, &o.user_id)
        .await
        .map_err(|e| retry(&e))?;
    let inactive = |r: &Value| r.get("active").and_then(Value::as_bool) == Some(false);
    let outcome = match user {
        None => "already_deleted".to_string(),
        Some(u) if inactive(&u.resource) => "already_inactive".to_string(),
        Some(_) => {
            let actor = Actor {
                tenant_id: o.tenant_id.clone(),
                kind: ActorKind::System,
                id: format!("offboarding:{}", o.id),
                name: format!("HR offboarding (scheduled by {})", o.created_by),
                client_ip: None,
                request_id: None,
            };
            let mutate: crate::directory::users::Mutate = Box::new(|old| {
                let mut r = old.resource.clone();
                match &mut r {
                    Value::Object(m) => {
                        m.insert("active".into(), Value::Bool(false));
                        Ok(r)
                    }
                    _ => Err(ScimError::invalid_value("stored user is not a JSON object")),
                }
            });
            match ctx
                .directory
                .update_user(&actor, &o.tenant_id, &o.user_id, None, mutate)
                .await
            {
                Ok(_) => "deactivated".to_string(),
                Err(DirError::NotFound) => "already_deleted".to_string(),
                Err(DirError::Store(e)) => return Err(retry(&e)),
                Err(e) => {
                    let msg = format!("cannot deactivate: {e}");
                    finish(&ctx.db, &o, "failed", msg.clone())
                        .await
                        .map_err(|e| retry(&e))?;
                    return Err(JobError::permanent(format!("offboarding {id}: {msg}")));
                }
            }
        }
    };
    finish(&ctx.db, &o, "done", outcome)
        .await
        .map_err(|e| retry(&e))
}

#[cfg(test)]
mod tests;
