//! `deprovd audit verify|export`: recompute the audit hash chains and name the first bad entry
//! (exit 1), or write the log out as JSON lines. Read-only; the chain logic is in `audit/`.

use std::path::PathBuf;

use clap::Subcommand;

use crate::audit;
use crate::store::{tenants, Db};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Recompute the hash chains; exit 1 naming the first edited, missing or reordered entry.
    Verify {
        /// Only this tenant (name); every tenant when left out.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Write the log as JSON lines, in chain order.
    Export {
        /// Only this tenant (name); every tenant when left out.
        #[arg(long)]
        tenant: Option<String>,
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// The tenant id for a `--tenant` name, if one was given.
async fn tenant_id(db: &Db, name: Option<&str>) -> Result<Option<String>, String> {
    match name {
        Some(n) => Ok(Some(crate::cli::tenant_named(db, n).await?.id)),
        None => Ok(None),
    }
}

/// A tenant id as people know it: "name (id)".
async fn tenant_label(db: &Db, id: &str) -> String {
    match tenants::tenant_by_id(&db.pool, id).await {
        Ok(Some(t)) => format!("{} ({id})", t.name),
        _ => id.to_string(),
    }
}

pub async fn run(db: &Db, cmd: AuditCmd) -> Result<i32, String> {
    match cmd {
        AuditCmd::Verify { tenant } => {
            let t = tenant_id(db, tenant.as_deref()).await?;
            let r = audit::verify(db, t.as_deref())
                .await
                .map_err(|e| format!("database error: {e}"))?;
            match &r.first_bad {
                None => {
                    println!(
                        "audit chain OK: {} entries in {} tenant chain(s)",
                        r.entries, r.tenants
                    );
                    Ok(0)
                }
                Some((t, seq, reason)) => {
                    println!(
                        "audit chain BROKEN: tenant {}, entry seq {seq}: {reason}",
                        tenant_label(db, t).await
                    );
                    Ok(1)
                }
            }
        }
        AuditCmd::Export { tenant, out } => {
            let t = tenant_id(db, tenant.as_deref()).await?;
            let n = match &out {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    audit::export(db, t.as_deref(), &mut w).await
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout());
                    audit::export(db, t.as_deref(), &mut w).await
                }
            }
            .map_err(|e| format!("export failed: {e}"))?;
            if let Some(path) = out {
                eprintln!("wrote {n} audit entries to {}", path.display());
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditActor, AuditEntry};
    use crate::store::testing::fresh_dbs;

    #[tokio::test]
    async fn verify_exits_1_on_a_tampered_chain_and_export_writes_a_file() {
        for db in fresh_dbs().await {
            let t = crate::store::tenants::ensure_default_tenant(&db)
                .await
                .unwrap();
            for i in 0..3 {
                let e = AuditEntry::new(
                    "cli.test",
                    AuditActor::cli("test"),
                    None,
                    serde_json::json!({ "i": i }),
                );
                audit::append_now(&db, &t.id, e).await.unwrap();
            }
            let verify = |tenant: Option<&str>| AuditCmd::Verify {
                tenant: tenant.map(str::to_string),
            };
            assert_eq!(run(&db, verify(None)).await.unwrap(), 0);
            assert_eq!(run(&db, verify(Some("default"))).await.unwrap(), 0);
            assert!(run(&db, verify(Some("nope"))).await.is_err());
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let cmd = AuditCmd::Export {
                tenant: None,
                out: Some(path.clone()),
            };
            assert_eq!(run(&db, cmd).await.unwrap(), 0);
            assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
            sqlx::query("UPDATE audit_log SET kind = 'x' WHERE seq = 2")
                .execute(&db.pool)
                .await
                .unwrap();
            assert_eq!(run(&db, verify(None)).await.unwrap(), 1);
        }
    }
}
