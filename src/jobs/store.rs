//! The job queue's SQL: insert (inside a caller's transaction), coalesce converge jobs, lease
//! (`FOR UPDATE SKIP LOCKED` on PostgreSQL; the single writer on SQLite), complete, back off,
//! dead-letter, list, retry, purge. Same SQL text on both engines except the lock clause.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Job, JobsConfig};
use crate::audit::{self, AuditActor, AuditEntry};
use crate::store::{now_ts, ts_from, Db, Engine, StoreError};

const COLUMNS: &str = "id, tenant_id, kind, user_id, payload, state, attempts, due, lease_until, \
                       leased_by, last_error, created, updated";

fn job(row: &AnyRow) -> Result<Job, sqlx::Error> {
    let payload: String = row.try_get("payload")?;
    Ok(Job {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        kind: row.try_get("kind")?,
        user_id: row.try_get("user_id")?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        due: row.try_get("due")?,
        lease_until: row.try_get("lease_until")?,
        leased_by: row.try_get("leased_by")?,
        last_error: row.try_get("last_error")?,
        created: row.try_get("created")?,
        updated: row.try_get("updated")?,
    })
}

/// `now + d` in the table's text format.
pub(crate) fn ts_after(d: Duration) -> String {
    let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365));
    ts_from(Utc::now() + d)
}

pub(crate) async fn insert(
    conn: &mut AnyConnection,
    tenant_id: &str,
    kind: &str,
    user_id: Option<&str>,
    payload: &Value,
    due: Option<&str>,
) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ts();
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, kind, user_id, payload, state, attempts, due, \
         created, updated) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $7)",
    )
    .bind(&id)
    .bind(tenant_id)
    .bind(kind)
    .bind(user_id.map(str::to_string))
    .bind(payload.to_string())
    .bind(due.unwrap_or(&now).to_string())
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    Ok(id)
}

fn is_postgres(conn: &AnyConnection) -> bool {
    crate::store::engine_of(conn) == Engine::Postgres
}

/// See `jobs::enqueue_converge`. One statement: insert unless a pending converge job for the
/// user is due no later. Returns whether a job was added.
///
/// On PostgreSQL the pending job found is locked (`FOR UPDATE`): a worker leasing it at this
/// very moment either has committed (the job is running, so it no longer counts and a new job
/// is added) or waits for this transaction (its converge then reads this change). Without the
/// lock, a lease in flight would make this trigger vanish: the job counted as pending here
/// would already be reading the user as it was before this change.
pub(crate) async fn enqueue_converge(
    conn: &mut AnyConnection,
    tenant_id: &str,
    user_id: &str,
    reason: &str,
    due: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let now = now_ts();
    let due = due.unwrap_or(&now).to_string();
    // SQLite's planner would otherwise take jobs_due (state, due) and walk every pending job
    // that is due: a cost that grows with the backlog, on every SCIM write.
    let (lock, index) = if is_postgres(conn) {
        (" FOR UPDATE", "")
    } else {
        ("", " INDEXED BY jobs_user")
    };
    let r = sqlx::query(&format!(
        "INSERT INTO jobs (id, tenant_id, kind, user_id, payload, state, attempts, due, created, \
         updated) SELECT $1, $2, 'converge', $3, $4, 'pending', 0, $5, $6, $6 \
         WHERE NOT EXISTS (SELECT 1 FROM jobs{index} WHERE tenant_id = $2 AND user_id = $3 \
         AND kind = 'converge' AND state = 'pending' AND due <= $5{lock})"
    ))
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(tenant_id)
    .bind(user_id)
    .bind(json!({ "reason": reason }).to_string())
    .bind(&due)
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Leases up to `n` jobs that are due, or whose lease ran out (their worker died), for
/// `lease`. A job whose user already has a job of the same kind running under a live lease is
/// left for later, so one user is never converged by two workers at once.
pub async fn lease(
    db: &Db,
    worker_id: &str,
    n: usize,
    lease: Duration,
) -> Result<Vec<Job>, StoreError> {
    lease_with(db, worker_id, n, lease, true).await
}

/// [`lease`], looking for jobs whose lease ran out only when `expired` is true. Workers look
/// at every poll rather than on every lease: leases run out when a worker dies, which is rare,
/// and the look is a statement on the single SQLite writer.
pub async fn lease_with(
    db: &Db,
    worker_id: &str,
    n: usize,
    lease: Duration,
    expired: bool,
) -> Result<Vec<Job>, StoreError> {
    let lock = match db.engine {
        Engine::Postgres => " FOR UPDATE SKIP LOCKED",
        Engine::Sqlite => "",
    };
    // `+r.lease_until` keeps SQLite's planner on jobs_user (one user's rows) for the check
    // instead of walking every running job per candidate; PostgreSQL has no unary + on text
    // and needs no hint.
    let live = match db.engine {
        Engine::Sqlite => "+r.lease_until",
        Engine::Postgres => "r.lease_until",
    };
    let not_running_elsewhere = format!(
        "NOT EXISTS (SELECT 1 FROM jobs r WHERE r.tenant_id = j.tenant_id \
           AND r.user_id = j.user_id AND r.kind = j.kind AND r.state = 'running' \
           AND {live} >= $3 AND r.id <> j.id)"
    );
    // Two statements rather than one with OR: each walks its index in `due` / lease order and
    // stops at the limit, so leasing costs the same with a backlog of ten jobs or ten
    // thousand (the OR form sorted the whole backlog on every lease).
    let due_sql = format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $1, \
         leased_by = $2, updated = $3 \
         WHERE id IN (SELECT j.id FROM jobs j \
           WHERE j.state = 'pending' AND j.due <= $3 AND {not_running_elsewhere} \
           ORDER BY j.due LIMIT $4{lock}) \
         RETURNING {COLUMNS}"
    );
    let expired_sql = format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $1, \
         leased_by = $2, updated = $3 \
         WHERE id IN (SELECT j.id FROM jobs j \
           WHERE j.state = 'running' AND j.lease_until < $3 AND {not_running_elsewhere} \
           ORDER BY j.lease_until LIMIT $4{lock}) \
         RETURNING {COLUMNS}"
    );
    let worker = worker_id.to_string();
    let until = ts_after(lease);
    let limit = n.clamp(1, 1000) as i64;
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            if is_postgres(conn) {
                // A lease need not survive a crash (the job would just be leased again), so
                // its commit does not wait for the WAL flush. Whatever the leased job then
                // does commits synchronously, and that flush covers the lease too.
                crate::store::exec(conn, "SET LOCAL synchronous_commit = off").await?;
            }
            let now = now_ts();
            // Both statements take ($1 lease end, $2 worker, $3 now, $4 how many).
            let mut rows = Vec::new();
            let passes = [(expired, &expired_sql), (true, &due_sql)];
            for sql in passes
                .into_iter()
                .filter_map(|(run, sql)| run.then_some(sql))
            {
                let left = limit - rows.len() as i64;
                if left <= 0 {
                    break;
                }
                rows.extend(
                    sqlx::query(sql)
                        .bind(&until)
                        .bind(&worker)
                        .bind(&now)
                        .bind(left)
                        .fetch_all(&mut *conn)
                        .await?,
                );
            }
            let mut jobs = rows.iter().map(job).collect::<Result<Vec<_>, _>>()?;
            jobs.sort_by(|a, b| a.due.cmp(&b.due));
            Ok::<_, StoreError>(jobs)
        })
    })
    .await
}

/// Marks a leased job done. False when the lease was lost (it ran out and another worker took
/// the job): that worker will finish it.
pub async fn complete(db: &Db, job_id: &str, worker_id: &str) -> Result<bool, StoreError> {
    let (id, worker) = (job_id.to_string(), worker_id.to_string());
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move { Ok::<_, StoreError>(complete_in_tx(conn, &id, &worker).await?) })
    })
    .await
}

/// [`complete`] inside the caller's transaction, so a handler's last write and the job's
/// completion commit together (one write fewer on the real-time path).
pub async fn complete_in_tx(
    conn: &mut AnyConnection,
    job_id: &str,
    worker_id: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, \
         updated = $3 WHERE id = $1 AND state = 'running' AND leased_by = $2",
    )
    .bind(job_id)
    .bind(worker_id)
    .bind(now_ts())
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// What [`fail`] did with a failed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to pending, due again at this time.
    Retry { due: String },
    /// Dead-lettered (audited and alerted).
    Dead,
    /// The lease was lost meanwhile; nothing changed.
    LeaseLost,
}

/// Records a failed run: a retryable error under the attempt bound backs off (exponential, full
/// jitter); anything else dead-letters the job, with an audit entry and a `job_dead` event in the
/// same transaction.
pub async fn fail(
    db: &Db,
    job: &Job,
    worker_id: &str,
    error: &str,
    retryable: bool,
    cfg: &JobsConfig,
) -> Result<FailOutcome, StoreError> {
    let job = job.clone();
    let worker = worker_id.to_string();
    // Error texts come from factor stores and databases: keep the row small.
    let error: String = error.chars().take(2000).collect();
    let retry_due = if retryable && job.attempts < cfg.max_attempts {
        let delay = super::backoff(
            job.attempts,
            cfg.backoff_base,
            cfg.backoff_cap,
            &mut rand::thread_rng(),
        );
        Some(ts_after(delay))
    } else {
        None
    };
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            let now = now_ts();
            if let Some(due) = retry_due {
                let r = sqlx::query(
                    "UPDATE jobs SET state = 'pending', due = $3, lease_until = NULL, \
                     leased_by = NULL, last_error = $4, updated = $5 \
                     WHERE id = $1 AND state = 'running' AND leased_by = $2",
                )
                .bind(&job.id)
                .bind(&worker)
                .bind(&due)
                .bind(&error)
                .bind(&now)
                .execute(&mut *conn)
                .await?;
                return Ok(if r.rows_affected() == 1 {
                    FailOutcome::Retry { due }
                } else {
                    FailOutcome::LeaseLost
                });
            }
            let r = sqlx::query(
                "UPDATE jobs SET state = 'dead', lease_until = NULL, last_error = $3, \
                 updated = $4 WHERE id = $1 AND state = 'running' AND leased_by = $2",
            )
            .bind(&job.id)
            .bind(&worker)
            .bind(&error)
            .bind(&now)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() != 1 {
                return Ok(FailOutcome::LeaseLost);
            }
            let detail = json!({
                "job_id": job.id,
                "kind": job.kind,
                "attempts": job.attempts,
                "error": error,
                "retryable": retryable,
            });
            crate::notify::enqueue_event(
                conn,
                &job.tenant_id,
                crate::notify::events::JOB_DEAD,
                job.user_id.as_deref(),
                detail.clone(),
            )
            .await?;
            // Last: on PostgreSQL the chain head stays locked until commit.
            audit::append(
                conn,
                &job.tenant_id,
                AuditEntry::new(
                    audit::kinds::JOB_DEAD,
                    AuditActor::system("jobs", "deprovd job queue"),
                    job.user_id.as_deref(),
                    detail,
                ),
            )
            .await?;
            Ok::<_, StoreError>(FailOutcome::Dead)
        })
    })
    .await
}

/// Selects jobs for listing; every field optional.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub tenant_id: Option<String>,
    /// pending | running | done | dead
    pub state: Option<String>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
}

/// Jobs matching `filter`, most recently updated first, at most `limit` (1..=1000).
pub async fn list(db: &Db, filter: &JobFilter, limit: i64) -> Result<Vec<Job>, sqlx::Error> {
    let mut sql = format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1");
    let mut binds: Vec<String> = Vec::new();
    for (col, val) in [
        ("tenant_id", &filter.tenant_id),
        ("state", &filter.state),
        ("kind", &filter.kind),
        ("user_id", &filter.user_id),
    ] {
        if let Some(v) = val {
            binds.push(v.clone());
            sql.push_str(&format!(" AND {col} = ${}", binds.len()));
        }
    }
    sql.push_str(&format!(
        " ORDER BY updated DESC, id LIMIT ${}",
        binds.len() + 1
    ));
    let mut q = sqlx::query(&sql);
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.bind(limit.clamp(1, 1000)).fetch_all(&db.pool).await?;
    rows.iter().map(job).collect()
}

/// One job of a tenant.
pub async fn get(db: &Db, tenant_id: &str, job_id: &str) -> Result<Option<Job>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(job_id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(job).transpose()
}

/// One job by id, whatever its tenant (the CLI, which is not tenant-scoped).
pub async fn get_any(db: &Db, job_id: &str) -> Result<Option<Job>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
        .bind(job_id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(job).transpose()
}

/// Puts a dead job back in the queue (attempts reset, due now), audited. False when the job is
/// not dead (or not the tenant's).
pub async fn retry(
    db: &Db,
    tenant_id: &str,
    job_id: &str,
    actor: AuditActor,
) -> Result<bool, StoreError> {
    let (tenant, id) = (tenant_id.to_string(), job_id.to_string());
    let ok = db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                let now = now_ts();
                let row = sqlx::query(
                    "UPDATE jobs SET state = 'pending', attempts = 0, due = $3, lease_until = NULL, \
                     leased_by = NULL, updated = $3 \
                     WHERE tenant_id = $1 AND id = $2 AND state = 'dead' \
                     RETURNING kind, user_id, last_error",
                )
                .bind(&tenant)
                .bind(&id)
                .bind(&now)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else {
                    return Ok::<_, StoreError>(false);
                };
                let kind: String = row.try_get("kind")?;
                let user: Option<String> = row.try_get("user_id")?;
                let last_error: Option<String> = row.try_get("last_error")?;
                audit::append(
                    conn,
                    &tenant,
                    AuditEntry::new(
                        audit::kinds::JOB_RETRIED,
                        actor,
                        user.as_deref(),
                        json!({ "job_id": id, "kind": kind, "last_error": last_error }),
                    ),
                )
                .await?;
                Ok(true)
            })
        })
        .await?;
    if ok {
        super::nudge();
    }
    Ok(ok)
}

/// Marks a pending job done without running it, inside the caller's transaction (a cancelled
/// offboarding). False when the job is not pending any more (running, done or dead): the caller
/// must not pretend it was cancelled.
pub async fn cancel_pending(conn: &mut AnyConnection, job_id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET state = 'done', last_error = 'cancelled', updated = $2 \
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(job_id)
    .bind(now_ts())
    .execute(&mut *conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Deletes done jobs last updated before `before`; returns how many.
pub async fn purge_done(db: &Db, before: &str) -> Result<u64, StoreError> {
    let before = before.to_string();
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM jobs WHERE state = 'done' AND updated < $1")
                .bind(&before)
                .execute(&mut *conn)
                .await?;
            Ok::<_, StoreError>(r.rows_affected())
        })
    })
    .await
}

/// SQLite only (one process owns the file): jobs left running by a previous process are
/// runnable at once rather than after their lease runs out. Jobs leased by a worker whose id
/// starts with `own_prefix` (this process's) are left running. Returns how many.
pub async fn recover_running(db: &Db, own_prefix: &str) -> Result<u64, StoreError> {
    let own = format!("{own_prefix}%");
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            let now = now_ts();
            let r = sqlx::query(
                "UPDATE jobs SET state = 'pending', lease_until = NULL, leased_by = NULL, \
                 due = $1, updated = $1 \
                 WHERE state = 'running' AND (leased_by IS NULL OR leased_by NOT LIKE $2)",
            )
            .bind(&now)
            .bind(&own)
            .execute(&mut *conn)
            .await?;
            Ok::<_, StoreError>(r.rows_affected())
        })
    })
    .await
}

/// Counts jobs per state for a tenant (or all), for metrics and the dashboard.
pub async fn counts(db: &Db, tenant_id: Option<&str>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = match tenant_id {
        Some(t) => {
            sqlx::query("SELECT state, COUNT(*) FROM jobs WHERE tenant_id = $1 GROUP BY state")
                .bind(t)
                .fetch_all(&db.pool)
                .await?
        }
        None => {
            sqlx::query("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                .fetch_all(&db.pool)
                .await?
        }
    };
    let mut out = Vec::new();
    for r in rows {
        out.push((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?));
    }
    out.sort();
    Ok(out)
}
