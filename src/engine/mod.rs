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
use crate::factors::{self, FactorChange, FactorError, FactorStore, FactorType, MasterKey};
use crate::jobs::{self, Finished, Job, JobError, JobsConfig};
use crate::notify::{self, events};
use crate::policy::{self, desired_state, DesiredState, Lifecycle, Policy, RequireRule, UserFacts};
use crate::store::{ts_from, Db, Engine, StoreError};

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
    /// The job this converge runs for, as (job id, worker id): converge marks it done in its
    /// last transaction when nothing failed.
    pub job: Option<(String, String)>,
}

impl Default for ConvergeOptions {
    fn default() -> Self {
        ConvergeOptions {
            trigger: "manual".into(),
            record_noop: true,
            job: None,
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
            job: None,
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
    /// The job (`ConvergeOptions::job`) was marked done by this converge.
    #[serde(skip)]
    pub job_completed: bool,
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
    // Three independent reads at once: the real-time path waits for the slowest, not the sum.
    let (user, groups, deactivated) = tokio::try_join!(
        async { Ok::<_, ConvergeError>(ctx.directory.get_user(tenant, user_id).await?) },
        async { Ok::<_, ConvergeError>(ctx.directory.user_groups(tenant, user_id).await?) },
        async {
            Ok::<_, ConvergeError>(
                store::last_lifecycle(&ctx.db.pool, tenant, user_id, "deactivated").await?,
            )
        },
    )?;
    if let Some(u) = user {
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
            let since = match deactivated {
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
    match ctx.directory.deleted_user(tenant, user_id).await? {
        Some((at, mut resource)) => {
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
    /// The guard holds (or held, and released) actions of this user.
    pub quarantined: bool,
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
    let fstore = ctx.factor_store(tenant);
    let (rows, held, listed) = tokio::try_join!(
        async {
            Ok::<_, ConvergeError>(store::load_enforcement(&ctx.db.pool, tenant, user_id).await?)
        },
        async {
            Ok::<_, ConvergeError>(
                !store::list_quarantine_user(&ctx.db, tenant, user_id)
                    .await?
                    .is_empty(),
            )
        },
        async {
            let Some(key) = link_key.as_deref() else {
                return Ok(None);
            };
            let (factor_list, sessions) = tokio::try_join!(
                timed(fstore.list_factors(tenant, key)),
                timed(fstore.list_sessions(tenant, key)),
            )?;
            Ok::<_, ConvergeError>(Some((factor_list, sessions)))
        },
    )?;
    let existing_rows: HashMap<String, store::EnforcementRow> =
        rows.into_iter().map(|r| (r.rule_key.clone(), r)).collect();
    let Some((factor_list, sessions)) = listed else {
        return Ok(Some(UserPlan {
            user,
            link_key: None,
            desired: None,
            observed: None,
            actions: Vec::new(),
            next_due: None,
            quarantined: held,
            existing_rows,
        }));
    };

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
        link_key,
        desired: Some(desired),
        observed: Some(observed),
        actions,
        next_due,
        quarantined: held,
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

/// The bookkeeping writes that take the stored rows to `rows`: (rows to upsert, keys to delete).
fn bookkeeping(
    up: &UserPlan,
    rows: Vec<store::EnforcementRow>,
) -> (Vec<store::EnforcementRow>, Vec<String>) {
    let stale: Vec<String> = up
        .existing_rows
        .keys()
        .filter(|k| !rows.iter().any(|r| &r.rule_key == *k))
        .cloned()
        .collect();
    let changed = rows
        .into_iter()
        .filter(|r| up.existing_rows.get(&r.rule_key) != Some(r))
        .collect();
    (changed, stale)
}

/// Converges one user: plan → guard → execute → record. See the module doc.
///
/// Writes, for a store outside our database: one decision transaction before acting (the
/// decision's audit entry, the guard's count or quarantine, the follow-up job), then the actions
/// (concurrently, through the factor store), then one outcome transaction (an audit entry per
/// action, webhook events, the enforcement bookkeeping). For a store in our database (the
/// built-in one, [`FactorStore::in_database`]) all of it is the one decision transaction. With
/// `opts.job` set, the job is marked done in the last of these, so the worker has nothing left
/// to write.
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

    // A store in deprovd's own database runs its changes inside the decision's transaction:
    // one commit per converge, and no crash can separate a change from its audit entry.
    let fstore = ctx.factor_store(tenant);
    let up = Arc::new(up);
    let local = match &up.link_key {
        Some(key) if !audit_only && fstore.in_database() => Some(LocalRun {
            store: fstore.clone(),
            key: key.clone(),
            policy: policy.clone(),
            plan: up.clone(),
        }),
        _ => None,
    };

    // 1. The decision, before acting: audit entry, guard, quarantine, follow-up (and, for a
    //    local store, the actions and their outcomes).
    let must_record = !up.actions.is_empty() || opts.record_noop;
    let mut verdict = guard::Verdict::Execute;
    let local_bookkeeping = local.is_some() && {
        let (rows, stale) = bookkeeping(&up, enforcement_rows(&policy, &up, &[], now));
        !rows.is_empty() || !stale.is_empty()
    };
    let mut ran_locally = false;
    if must_record || up.next_due.is_some() || up.quarantined || local_bookkeeping {
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
        // Audit-only bookkeeping (when a requirement started to apply) rides along here.
        let early_rows = if audit_only {
            bookkeeping(&up, enforcement_rows(&policy, &up, &[], now))
        } else {
            (Vec::new(), Vec::new())
        };
        ran_locally = local.is_some();
        let pre_verdict =
            if ctx.db.engine == Engine::Postgres && !audit_only && !destructive.is_empty() {
                Some(
                    guard_before_decision(
                        &ctx.db,
                        tenant,
                        user_id,
                        up.quarantined,
                        destructive.len(),
                        &policy.guard,
                        now,
                    )
                    .await?,
                )
            } else {
                None
            };
        let d = Decision {
            verdict: pre_verdict,
            tenant: tenant.to_string(),
            user_id: user_id.to_string(),
            decision,
            record: must_record,
            audit_only,
            actions: up.actions.clone(),
            destructive: destructive.clone(),
            guard_rule: policy.guard.clone(),
            due: outcome.next_due.clone(),
            job: opts.job.clone(),
            rows: early_rows,
            quarantined: up.quarantined,
            local,
            now,
        };
        let decided = ctx
            .db
            .write(move |conn: &mut AnyConnection| Box::pin(async move { decide(conn, d).await }))
            .await?;
        verdict = decided.verdict;
        if decided.base_stale {
            // After the commit: the count runs outside the guard's lock.
            guard::refresh_base_soon(&ctx.db, tenant);
        }
        outcome.job_completed = decided.completed;
        if ran_locally {
            tally(&mut outcome, &decided.results);
        }
    }
    let quarantined = matches!(verdict, guard::Verdict::Quarantine { .. });
    if let guard::Verdict::Quarantine { tripped_now, .. } = &verdict {
        outcome.quarantined = destructive.clone();
        outcome.tripped_guard = *tripped_now;
    }
    if audit_only {
        return Ok(outcome);
    }

    if !ran_locally {
        // 2. Execute through the tenant's factor store, the actions side by side (each is
        //    idempotent and about a different factor, or the sessions, or the requirement).
        let to_run: Vec<Action> = up
            .actions
            .iter()
            .filter(|a| !(quarantined && a.is_destructive()))
            .cloned()
            .collect();
        let mut results: Vec<(Action, Result<Value, FactorError>)> = Vec::new();
        if let (Some(key), false) = (&up.link_key, to_run.is_empty()) {
            let runs = to_run
                .iter()
                .map(|a| execute(fstore.as_ref(), tenant, key, a));
            let done = futures_util::future::join_all(runs).await;
            results = to_run.into_iter().zip(done).collect();
        }
        tally(&mut outcome, &results);

        // 3. Record the outcomes (and the enforcement bookkeeping they change).
        let (rows, stale) =
            bookkeeping(&up, enforcement_rows(&policy, &up, &outcome.executed, now));
        if !results.is_empty() || !rows.is_empty() || !stale.is_empty() {
            // A job is done only when nothing failed; otherwise the worker backs it off.
            let job = if outcome.failed.is_empty() && !outcome.job_completed {
                opts.job.clone()
            } else {
                None
            };
            let completed =
                write_outcomes(ctx, tenant, user_id, &up, results, rows, stale, job).await?;
            outcome.job_completed |= completed;
        }
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

/// Sorts action results into the outcome's executed and failed lists.
fn tally(outcome: &mut ConvergeOutcome, results: &[(Action, Result<Value, FactorError>)]) {
    for (a, r) in results {
        match r {
            Ok(_) => outcome.executed.push(a.clone()),
            Err(e) => outcome.failed.push(FailedAction {
                action: a.clone(),
                error: e.message.clone(),
                retryable: e.retryable,
            }),
        }
    }
}

/// A converge whose factor store lives in deprovd's database: what the decision transaction
/// needs to run the actions and record their outcomes itself.
struct LocalRun {
    store: Arc<dyn FactorStore>,
    key: String,
    policy: Arc<Policy>,
    plan: Arc<UserPlan>,
}

/// What the decision transaction did.
struct Decided {
    verdict: guard::Verdict,
    /// The guard's percentage base is due to be counted again.
    base_stale: bool,
    /// It marked the job done.
    completed: bool,
    /// The actions it ran (local stores only).
    results: Vec<(Action, Result<Value, FactorError>)>,
}

/// What the decision transaction needs.
struct Decision {
    tenant: String,
    user_id: String,
    decision: Value,
    /// Append the decision's audit entry.
    record: bool,
    audit_only: bool,
    actions: Vec<Action>,
    destructive: Vec<Action>,
    guard_rule: policy::GuardRule,
    due: Option<String>,
    /// (job id, worker id): marked done here when nothing is left to execute.
    job: Option<(String, String)>,
    /// Enforcement rows to upsert and keys to delete.
    rows: (Vec<store::EnforcementRow>, Vec<String>),
    /// Planning saw a quarantine entry for the user.
    quarantined: bool,
    /// Run the actions here too (a store in deprovd's database).
    local: Option<LocalRun>,
    /// The guard's verdict when it was reached in a transaction of its own (PostgreSQL).
    verdict: Option<guard::Checked>,
    now: DateTime<Utc>,
}

/// The blast-radius guard's question about one converge: may these destructive actions run?
struct GuardCheck<'a> {
    tenant: &'a str,
    user_id: &'a str,
    destructive: usize,
    rule: &'a policy::GuardRule,
    /// An admin released this user's quarantined actions.
    bypass: bool,
    now: DateTime<Utc>,
}

impl GuardCheck<'_> {
    /// The verdict, counted in the window; when this check trips the guard, its webhook event
    /// is enqueued and its audit entry added to `entries`, in the same transaction as the trip.
    async fn run(
        &self,
        conn: &mut AnyConnection,
        entries: &mut Vec<AuditEntry>,
    ) -> Result<guard::Checked, ConvergeError> {
        let (tenant, user_id) = (self.tenant, self.user_id);
        let checked = guard::check(
            conn,
            tenant,
            user_id,
            self.destructive,
            self.rule,
            self.bypass,
            self.now,
        )
        .await?;
        if let guard::Verdict::Quarantine {
            tripped_now: true,
            reason,
        } = &checked.verdict
        {
            tracing::error!(
                tenant, user_id, %reason,
                "blast-radius guard tripped: destructive actions are quarantined until an \
                 admin releases or discards them (deprovd guard status --tenant …)"
            );
            let detail = json!({ "reason": reason, "user_id": user_id });
            notify::enqueue_event(conn, tenant, events::GUARD_TRIPPED, None, detail.clone())
                .await?;
            entries.push(AuditEntry::new(
                audit::kinds::GUARD_TRIPPED,
                system_actor(),
                None,
                detail,
            ));
        }
        Ok(checked)
    }
}

/// PostgreSQL: the guard's verdict in a short transaction of its own, before the decision's.
///
/// The guard serialises a tenant's converges on its row lock, held to commit. Inside the
/// decision transaction that lock covered the actions, their audit entries and the commit,
/// and converges queued behind it (measured: deactivations at 500/s fell behind at ~250/s).
/// Here it covers one count. If the decision then fails, the retry's check finds the user
/// already counted in the window and counts nothing twice; a trip commits with its event
/// and audit entry. On SQLite the single writer serialises anyway: the check stays inside.
///
/// The transaction commits without waiting for its WAL flush (`synchronous_commit = off`), so
/// the lock is released a flush sooner. Nothing durable depends on it alone: the decision it
/// permits commits after it with a synchronous commit, and flushing the WAL up to that commit
/// flushes this one too. A crash that loses it also lost every decision made after it (the
/// job runs again and counts again).
async fn guard_before_decision(
    db: &crate::store::Db,
    tenant: &str,
    user_id: &str,
    quarantined: bool,
    destructive: usize,
    rule: &policy::GuardRule,
    now: DateTime<Utc>,
) -> Result<guard::Checked, ConvergeError> {
    let (tenant, user_id, rule) = (tenant.to_string(), user_id.to_string(), rule.clone());
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            crate::store::exec(conn, "SET LOCAL synchronous_commit = off")
                .await
                .map_err(StoreError::from)?;
            let bypass = quarantined
                && store::get_quarantine(conn, &tenant, &user_id)
                    .await?
                    .is_some_and(|q| q.released.is_some());
            let check = GuardCheck {
                tenant: &tenant,
                user_id: &user_id,
                destructive,
                rule: &rule,
                bypass,
                now,
            };
            let mut entries = Vec::new();
            let checked = check.run(conn, &mut entries).await?;
            audit::append_many(conn, &tenant, &entries).await?;
            Ok(checked)
        })
    })
    .await
}

/// The decision transaction of a converge. Returns the guard's verdict and whether it marked
/// the job done.
async fn decide(conn: &mut AnyConnection, d: Decision) -> Result<Decided, ConvergeError> {
    let (tenant, user_id) = (d.tenant.as_str(), d.user_id.as_str());
    // Read only when planning saw an entry (the user's jobs never run concurrently).
    let held = if d.quarantined {
        store::get_quarantine(conn, tenant, user_id).await?
    } else {
        None
    };
    // Audit entries are appended last, in one statement.
    let mut entries = Vec::new();
    let checked = match d.verdict {
        Some(c) => c,
        None if !d.audit_only && !d.destructive.is_empty() => {
            let bypass = held.as_ref().is_some_and(|q| q.released.is_some());
            let check = GuardCheck {
                tenant,
                user_id,
                destructive: d.destructive.len(),
                rule: &d.guard_rule,
                bypass,
                now: d.now,
            };
            check.run(conn, &mut entries).await?
        }
        None => guard::Checked::verdict(guard::Verdict::Execute),
    };
    let guard::Checked {
        verdict,
        base_stale,
    } = checked;
    if d.record {
        entries.push(AuditEntry::new(
            audit::kinds::POLICY_DECISION,
            system_actor(),
            Some(user_id),
            d.decision,
        ));
    }
    let quarantined = match &verdict {
        guard::Verdict::Execute => {
            // Whatever was held for this user is superseded by this converge's plan.
            if held.is_some() && !d.audit_only {
                store::delete_quarantine(conn, tenant, user_id).await?;
            }
            false
        }
        guard::Verdict::Quarantine { reason, .. } => {
            let held_actions = serde_json::to_value(&d.destructive).unwrap_or(Value::Null);
            let qid = store::upsert_quarantine(conn, tenant, user_id, &held_actions).await?;
            entries.push(AuditEntry::new(
                audit::kinds::ACTION_QUARANTINED,
                system_actor(),
                Some(user_id),
                json!({ "quarantine_id": qid, "actions": held_actions, "reason": reason }),
            ));
            true
        }
    };
    if d.audit_only {
        for a in &d.actions {
            entries.push(AuditEntry::new(
                audit::kinds::ACTION_WOULD_EXECUTE,
                system_actor(),
                Some(user_id),
                json!({ "action": a, "mode": "audit-only" }),
            ));
        }
    }
    // A local store: run what the guard lets through, here, and record the outcomes.
    let mut results = Vec::new();
    let mut rows = d.rows;
    if let Some(run) = &d.local {
        for a in d
            .actions
            .iter()
            .filter(|a| !(quarantined && a.is_destructive()))
        {
            let r = match factor_change(a) {
                Some(change) => run.store.apply_in_tx(conn, tenant, &run.key, &change).await,
                None => Ok(json!({})),
            };
            if let Err(e) = &r {
                if e.retryable {
                    // The database failed under us: abandon the whole transaction (decision
                    // included) and let the job run again.
                    return Err(ConvergeError::from(e.clone()));
                }
            }
            results.push((a.clone(), r));
        }
        let executed: Vec<Action> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(a, _)| a.clone())
            .collect();
        record_outcomes(
            conn,
            tenant,
            user_id,
            Some(&run.key),
            &results,
            &mut entries,
        )
        .await?;
        rows = bookkeeping(
            &run.plan,
            enforcement_rows(&run.policy, &run.plan, &executed, d.now),
        );
    }
    let (rows, stale) = &rows;
    for row in rows {
        store::upsert_enforcement(conn, tenant, user_id, row).await?;
    }
    for key in stale {
        store::delete_enforcement(conn, tenant, user_id, key).await?;
    }
    if let Some(due) = &d.due {
        jobs::enqueue_converge(conn, tenant, user_id, "scheduled", Some(due)).await?;
    }
    let nothing_left = d.audit_only
        || d.actions.is_empty()
        || (quarantined && d.actions.iter().all(Action::is_destructive))
        || (d.local.is_some() && results.iter().all(|(_, r)| r.is_ok()));
    let mut completed = false;
    if let (Some((job_id, worker)), true) = (&d.job, nothing_left) {
        completed = jobs::store::complete_in_tx(conn, job_id, worker).await?;
    }
    audit::append_many(conn, tenant, &entries).await?;
    Ok(Decided {
        verdict,
        base_stale,
        completed,
        results,
    })
}

/// The factor-store change an action makes; None for actions only recorded.
fn factor_change(action: &Action) -> Option<FactorChange> {
    Some(match action {
        Action::SuspendFactor { factor_id, .. } => FactorChange::Suspend {
            factor_id: factor_id.clone(),
        },
        Action::ResumeFactor { factor_id, .. } => FactorChange::Resume {
            factor_id: factor_id.clone(),
        },
        Action::RevokeFactor { factor_id, .. } => FactorChange::Revoke {
            factor_id: factor_id.clone(),
        },
        Action::RevokeSessions { .. } => FactorChange::RevokeSessions,
        Action::RequireEnrollment {
            types, deadline, ..
        } => FactorChange::RequireEnrollment {
            types: types.clone(),
            deadline: deadline.clone(),
        },
        Action::RequirementOverdue { .. } => return None,
    })
}

/// Adds an audit entry per action result to `entries`, and enqueues a webhook event per
/// success; on the outcome's transaction.
async fn record_outcomes(
    conn: &mut AnyConnection,
    tenant: &str,
    user_id: &str,
    link_key: Option<&str>,
    results: &[(Action, Result<Value, FactorError>)],
    entries: &mut Vec<AuditEntry>,
) -> Result<(), sqlx::Error> {
    let mut events = Vec::new();
    for (action, result) in results {
        match result {
            Ok(res) => {
                if let Some(ev) = event_for(action) {
                    let mut payload = json!({ "user_id": user_id, "action": action });
                    if let Action::RequirementOverdue { .. } = action {
                        payload["overdue"] = json!(true);
                    }
                    events.push((ev, payload));
                }
                entries.push(AuditEntry::new(
                    audit::kinds::ACTION_EXECUTED,
                    system_actor(),
                    Some(user_id),
                    json!({ "action": action, "result": res, "link_key": link_key }),
                ));
            }
            Err(e) => entries.push(AuditEntry::new(
                audit::kinds::ACTION_FAILED,
                system_actor(),
                Some(user_id),
                json!({
                    "action": action, "error": e.message, "retryable": e.retryable,
                    "link_key": link_key,
                }),
            )),
        }
    }
    notify::enqueue_events(conn, tenant, Some(user_id), events).await
}

/// Runs one action through the factor store; the JSON says what it did.
async fn execute(
    fstore: &dyn FactorStore,
    tenant: &str,
    key: &str,
    action: &Action,
) -> Result<Value, FactorError> {
    match factor_change(action) {
        Some(change) => timed(fstore.apply(tenant, key, &change)).await,
        // Nothing to tell the store (an overdue requirement): recorded and alerted below.
        None => Ok(json!({})),
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

/// The outcome transaction: an audit entry per action (and a webhook event per success), the
/// enforcement bookkeeping, and (when `job` is given) the job's completion. Returns whether it
/// marked the job done.
#[allow(clippy::too_many_arguments)]
async fn write_outcomes(
    ctx: &EngineCtx,
    tenant: &str,
    user_id: &str,
    up: &UserPlan,
    results: Vec<(Action, Result<Value, FactorError>)>,
    rows: Vec<store::EnforcementRow>,
    stale: Vec<String>,
    job: Option<(String, String)>,
) -> Result<bool, ConvergeError> {
    let (t, u) = (tenant.to_string(), user_id.to_string());
    let link_key = up.link_key.clone();
    let completed = ctx
        .db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                let mut entries = Vec::with_capacity(results.len());
                record_outcomes(conn, &t, &u, link_key.as_deref(), &results, &mut entries).await?;
                for row in &rows {
                    store::upsert_enforcement(conn, &t, &u, row).await?;
                }
                for key in &stale {
                    store::delete_enforcement(conn, &t, &u, key).await?;
                }
                let mut completed = false;
                if let Some((job_id, worker)) = &job {
                    completed = jobs::store::complete_in_tx(conn, job_id, worker).await?;
                }
                // Last: on PostgreSQL the chain head stays locked until commit.
                audit::append_many(conn, &t, &entries).await?;
                Ok::<_, StoreError>(completed)
            })
        })
        .await?;
    Ok(completed)
}

/// The job dispatcher the workers call: converge and offboard jobs.
pub async fn run_job(ctx: &EngineCtx, job: &Job) -> Result<Finished, JobError> {
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
            let mut opts = ConvergeOptions::for_trigger(trigger);
            opts.job = job.leased_by.clone().map(|w| (job.id.clone(), w));
            let out = converge_with(ctx, &job.tenant_id, user_id, &opts).await?;
            Ok(if out.job_completed {
                Finished::Recorded
            } else {
                Finished::ToRecord
            })
        }
        jobs::kinds::OFFBOARD => crate::offboarding::run_job(ctx, job)
            .await
            .map(|()| Finished::ToRecord),
        other => Err(JobError::permanent(format!("unknown job kind {other:?}"))),
    }
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
