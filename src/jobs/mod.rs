//! The durable job queue: "converge user U", "offboard user U at T", … written in the same
//! transaction as the trigger that asks for them, leased by workers (a lease that runs out makes
//! a crashed worker's job run again), retried with exponential backoff and full jitter, and
//! dead-lettered (alerted, listed, retryable by an admin) when retrying stops helping.
//!
//! This module knows nothing of what a job does: the workers ([`worker`]) hand each leased job to
//! `engine::run_job`. SQL is in [`store`]. Scheduled work (revoke_after expiry, enforcement
//! deadlines, offboarding at a set time) is a job with a future `due`, never an in-memory timer.

pub mod store;
pub mod worker;

use std::sync::OnceLock;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use sqlx::AnyConnection;
use tokio::sync::Notify;

pub use store::{cancel_pending, get, list, purge_done, retry, JobFilter};
pub use worker::{spawn_workers, Workers};

/// Job kinds.
pub mod kinds {
    /// Converge one user (payload: `{"reason": …}`, optionally `"guard_release": id`).
    pub const CONVERGE: &str = "converge";
    /// Run one scheduled offboarding (payload: `{"offboarding_id": …}`).
    pub const OFFBOARD: &str = "offboard";
}

/// Job states.
pub mod states {
    pub const PENDING: &str = "pending";
    pub const RUNNING: &str = "running";
    pub const DONE: &str = "done";
    pub const DEAD: &str = "dead";
}

/// One job row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: String,
    pub tenant_id: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub payload: Value,
    pub state: String,
    /// Leases taken so far (the current run included).
    pub attempts: i64,
    pub due: String,
    pub lease_until: Option<String>,
    pub leased_by: Option<String>,
    pub last_error: Option<String>,
    pub created: String,
    pub updated: String,
}

/// How a job handler finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The handler marked the job done in its own last transaction.
    Recorded,
    /// The worker marks it done.
    ToRecord,
}

/// What a job handler reports when it cannot finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// Whether running the job again later can help (a store that is down, a lost connection).
    pub retryable: bool,
    pub message: String,
}

impl JobError {
    pub fn retryable(message: impl Into<String>) -> JobError {
        JobError {
            retryable: true,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> JobError {
        JobError {
            retryable: false,
            message: message.into(),
        }
    }
}

/// Queue tuning. The defaults suit production; tests shrink the times.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// After this many attempts a failing job is dead-lettered.
    pub max_attempts: i64,
    /// How long a lease holds before another worker may take the job.
    pub lease: Duration,
    /// First retry waits up to this long (full jitter), doubling per attempt…
    pub backoff_base: Duration,
    /// …up to this cap.
    pub backoff_cap: Duration,
    /// How often idle workers look for due jobs and other replicas' jobs.
    pub poll: Duration,
    /// Jobs a worker runs at once (leased as slots free up).
    pub batch: usize,
    /// Done jobs older than this are deleted by the housekeeping pass.
    pub keep_done: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            max_attempts: 8,
            lease: Duration::from_secs(60),
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(300),
            poll: Duration::from_millis(250),
            batch: 16,
            keep_done: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(cap, base · 2^(attempt-1))]`.
/// `attempt` is 1 for the first retry.
pub fn backoff(attempt: i64, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let ceiling = base.saturating_mul(1u32 << exp).min(cap);
    let ms = ceiling.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(rng.gen_range(0..=ms))
}

/// Wakes this process's idle workers; called when a job is enqueued so the real-time path does
/// not wait for the next poll.
pub(crate) fn nudge_handle() -> &'static Notify {
    static N: OnceLock<Notify> = OnceLock::new();
    N.get_or_init(Notify::new)
}

/// Tells local workers that a job may be ready (cheap; safe to call anywhere).
pub fn nudge() {
    nudge_handle().notify_one();
}

/// Enqueues a job inside the caller's transaction; returns its id. `due` (UTC text, see
/// `store::now_ts`) defaults to now. Local workers are woken once the caller commits.
pub async fn enqueue_in_tx(
    conn: &mut AnyConnection,
    tenant_id: &str,
    kind: &str,
    user_id: Option<&str>,
    payload: Value,
    due: Option<&str>,
) -> Result<String, sqlx::Error> {
    let id = store::insert(conn, tenant_id, kind, user_id, &payload, due).await?;
    crate::store::after_commit(nudge);
    Ok(id)
}

/// Enqueues "converge user U" inside the caller's transaction, coalescing: if a pending (not
/// leased) converge job for the user is due no later than `due`, nothing is added (that job
/// will see this change). A running converge job does not count (the change that triggers this
/// one may have committed after it read the user). A pending job due later (a follow-up) stays:
/// it runs as a harmless converge. Level-triggered: every converge schedules the follow-ups it
/// needs itself.
pub async fn enqueue_converge(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
    reason: &str,
    due: Option<&str>,
) -> Result<(), sqlx::Error> {
    let enqueued = store::enqueue_converge(conn, tenant_id, user_id, reason, due).await?;
    if enqueued {
        crate::store::after_commit(nudge);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
