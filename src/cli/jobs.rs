//! `deprovd jobs list|retry`: look at the durable job queue (dead letters above all) and put a
//! dead job back in it. The queue itself is `jobs/`.

use clap::Subcommand;

use crate::audit::AuditActor;
use crate::jobs::{self, JobFilter};
use crate::store::Db;

#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// List jobs, most recently updated first.
    List {
        /// Only this tenant (name).
        #[arg(long)]
        tenant: Option<String>,
        /// pending | running | done | dead
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put a dead job back in the queue (attempts reset, due now).
    Retry {
        /// The job id.
        id: String,
    },
}

const STATES: [&str; 4] = [
    jobs::states::PENDING,
    jobs::states::RUNNING,
    jobs::states::DONE,
    jobs::states::DEAD,
];

pub async fn run(db: &Db, cmd: JobsCmd) -> Result<i32, String> {
    match cmd {
        JobsCmd::List {
            tenant,
            state,
            limit,
        } => {
            if let Some(s) = &state {
                if !STATES.contains(&s.as_str()) {
                    return Err(format!("state {s:?} must be one of {}", STATES.join(", ")));
                }
            }
            let tenant_id = match tenant {
                Some(name) => Some(crate::cli::tenant_named(db, &name).await?.id),
                None => None,
            };
            let filter = JobFilter {
                tenant_id,
                state,
                ..JobFilter::default()
            };
            let rows = jobs::list(db, &filter, limit)
                .await
                .map_err(|e| format!("database error: {e}"))?;
            println!(
                "{:<36}  {:<9}  {:<7}  {:>3}  {:<27}  {:<36}  LAST ERROR",
                "ID", "KIND", "STATE", "TRY", "DUE", "USER"
            );
            for j in rows {
                let err: String = j
                    .last_error
                    .as_deref()
                    .unwrap_or("-")
                    .chars()
                    .take(100)
                    .collect();
                println!(
                    "{:<36}  {:<9}  {:<7}  {:>3}  {:<27}  {:<36}  {}",
                    j.id,
                    j.kind,
                    j.state,
                    j.attempts,
                    j.due,
                    j.user_id.as_deref().unwrap_or("-"),
                    err
                );
            }
            Ok(0)
        }
        JobsCmd::Retry { id } => {
            let job = jobs::store::get_any(db, &id)
                .await
                .map_err(|e| format!("database error: {e}"))?
                .ok_or_else(|| format!("no job with id {id:?}"))?;
            let retried = jobs::retry(db, &job.tenant_id, &id, AuditActor::cli("jobs retry"))
                .await
                .map_err(|e| format!("database error: {e}"))?;
            if retried {
                eprintln!("job {id} is pending again; a running deprovd picks it up");
                Ok(0)
            } else {
                Err(format!(
                    "job {id} is {}, not dead: nothing to retry",
                    job.state
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::fresh_dbs;
    use crate::store::StoreError;

    #[tokio::test]
    async fn list_and_retry() {
        for db in fresh_dbs().await {
            let t = crate::store::tenants::ensure_default_tenant(&db)
                .await
                .unwrap();
            let tid = t.id.clone();
            let id = db
                .write(move |c: &mut sqlx::AnyConnection| {
                    Box::pin(async move {
                        let id = jobs::enqueue_in_tx(
                            c,
                            &tid,
                            "converge",
                            Some("u"),
                            serde_json::json!({}),
                            None,
                        )
                        .await?;
                        sqlx::query("UPDATE jobs SET state = 'dead' WHERE id = $1")
                            .bind(&id)
                            .execute(&mut *c)
                            .await?;
                        Ok::<_, StoreError>(id)
                    })
                })
                .await
                .unwrap();
            let list = |state: Option<&str>| JobsCmd::List {
                tenant: Some("default".into()),
                state: state.map(str::to_string),
                limit: 10,
            };
            assert_eq!(run(&db, list(Some("dead"))).await.unwrap(), 0);
            assert!(run(&db, list(Some("zombie"))).await.is_err());
            assert_eq!(
                run(&db, JobsCmd::Retry { id: id.clone() }).await.unwrap(),
                0
            );
            assert!(
                run(&db, JobsCmd::Retry { id: id.clone() }).await.is_err(),
                "pending now"
            );
            assert!(run(&db, JobsCmd::Retry { id: "nope".into() })
                .await
                .is_err());
            assert_eq!(
                jobs::store::get_any(&db, &id).await.unwrap().unwrap().state,
                "pending"
            );
        }
    }
}
