//! The lifecycle engine: `converge(user)` reads what the policy wants for a user and what the
//! factor store holds, plans the difference ([`plan`]), passes destructive actions through the
//! blast-radius [`guard`], executes the rest through the tenant's factor store, and records every
//! decision and outcome in the audit log. Every trigger (a SCIM write, an offboarding, a guard
//! release, a follow-up at `revoke_after`, the nightly run) only asks "converge this user"; the
//! real-time path and the nightly path are this same code, and a second run plans nothing.
//!
//! Also the job dispatcher ([`run_job`]) the workers call, and the hook the directory calls for
//! every lifecycle row ([`hooks`]). Not here: the policy's rules (`policy/`), the factor stores
//! (`factors/`), the queue (`jobs/`), SQL (`store.rs`).

pub mod guard;
pub mod hooks;
pub mod plan;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use crate::audit::{self, AuditActor, AuditEntry};
use crate::directory::Directory;
use crate::factors::{self, FactorError, FactorStore, FactorType, MasterKey};
use crate::jobs::{self, Job, JobError, JobsConfig};
use crate::notify::{self, events};
use crate::policy::{self, desired_state, DesiredState, Lifecycle, Policy, RequireRule, UserFacts};
use crate::store::{ts_from, Db, StoreError};

pub use guard::{GuardStatus, Resolution};
pub use plan::{plan, Action, MarkedRequirement, Observed};
pub use store::QuarantineEntry;

/// Longest a single factor-store call may take before it counts as a retryable failure.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What converge and the workers need. Cheap to clone.
#[derive(Clone)]
pub struct EngineCtx {
    pub db: Db,
    pub directory: Directory,
    pub master_key: Arc<MasterKey>,
    pub jobs: JobsConfig,
}

impl EngineCtx {
    pub fn new(db: Db, master_key: Arc<MasterKey>) -> EngineCtx {
        EngineCtx {
            directory: Directory::new(db.clone()),
            db,
            master_key,
            jobs: JobsConfig::default(),
        }
    }

    fn factor_store(&self, tenant: &str) -> Arc<dyn FactorStore> {
        factors::store_for_tenant(&self.db, self.master_key.clone(), tenant)
    }
}

/// Why converge could not finish. `retryable`: running it again later can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConvergeError {
    pub retryable: bool,
    pub message: String,
}

impl ConvergeError {
    fn retryable(message: impl Into<String>) -> Self {
        ConvergeError {
            retryable: true,
            message: message.into(),
        }
    }
    fn permanent(message: impl Into<String>) -> Self {
        ConvergeError {
            retryable: false,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ConvergeError {
    fn from(e: StoreError) -> Self {
        ConvergeError::retryable(format!("database: {e}"))
    }
}

impl From<sqlx::Error> for ConvergeError {
    fn from(e: sqlx::Error) -> Self {
        ConvergeError::retryable(format!("database: {e}"))
    }
}

impl From<crate::directory::DirError> for ConvergeError {
    fn from(e: crate::directory::DirError) -> Self {
        ConvergeError::retryable(format!("directory: {e}"))
    }
}

impl From<FactorError> for ConvergeError {
    fn from(e: FactorError) -> Self {
        ConvergeError {
            retryable: e.retryable,
            message: format!("factor store: {}", e.message),
        }
    }
}

impl From<ConvergeError> for JobError {
    fn from(e: ConvergeError) -> Self {
        JobError {
            retryable: e.retryable,
            message: e.message,
        }
    }
}

/// How a converge was asked for.
#[derive(Debug, Clone)]
pub struct ConvergeOptions {
    /// What asked: a lifecycle kind (`deactivated`, …), `offboarding`, `guard_release`,
    /// `scheduled`, `reconcile`, `manual`. Recorded in the decision.
    pub trigger: String,
    /// Record the policy decision even when nothing is to be done (evidence that a SCIM
    /// deactivation was looked at). Otherwise only decisions with actions are recorded.
    pub record_noop: bool,
}

impl Default for ConvergeOptions {
    fn default() -> Self {
        ConvergeOptions {
            trigger: "manual".into(),
            record_noop: true,
        }
    }
}

impl ConvergeOptions {
    /// Options for a trigger name, recording no-op decisions only for triggers a person would
    /// look for in the audit (lifecycle changes, offboardings, manual runs, releases).
    pub fn for_trigger(trigger: &str) -> ConvergeOptions {
        let record_noop = matches!(
            trigger,
            "created"
                | "deactivated"
                | "reactivated"
                | "deleted"
                | "offboarding"
                | "guard_release"
                | "manual"
        );
        ConvergeOptions {
            trigger: trigger.to_string(),
            record_noop,
        }
    }
}

/// One action that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedAction {
    pub action: Action,
    pub error: String,
    pub retryable: bool,
}

/// What one converge did.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ConvergeOutcome {
    pub user_id: String,
    /// False when the user exists nowhere (never created, or deleted without a trace).
    pub found: bool,
    /// The factor-store key (`[link] by`); None when the user has no such attribute.
    pub link_key: Option<String>,
    pub policy_hash: Option<String>,
    pub audit_only: bool,
    pub planned: Vec<Action>,
    pub executed: Vec<Action>,
    pub failed: Vec<FailedAction>,
    /// Held back by the guard.
    pub quarantined: Vec<Action>,
    /// This converge tripped the guard.
    pub tripped_guard: bool,
    /// When the follow-up converge is due (revoke_after, a requirement deadline).
    pub next_due: Option<String>,
}

/// A user with everything converge reads about them.
#[derive(Debug, Clone)]
pub struct UserView {
    pub user_id: String,
    /// The SCIM resource with `groups` filled in (or, for a deleted user, its last resource).
    pub resource: Value,
    pub lifecycle: Lifecycle,
}

/// Time text → time; unreadable text is "now" (the conservative reading for "since": nothing
/// is revoked earlier than it would be).
fn parse_time(s: &str, now: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now)
}

/// Loads a user as converge sees them: live (with groups and when they were deactivated), or
/// deleted (the last resource from the `deleted` lifecycle row), or None.
pub async fn load_user(
    ctx: &EngineCtx,
    tenant: &str,
    user_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<UserView>, ConvergeError> {
    if let Some(u) = ctx.directory.get_user(tenant, user_id).await? {
        let groups = ctx.directory.user_groups(tenant, user_id).await?;
        let mut resource = u.resource;
        if let Value::Object(map) = &mut resource {
            map.insert("id".into(), Value::String(u.id.clone()));
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    json!({
                        "value": g.value,
                        "display": g.display,
                        "type": if g.direct { "direct" } else { "indirect" },
                    })
                })
                .collect();
            map.insert("groups".into(), Value::Array(groups));
        }
        let active = resource
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let lifecycle = if active {
            Lifecycle::Active
        } else {
            let since =
                match store::last_lifecycle(&ctx.db.pool, tenant, user_id, "deactivated").await? {
                    Some((at, _)) => parse_time(&at, now),
                    // Created inactive: inactive since it was last written.
                    None => parse_time(&u.last_modified, now),
                };
            Lifecycle::Deactivated { since }
        };
        return Ok(Some(UserView {
            user_id: user_id.to_string(),
            resource,
            lifecycle,
        }));
    }
    match store::last_lifecycle(&ctx.db.pool, tenant, user_id, "deleted").await? {
        Some((at, detail)) => {
            let detail: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
            let mut resource = detail.get("before").cloned().unwrap_or(Value::Null);
            if !resource.is_object() {
                resource = json!({});
            }
            if let Value::Object(map) = &mut resource {
                map.insert("id".into(), Value::String(user_id.to_string()));
            }
            Ok(Some(UserView {
                user_id: user_id.to_string(),
                resource,
                lifecycle: Lifecycle::Deleted {
                    since: parse_time(&at, now),
                },
            }))
        }
        None => Ok(None),
    }
}

/// A `[[require]]` rule's identity for the bookkeeping: its `who` and types, so editing other
/// rules (which shifts indexes) does not restart a user's grace period.
pub fn rule_key(rule: &RequireRule) -> String {
    let types: Vec<&str> = rule.factors.iter().map(|t| t.as_str()).collect();
    let text = format!("{}\u{0}{}", rule.who_text, types.join(","));
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

/// Everything converge computes before acting; also what `policy simulate` shows.
#[derive(Debug, Clone)]
pub struct UserPlan {
    pub user: UserView,
    pub link_key: Option<String>,
    pub desired: Option<DesiredState>,
    pub observed: Option<Observed>,
    pub actions: Vec<Action>,
    pub next_due: Option<DateTime<Utc>>,
    /// Bookkeeping rows as they were read (rule key → row).
    existing_rows: HashMap<String, store::EnforcementRow>,
}

/// Reads a user's desired and actual state under `policy` and plans the difference, changing
/// nothing. None when the user does not exist.
pub async fn plan_user(
    ctx: &EngineCtx,
    tenant: &str,
    user_id: &str,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Option<UserPlan>, ConvergeError> {
    let Some(user) = load_user(ctx, tenant, user_id, now).await? else {
        return Ok(None);
    };
    let link_key = factors::link_key(&user.resource, policy.link_by);
    let rows = store::load_enforcement(&ctx.db.pool, tenant, user_id).await?;
    let existing_rows: HashMap<String, store::EnforcementRow> =
        rows.into_iter().map(|r| (r.rule_key.clone(), r)).collect();
    let Some(key) = link_key.clone() else {
        return Ok(Some(UserPlan {
            user,
            link_key: None,
            desired: None,
            observed: None,
            actions: Vec::new(),
            next_due: None,
            existing_rows,
        }));
    };
    let fstore = ctx.factor_store(tenant);
    let factor_list = timed(fstore.list_factors(tenant, &key)).await?;
    let sessions = timed(fstore.list_sessions(tenant, &key)).await?;

    let mut requirement_since = HashMap::new();
    let mut requirements = HashMap::new();
    for (i, rule) in policy.require.iter().enumerate() {
        if let Some(row) = existing_rows.get(&rule_key(rule)) {
            let since = parse_time(&row.since, now);
            requirement_since.insert(i, since);
            let types: Vec<FactorType> = serde_json::from_str(&row.types).unwrap_or_default();
            requirements.insert(
                i,
                MarkedRequirement {
                    types,
                    since,
                    deadline: row.deadline.clone(),
                    marked: row.marked,
                    overdue: row.overdue,
                },
            );
        }
    }
    let facts = UserFacts {
        resource: user.resource.clone(),
        lifecycle: user.lifecycle,
        requirement_since,
    };
    let desired = desired_state(&facts, policy, now);
    let observed = Observed {
        lifecycle: user.lifecycle,
        factors: factor_list,
        sessions,
        requirements,
    };
    let actions = plan::plan(&desired, &observed, now);
    let next_due = plan::next_due(&desired, &observed, now);
    Ok(Some(UserPlan {
        user,
        link_key: Some(key),
        desired: Some(desired),
        observed: Some(observed),
        actions,
        next_due,
        existing_rows,
    }))
}

async fn timed<T>(
    f: futures_util::future::BoxFuture<'_, Result<T, FactorError>>,
) -> Result<T, FactorError> {
    match tokio::time::timeout(STORE_CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(FactorError::retryable("factor store call timed out")),
    }
}

/// Converges one user with default options (a manual run).
pub async fn converge(
    ctx: &EngineCtx,
    tenant: &str,
    user_id: &str,
) -> Result<ConvergeOutcome, ConvergeError> {
    converge_with(ctx, tenant, user_id, &ConvergeOptions::default()).await
}

fn system_actor() -> AuditActor {
    AuditActor::system("engine", "deprovd lifecycle engine")
}

fn lifecycle_json(l: &Lifecycle) -> Value {
    match l {
        Lifecycle::Active => json!({"state": "active"}),
        Lifecycle::Deactivated { since } => {
            json!({"state": "deactivated", "since": ts_from(*since)})
        }
        Lifecycle::Deleted { since } => json!({"state": "deleted", "since": ts_from(*since)}),
    }
}

fn desired_json(d: &DesiredState) -> Value {
    let factors = match d.factors {
        policy::FactorDisposition::Keep => json!({"disposition": "keep"}),
        policy::FactorDisposition::Suspend { revoke_at } => {
            json!({"disposition": "suspend", "revoke_at": ts_from(revoke_at)})
        }
        policy::FactorDisposition::Revoke => json!({"disposition": "revoke"}),
    };
    json!({
        "factors": factors,
        "end_sessions": d.end_sessions,
        "required": d.required.iter().map(|r| json!({
            "types": r.types, "deadline": ts_from(r.deadline), "rule": r.rule,
        })).collect::<Vec<_>>(),
        "forbidden": d.forbidden,
        "audit_only": d.audit_only,
    })
}

/// The enforcement rows a converge leaves: one per unmet requirement (keeping its `since`),
/// with the marked/overdue flags the executed actions earned.
fn enforcement_rows(
    policy: &Policy,
    plan: &UserPlan,
    executed: &[Action],
    now: DateTime<Utc>,
) -> Vec<store::EnforcementRow> {
    let (Some(desired), Some(observed)) = (&plan.desired, &plan.observed) else {
        return Vec::new();
    };
    let usable = plan::usable_types(desired, observed, now);
    let mut out = Vec::new();
    for req in &desired.required {
        if req.types.iter().any(|t| usable.contains(t)) {
            continue;
        }
        let Some(rule) = policy.require.get(req.rule) else {
            continue;
        };
        let key = rule_key(rule);
        let deadline = ts_from(req.deadline);
        let old = plan.existing_rows.get(&key);
        let types = serde_json::to_string(&req.types).unwrap_or_else(|_| "[]".into());
        let same = old.is_some_and(|o| o.deadline == deadline && o.types == types);
        let marked_now = executed
            .iter()
            .any(|a| matches!(a, Action::RequireEnrollment { rule, .. } if *rule == req.rule));
        let overdue_now = executed
            .iter()
            .any(|a| matches!(a, Action::RequirementOverdue { rule, .. } if *rule == req.rule));
        out.push(store::EnforcementRow {
            rule_key: key,
            types,
            since: old.map(|o| o.since.clone()).unwrap_or_else(|| ts_from(now)),
            deadline,
            marked: marked_now || (same && old.is_some_and(|o| o.marked)),
            overdue: overdue_now || (same && old.is_some_and(|o| o.overdue)),
        });
    }
    out
}

/// Converges one user: plan → guard → execute → record. See the module doc.
pub async fn converge_with(
    ctx: &EngineCtx,
    tenant: &str,
    user_id: &str,
    opts: &ConvergeOptions,
) -> Result<ConvergeOutcome, ConvergeError> {
    let now = Utc::now();
    let (policy, version) = policy::current_policy(&ctx.db, tenant)
        .await
        .map_err(|e| match e {
            policy::store::PolicyStoreError::Store(e) => ConvergeError::from(e),
            other => ConvergeError::permanent(format!("policy: {other}")),
        })?;
    let mut outcome = ConvergeOutcome {
        user_id: user_id.to_string(),
        policy_hash: version.as_ref().map(|v| v.hash.clone()),
        audit_only: policy.audit_only(),
        ..ConvergeOutcome::default()
    };
    let Some(up) = plan_user(ctx, tenant, user_id, &policy, now).await? else {
        tracing::debug!(tenant, user_id, "converge: no such user");
        return Ok(outcome);
    };
    outcome.found = true;
    outcome.link_key = up.link_key.clone();
    outcome.planned = up.actions.clone();
    outcome.next_due = up.next_due.map(ts_from);

    let audit_only = policy.audit_only();
    let destructive: Vec<Action> = up
        .actions
        .iter()
        .filter(|a| a.is_destructive())
        .cloned()
        .collect();
    let rows_before: Vec<&store::EnforcementRow> = up.existing_rows.values().collect();
    let rows_after = enforcement_rows(&policy, &up, &[], now);
    let bookkeeping_changes = rows_after.len() != rows_before.len()
        || rows_after
            .iter()
            .any(|r| up.existing_rows.get(&r.rule_key) != Some(r));

    // 1. The decision: audit, guard, quarantine, follow-up — one transaction, before acting.
    let has_quarantine = !store::list_quarantine_user(&ctx.db, tenant, user_id)
        .await?
        .is_empty();
    let must_record = !up.actions.is_empty() || opts.record_noop;
    let verdict = if must_record || up.next_due.is_some() || has_quarantine {
        let decision = json!({
            "trigger": opts.trigger,
            "policy": {
                "version": version.as_ref().map(|v| v.version),
                "hash": version.as_ref().map(|v| v.hash.clone()),
                "mode": if audit_only { "audit-only" } else { "enforce" },
            },
            "lifecycle": lifecycle_json(&up.user.lifecycle),
            "link_key": up.link_key,
            "desired": up.desired.as_ref().map(desired_json),
            "plan": up.actions,
            "next_due": outcome.next_due,
        });
        let (engine, t, u) = (ctx.db.engine, tenant.to_string(), user_id.to_string());
        let actions = up.actions.clone();
        let destructive = destructive.clone();
        let guard_rule = policy.guard.clone();
        let due = outcome.next_due.clone();
        ctx.db
            .write(move |conn: &mut AnyConnection| {
                Box::pin(async move {
                    decide(
                        conn,
                        engine,
                        &t,
                        &u,
                        decision,
                        must_record,
                        audit_only,
                        &actions,
                        &destructive,
                        &guard_rule,
                        due.as_deref(),
                        now,
                    )
                    .await
                })
            })
            .await?
    } else {
        guard::Verdict::Execute
    };
    if let guard::Verdict::Quarantine { tripped_now, .. } = &verdict {
        outcome.quarantined = destructive.clone();
        outcome.tripped_guard = *tripped_now;
    }
    if audit_only {
        if bookkeeping_changes {
            write_outcomes(ctx, tenant, user_id, &up, Vec::new(), rows_after).await?;
        }
        return Ok(outcome);
    }

    // 2. Execute, one action at a time, through the tenant's factor store.
    let quarantined = matches!(verdict, guard::Verdict::Quarantine { .. });
    let to_run: Vec<Action> = up
        .actions
        .iter()
        .filter(|a| !(quarantined && a.is_destructive()))
        .cloned()
        .collect();
    let mut results: Vec<(Action, Result<Value, FactorError>)> = Vec::new();
    if let Some(key) = &up.link_key {
        let fstore = ctx.factor_store(tenant);
        for a in to_run {
            let r = execute(fstore.as_ref(), tenant, key, &a).await;
            results.push((a, r));
        }
    }
    for (a, r) in &results {
        match r {
            Ok(_) => outcome.executed.push(a.clone()),
            Err(e) => outcome.failed.push(FailedAction {
                action: a.clone(),
                error: e.message.clone(),
                retryable: e.retryable,
            }),
        }
    }

    // 3. Record the outcomes (and the enforcement bookkeeping they change).
    let rows_after = enforcement_rows(&policy, &up, &outcome.executed, now);
    let bookkeeping_changes = rows_after.len() != rows_before.len()
        || rows_after
            .iter()
            .any(|r| up.existing_rows.get(&r.rule_key) != Some(r));
    if !results.is_empty() || bookkeeping_changes {
        write_outcomes(ctx, tenant, user_id, &up, results, rows_after).await?;
    }

    if !outcome.failed.is_empty() {
        let retryable = outcome.failed.iter().any(|f| f.retryable);
        let msg: Vec<String> = outcome
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.action.name(), f.error))
            .collect();
        return Err(ConvergeError {
            retryable,
            message: format!(
                "{} action(s) failed: {}",
                outcome.failed.len(),
                msg.join("; ")
            ),
        });
    }
    Ok(outcome)
}

/// The decision transaction of a converge. Returns the guard's verdict.
#[allow(clippy::too_many_arguments)]
async fn decide(
    conn: &mut AnyConnection,
    engine: crate::store::Engine,
    tenant: &str,
    user_id: &str,
    decision: Value,
    record: bool,
    audit_only: bool,
    actions: &[Action],
    destructive: &[Action],
    guard_rule: &policy::GuardRule,
    due: Option<&str>,
    now: DateTime<Utc>,
) -> Result<guard::Verdict, StoreError> {
    let held = store::get_quarantine(conn, tenant, user_id).await?;
    let bypass = held.as_ref().is_some_and(|q| q.released.is_some());
    let mut verdict = guard::Verdict::Execute;
    if !audit_only && !destructive.is_empty() {
        verdict = guard::check(
            conn,
            engine,
            tenant,
            user_id,
            destructive.len(),
            guard_rule,
            bypass,
            now,
        )
        .await?;
    }
    if record {
        audit::append(
            conn,
            tenant,
            AuditEntry::new(
                audit::kinds::POLICY_DECISION,
                system_actor(),
                Some(user_id),
                decision,
            ),
        )
        .await?;
    }
    match &verdict {
        guard::Verdict::Execute => {
            // Whatever was held for this user is superseded by this converge's plan.
            if held.is_some() && !audit_only {
                store::delete_quarantine(conn, tenant, user_id).await?;
            }
        }
        guard::Verdict::Quarantine {
            tripped_now,
            reason,
        } => {
            let held_actions = serde_json::to_value(destructive).unwrap_or(Value::Null);
            let qid = store::upsert_quarantine(conn, tenant, user_id, &held_actions).await?;
            if *tripped_now {
                tracing::error!(
                    tenant, user_id, %reason,
                    "blast-radius guard tripped: destructive actions are quarantined until an \
                     admin releases or discards them (deprovd guard status --tenant …)"
                );
                let detail = json!({ "reason": reason, "user_id": user_id });
                audit::append(
                    conn,
                    tenant,
                    AuditEntry::new(
                        audit::kinds::GUARD_TRIPPED,
                        system_actor(),
                        None,
                        detail.clone(),
                    ),
                )
                .await?;
                notify::enqueue_event(conn, tenant, events::GUARD_TRIPPED, None, detail).await?;
            }
            audit::append(
                conn,
                tenant,
                AuditEntry::new(
                    audit::kinds::ACTION_QUARANTINED,
                    system_actor(),
                    Some(user_id),
                    json!({ "quarantine_id": qid, "actions": held_actions, "reason": reason }),
                ),
            )
            .await?;
        }
    }
    if audit_only {
        for a in actions {
            audit::append(
                conn,
                tenant,
                AuditEntry::new(
                    audit::kinds::ACTION_WOULD_EXECUTE,
                    system_actor(),
                    Some(user_id),
                    json!({ "action": a, "mode": "audit-only" }),
                ),
            )
            .await?;
        }
    }
    if let Some(due) = due {
        jobs::enqueue_converge(conn, tenant, user_id, "scheduled", Some(due)).await?;
    }
    Ok(verdict)
}

/// Runs one action through the factor store; the JSON says what it did.
async fn execute(
    fstore: &dyn FactorStore,
    tenant: &str,
    key: &str,
    action: &Action,
) -> Result<Value, FactorError> {
    match action {
        Action::SuspendFactor { factor_id, .. } => timed(fstore.suspend(tenant, key, factor_id))
            .await
            .map(|_| json!({})),
        Action::ResumeFactor { factor_id, .. } => timed(fstore.resume(tenant, key, factor_id))
            .await
            .map(|_| json!({})),
        Action::RevokeFactor { factor_id, .. } => timed(fstore.revoke(tenant, key, factor_id))
            .await
            .map(|_| json!({})),
        Action::RevokeSessions { .. } => timed(fstore.revoke_sessions(tenant, key))
            .await
            .map(|n| json!({ "sessions_ended": n })),
        Action::RequireEnrollment {
            types, deadline, ..
        } => timed(fstore.require_enrollment(tenant, key, types, deadline))
            .await
            .map(|_| json!({})),
        // Nothing to tell the store: recorded and alerted below.
        Action::RequirementOverdue { .. } => Ok(json!({})),
    }
}

/// The webhook event an executed action emits, if any.
fn event_for(action: &Action) -> Option<&'static str> {
    match action {
        Action::SuspendFactor { .. } => Some(events::FACTOR_SUSPENDED),
        Action::ResumeFactor { .. } => Some(events::FACTOR_RESUMED),
        Action::RevokeFactor { .. } => Some(events::FACTOR_REVOKED),
        Action::RevokeSessions { .. } => Some(events::SESSIONS_REVOKED),
        Action::RequireEnrollment { .. } | Action::RequirementOverdue { .. } => {
            Some(events::ENFORCEMENT_REQUIRED)
        }
    }
}

/// The outcome transaction: an audit entry per action (and a webhook event per success), and
/// the enforcement bookkeeping.
async fn write_outcomes(
    ctx: &EngineCtx,
    tenant: &str,
    user_id: &str,
    up: &UserPlan,
    results: Vec<(Action, Result<Value, FactorError>)>,
    rows: Vec<store::EnforcementRow>,
) -> Result<(), ConvergeError> {
    let (t, u) = (tenant.to_string(), user_id.to_string());
    let link_key = up.link_key.clone();
    let stale_keys: Vec<String> = up
        .existing_rows
        .keys()
        .filter(|k| !rows.iter().any(|r| &r.rule_key == *k))
        .cloned()
        .collect();
    let changed: Vec<store::EnforcementRow> = rows
        .into_iter()
        .filter(|r| up.existing_rows.get(&r.rule_key) != Some(r))
        .collect();
    ctx.db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                for (action, result) in &results {
                    match result {
                        Ok(res) => {
                            let detail =
                                json!({ "action": action, "result": res, "link_key": link_key });
                            audit::append(
                                conn,
                                &t,
                                AuditEntry::new(
                                    audit::kinds::ACTION_EXECUTED,
                                    system_actor(),
                                    Some(&u),
                                    detail,
                                ),
                            )
                            .await?;
                            if let Some(ev) = event_for(action) {
                                let mut payload = json!({ "user_id": u, "action": action });
                                if let Action::RequirementOverdue { .. } = action {
                                    payload["overdue"] = json!(true);
                                }
                                notify::enqueue_event(conn, &t, ev, Some(&u), payload).await?;
                            }
                        }
                        Err(e) => {
                            let detail = json!({
                                "action": action, "error": e.message, "retryable": e.retryable,
                                "link_key": link_key,
                            });
                            audit::append(
                                conn,
                                &t,
                                AuditEntry::new(
                                    audit::kinds::ACTION_FAILED,
                                    system_actor(),
                                    Some(&u),
                                    detail,
                                ),
                            )
                            .await?;
                        }
                    }
                }
                for row in &changed {
                    store::upsert_enforcement(conn, &t, &u, row).await?;
                }
                for key in &stale_keys {
                    store::delete_enforcement(conn, &t, &u, key).await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await?;
    Ok(())
}

/// The job dispatcher the workers call: converge and offboard jobs.
pub async fn run_job(ctx: &EngineCtx, job: &Job) -> Result<(), JobError> {
    match job.kind.as_str() {
        jobs::kinds::CONVERGE => {
            let Some(user_id) = job.user_id.as_deref() else {
                return Err(JobError::permanent("converge job without a user"));
            };
            let trigger = job
                .payload
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("manual");
            converge_with(
                ctx,
                &job.tenant_id,
                user_id,
                &ConvergeOptions::for_trigger(trigger),
            )
            .await
            .map(|_| ())
            .map_err(JobError::from)
        }
        jobs::kinds::OFFBOARD => crate::offboarding::run_job(ctx, job).await,
        other => Err(JobError::permanent(format!("unknown job kind {other:?}"))),
    }
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
