//! Job workers: each leases a batch of due jobs, runs them concurrently through
//! `engine::run_job`, and records the outcome (done, backed off, or dead-lettered). Idle
//! workers wake on a local nudge (a job was just enqueued here) or on a periodic poll (due jobs,
//! jobs other replicas enqueued, leases that ran out). Not here: what a job does, SQL.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::store::{self, FailOutcome};
use super::{nudge, nudge_handle, Finished, Job};
use crate::engine::EngineCtx;
use crate::store::{ts_from, Engine};

/// Running workers; [`Workers::shutdown`] stops them after their current batch. Dropping this
/// handle detaches the workers (they keep running until the runtime ends).
pub struct Workers {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Asks every worker to stop, and waits for the jobs they are running to finish and be
    /// recorded. Jobs not yet leased stay in the table for the next start.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        nudge_handle().notify_waiters();
        for h in self.handles {
            let _ = h.await;
        }
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// The start of every worker id (`leased_by`) in this process: `PID-RANDOM-`.
fn process_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}-", std::process::id(), &random[..8])
    })
}

/// Starts `n` workers (at least one) on the current tokio runtime. On SQLite (one process owns
/// the database) jobs a previous process left running are made runnable at once.
pub fn spawn_workers(ctx: EngineCtx, n: usize) -> Workers {
    let (stop, rx) = watch::channel(false);
    let mut handles = Vec::new();
    let recover = ctx.db.engine == Engine::Sqlite;
    let set = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..n.max(1) {
        let ctx = ctx.clone();
        let rx = rx.clone();
        let id = format!("{}{}-{i}", process_prefix(), &set[..8]);
        handles.push(tokio::spawn(async move {
            if i == 0 && recover {
                // Siblings may already hold leases: they carry this process's prefix and are
                // left alone (a job of theirs made pending would run twice at once).
                match store::recover_running(&ctx.db, process_prefix()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        jobs = n,
                        "jobs left running by a previous process are runnable again"
                    ),
                    Err(e) => tracing::error!(error = %e, "cannot recover running jobs"),
                }
                nudge_handle().notify_waiters();
            }
            worker_loop(ctx, id, i, rx).await
        }));
    }
    Workers { stop, handles }
}

async fn worker_loop(ctx: EngineCtx, id: String, index: usize, mut stop: watch::Receiver<bool>) {
    let cfg = ctx.jobs.clone();
    // Jobs in flight at once per worker; a freed slot is refilled at once (no waiting for the
    // slowest job of a batch).
    let cap = cfg.batch.max(1);
    let mut running: JoinSet<()> = JoinSet::new();
    let mut last_housekeeping = Instant::now();
    // When this worker last looked for jobs whose lease ran out (None: never).
    let mut last_expired_look: Option<Instant> = None;
    let mut detached = false;
    let mut stopping = false;
    tracing::debug!(worker = %id, "job worker started");
    loop {
        stopping = stopping || *stop.borrow();
        if stopping && running.is_empty() {
            break;
        }
        // Collect whatever finished, so one lease fills every free slot.
        while running.try_join_next().is_some() {}
        let free = cap - running.len().min(cap);
        if !stopping && free > 0 {
            let look_expired = last_expired_look.is_none_or(|t| t.elapsed() >= cfg.poll);
            if look_expired {
                last_expired_look = Some(Instant::now());
            }
            match store::lease_with(&ctx.db, &id, free, cfg.lease, look_expired).await {
                Ok(jobs) if !jobs.is_empty() => {
                    if jobs.len() >= free {
                        // Probably more waiting: wake a sibling rather than leave it for the poll.
                        nudge();
                    }
                    for job in jobs {
                        let (ctx, worker) = (ctx.clone(), id.clone());
                        running.spawn(async move { run_one(&ctx, &worker, job).await });
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(worker = %id, error = %e, "cannot lease jobs"),
            }
        }
        if index == 0 && last_housekeeping.elapsed() > Duration::from_secs(600) {
            last_housekeeping = Instant::now();
            let keep =
                chrono::Duration::from_std(cfg.keep_done).unwrap_or(chrono::Duration::days(7));
            let before = ts_from(chrono::Utc::now() - keep);
            if let Err(e) = store::purge_done(&ctx.db, &before).await {
                tracing::warn!(error = %e, "cannot purge done jobs");
            }
        }
        // Nudges come after the enqueuing transaction committed (`store::after_commit`); the
        // poll finds due follow-ups, other replicas' jobs and expired leases.
        let wait = cfg.poll;
        let full = running.len() >= cap;
        tokio::select! {
            biased;
            r = stop.changed(), if !detached && !stopping => {
                // The handle was dropped without shutdown: keep working, like a detached task.
                detached = r.is_err();
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = nudge_handle().notified(), if !full && !stopping => {}
            _ = tokio::time::sleep(wait), if !full || stopping => {}
        }
    }
    tracing::debug!(worker = %id, "job worker stopped");
}

/// Runs one leased job and records its outcome.
pub async fn run_one(ctx: &EngineCtx, worker: &str, job: Job) {
    let started = Instant::now();
    // Leased more often than allowed without ever recording a failure: its workers keep dying
    // on it (a crash loop). Stop feeding it to them.
    let outcome = if job.attempts > ctx.jobs.max_attempts {
        Err((
            format!(
                "gave up after {} leases: every worker that took this job stopped before finishing it",
                job.attempts - 1
            ),
            false,
        ))
    } else {
        run_handler(ctx, &job).await
    };
    record(ctx, worker, &job, started, outcome).await
}

async fn run_handler(ctx: &EngineCtx, job: &Job) -> Result<Finished, (String, bool)> {
    let run = {
        let ctx = ctx.clone();
        let job = job.clone();
        // Its own task: a panic in a handler fails this job, not the worker.
        tokio::spawn(async move {
            tokio::time::timeout(ctx.jobs.lease, crate::engine::run_job(&ctx, &job)).await
        })
    };
    match run.await {
        Ok(Ok(Ok(f))) => Ok(f),
        Ok(Ok(Err(e))) => Err((e.message, e.retryable)),
        Ok(Err(_)) => Err(("timed out (ran past its lease)".to_string(), true)),
        Err(e) => Err((format!("handler panicked: {e}"), true)),
    }
}

async fn record(
    ctx: &EngineCtx,
    worker: &str,
    job: &Job,
    started: Instant,
    outcome: Result<Finished, (String, bool)>,
) {
    match outcome {
        Ok(Finished::Recorded) => {
            tracing::debug!(job = %job.id, kind = %job.kind, ms = started.elapsed().as_millis() as u64, "job done");
        }
        Ok(Finished::ToRecord) => {
            tracing::debug!(job = %job.id, kind = %job.kind, ms = started.elapsed().as_millis() as u64, "job done");
            if let Err(e) = store::complete(&ctx.db, &job.id, worker).await {
                // The job stays running; its lease runs out and it runs again (idempotent).
                tracing::warn!(job = %job.id, error = %e, "cannot mark job done");
            }
        }
        Err((message, retryable)) => {
            match store::fail(&ctx.db, job, worker, &message, retryable, &ctx.jobs).await {
                Ok(FailOutcome::Retry { due }) => tracing::warn!(
                    job = %job.id, kind = %job.kind, tenant = %job.tenant_id,
                    attempt = job.attempts, error = %message, %due, "job failed; will retry"
                ),
                Ok(FailOutcome::Dead) => tracing::error!(
                    job = %job.id, kind = %job.kind, tenant = %job.tenant_id,
                    user = job.user_id.as_deref().unwrap_or(""), attempts = job.attempts,
                    error = %message, "job dead-lettered: needs an admin (jobs list --state dead)"
                ),
                Ok(FailOutcome::LeaseLost) => {
                    tracing::warn!(job = %job.id, "job failed after its lease was lost")
                }
                Err(e) => tracing::error!(job = %job.id, error = %e, "cannot record job failure"),
            }
        }
    }
}
