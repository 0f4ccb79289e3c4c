//! `deprovd guard status|release|discard --tenant T`: the blast-radius guard from the command
//! line. Release lets every quarantined user's destructive actions run (each user is converged
//! again by a running deprovd); discard drops them with an audit entry per user. The guard
//! itself is `engine::guard`.

use clap::Subcommand;

use crate::audit::AuditActor;
use crate::engine::guard;
use crate::store::Db;

#[derive(Debug, Subcommand)]
pub enum GuardCmd {
    /// Show whether the guard is tripped, the window count and the quarantine.
    Status {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Un-trip and run every quarantined user's actions (as the policy wants them now).
    Release {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Un-trip and drop every quarantined action (audited per user).
    Discard {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

pub async fn run(db: &Db, cmd: GuardCmd) -> Result<i32, String> {
    match cmd {
        GuardCmd::Status { tenant } => {
            let t = crate::cli::tenant_named(db, &tenant).await?;
            let s = guard::status(db, &t.id)
                .await
                .map_err(|e| format!("database error: {e}"))?;
            if s.tripped {
                println!(
                    "guard TRIPPED at {}: {}",
                    s.tripped_at.as_deref().unwrap_or("?"),
                    s.trip_reason.as_deref().unwrap_or("?")
                );
            } else {
                println!("guard ok");
            }
            println!(
                "{} user(s) with destructive actions since {}",
                s.window_users, s.window_start
            );
            println!("{} user(s) quarantined", s.quarantined.len());
            for q in &s.quarantined {
                let n = q.actions.as_array().map_or(0, Vec::len);
                let released = if q.released.is_some() {
                    " (released, converging)"
                } else {
                    ""
                };
                println!(
                    "  {}  {n} action(s) held since {}{released}",
                    q.user_id, q.created
                );
            }
            Ok(0)
        }
        GuardCmd::Release { tenant } => {
            let t = crate::cli::tenant_named(db, &tenant).await?;
            let r = guard::release(db, &t.id, AuditActor::cli("guard release"))
                .await
                .map_err(|e| format!("database error: {e}"))?;
            println!(
                "released: {} user(s) will be converged again by a running deprovd{}",
                r.users.len(),
                if r.was_tripped {
                    ""
                } else {
                    " (the guard was not tripped)"
                }
            );
            Ok(0)
        }
        GuardCmd::Discard { tenant } => {
            let t = crate::cli::tenant_named(db, &tenant).await?;
            let r = guard::discard(db, &t.id, AuditActor::cli("guard discard"))
                .await
                .map_err(|e| format!("database error: {e}"))?;
            println!(
                "discarded the held actions of {} user(s); they converge again on their next change",
                r.users.len()
            );
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::fresh_dbs;

    #[tokio::test]
    async fn status_release_discard_run_on_a_fresh_tenant() {
        for db in fresh_dbs().await {
            crate::store::tenants::ensure_default_tenant(&db)
                .await
                .unwrap();
            let t = || "default".to_string();
            assert_eq!(run(&db, GuardCmd::Status { tenant: t() }).await.unwrap(), 0);
            assert_eq!(
                run(&db, GuardCmd::Release { tenant: t() }).await.unwrap(),
                0
            );
            assert_eq!(
                run(&db, GuardCmd::Discard { tenant: t() }).await.unwrap(),
                0
            );
            assert!(run(
                &db,
                GuardCmd::Status {
                    tenant: "nope".into()
                }
            )
            .await
            .is_err());
        }
    }
}
