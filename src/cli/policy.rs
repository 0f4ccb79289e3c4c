//! `deprovd policy check|simulate|set|show`: validate a policy file with line-precise errors,
//! preview what it would change for a tenant's users (changing nothing), store it as the
//! tenant's next version, print the current one.
//!
//! Not here: parsing and evaluation (`policy/`), planning (`engine::plan`, reused so the preview
//! is exactly what converge would do).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use sqlx::AnyConnection;

use crate::engine::plan::Action;
use crate::factors::crypto::{KeySource, MasterKey};
use crate::factors::{store as fstore, store_for_tenant, FactorStore};
use crate::policy::{
    current_policy, parse_policy, policy_hash, Policy, PolicyStoreError, DEFAULT_POLICY_TOML,
};
use crate::store::Db;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file: FILE:LINE:COL: message per problem, or "ok (hash …)".
    Check { file: PathBuf },
    /// Show which users a policy would change, and how, without changing anything.
    Simulate {
        file: PathBuf,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Store FILE as the tenant's next policy version and converge every user under it.
    Set {
        file: PathBuf,
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Print the tenant's current policy with its version, hash and author.
    Show {
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

pub async fn run(db: &Db, cmd: PolicyCmd) -> Result<i32, String> {
    match cmd {
        PolicyCmd::Check { file } => Ok(check(&file)),
        PolicyCmd::Simulate { file, tenant } => simulate(db, &file, &tenant).await,
        PolicyCmd::Set { file, tenant } => set(db, &file, &tenant).await,
        PolicyCmd::Show { tenant } => show(db, &tenant).await,
    }
}

/// Reads and parses a policy file; on failure prints `FILE:LINE:COL: message` lines to stderr.
fn load(file: &Path) -> Result<(String, Policy), i32> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return Err(2);
        }
    };
    match parse_policy(&text) {
        Ok(p) => Ok((text, p)),
        Err(errors) => {
            for e in errors {
                eprintln!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message);
            }
            Err(1)
        }
    }
}

/// `policy check FILE`; needs no database. Exit 0 valid, 1 invalid, 2 unreadable.
pub fn check(file: &Path) -> i32 {
    match load(file) {
        Ok((text, _)) => {
            println!("ok (hash {})", policy_hash(&text));
            0
        }
        Err(code) => code,
    }
}

fn db_err(e: impl std::fmt::Display) -> String {
    format!("database error: {e}")
}

/// One line of the preview.
struct Row {
    user: String,
    action: String,
    detail: String,
}

fn describe(a: &Action) -> (String, String) {
    let name = a.name().to_string();
    let detail = match a {
        Action::SuspendFactor {
            factor_id,
            factor_type,
            reason,
        }
        | Action::RevokeFactor {
            factor_id,
            factor_type,
            reason,
        } => {
            format!("{factor_id} ({factor_type}) {reason}")
        }
        Action::ResumeFactor {
            factor_id,
            factor_type,
        } => format!("{factor_id} ({factor_type})"),
        Action::RevokeSessions { sessions } => format!("{sessions} live session(s)"),
        Action::RequireEnrollment {
            types,
            deadline,
            rule,
        }
        | Action::RequirementOverdue {
            types,
            deadline,
            rule,
        } => {
            let t: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            format!(
                "one of [{}] by {deadline} (require rule {})",
                t.join(", "),
                rule + 1
            )
        }
    };
    (name, detail)
}

/// What `policy simulate` found.
#[derive(Default)]
pub struct Simulation {
    rows: Vec<Row>,
    users: usize,
    changed: usize,
    unlinkable: usize,
    orphans: usize,
    counts: HashMap<&'static str, usize>,
}

/// For every directory user, the actions converge would take under `policy` against the factor
/// store as it is now; then the factor-store users no directory user links to. Reads only.
pub async fn simulate_tenant(
    db: &Db,
    tenant_id: &str,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Simulation, String> {
    // Listing factors and sessions never decrypts: a throw-away key is enough and keeps the
    // preview from needing the real one.
    let key = Arc::new(MasterKey::generate(KeySource::Ephemeral));
    let store: Arc<dyn FactorStore> = store_for_tenant(db, key.clone(), tenant_id);
    // The engine's own read-only planner: the preview loads each user, their groups and
    // lifecycle, enforcement rows and quarantine exactly as converge does.
    let ctx = crate::engine::EngineCtx::new(db.clone(), key);
    let mut sim = Simulation::default();
    let mut linked: HashSet<String> = HashSet::new();
    let mut after = 0i64;
    loop {
        let page = fstore::users_page(&db.pool, tenant_id, after, 500)
            .await
            .map_err(db_err)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for u in page {
            sim.users += 1;
            let Some(user_plan) = crate::engine::plan_user(&ctx, tenant_id, &u.id, policy, now)
                .await
                .map_err(|e| e.message)?
            else {
                continue; // deleted since the page was read
            };
            let Some(user_key) = user_plan.link_key.clone() else {
                sim.unlinkable += 1;
                sim.rows.push(Row {
                    user: u.user_name.clone(),
                    action: "unlinked".into(),
                    detail: format!(
                        "no {} value to find the user in the factor store",
                        policy.link_by.as_str()
                    ),
                });
                continue;
            };
            linked.insert(user_key);
            if !user_plan.actions.is_empty() {
                sim.changed += 1;
            }
            for a in &user_plan.actions {
                *sim.counts.entry(a.name()).or_default() += 1;
                let (action, detail) = describe(a);
                sim.rows.push(Row {
                    user: u.user_name.clone(),
                    action,
                    detail,
                });
            }
        }
    }

    // Factor-store users that no directory user links to (reconciliation reports them).
    let mut cursor: Option<String> = None;
    loop {
        let keys = store
            .list_users(tenant_id, cursor.clone(), 500)
            .await
            .map_err(|e| e.message)?;
        let Some(last) = keys.last() else { break };
        cursor = Some(last.clone());
        for k in keys {
            if !linked.contains(&k) {
                sim.orphans += 1;
                sim.rows.push(Row {
                    user: k,
                    action: "unlinked_factor_owner".into(),
                    detail: "holds factors or sessions; no directory user links to it".into(),
                });
            }
        }
    }
    Ok(sim)
}

/// `policy simulate FILE --tenant T`: the preview as a table and a summary line.
async fn simulate(db: &Db, file: &Path, tenant_name: &str) -> Result<i32, String> {
    let (text, policy) = match load(file) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let tenant = super::tenant_named(db, tenant_name).await?;
    let sim = simulate_tenant(db, &tenant.id, &policy, Utc::now()).await?;
    let w_user = sim
        .rows
        .iter()
        .map(|r| r.user.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let w_action = sim
        .rows
        .iter()
        .map(|r| r.action.len())
        .max()
        .unwrap_or(0)
        .max(6);
    if !sim.rows.is_empty() {
        println!("{:<w_user$}  {:<w_action$}  DETAIL", "USERNAME", "ACTION");
        for r in &sim.rows {
            println!("{:<w_user$}  {:<w_action$}  {}", r.user, r.action, r.detail);
        }
        println!();
    }
    let mut summary: Vec<String> = sim.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    summary.sort();
    println!(
        "policy {} (hash {}){}: {} of {} users would change{}; {} without a link value; {} unlinked factor-store users. Nothing was changed.",
        file.display(),
        policy_hash(&text).get(..12).unwrap_or_default(),
        if policy.audit_only() { " [audit-only: converge would record these, not execute them]" } else { "" },
        sim.changed,
        sim.users,
        if summary.is_empty() { String::new() } else { format!(" ({})", summary.join(", ")) },
        sim.unlinkable,
        sim.orphans,
    );
    Ok(0)
}

/// `policy set FILE --tenant T`: in one transaction, the new version, its audit entry, and a
/// converge job for every user of the tenant (a policy change is a trigger like any other).
async fn set(db: &Db, file: &Path, tenant_name: &str) -> Result<i32, String> {
    let (text, _) = match load(file) {
        Ok(v) => v,
        Err(code) => return Ok(code),
    };
    let tenant = super::tenant_named(db, tenant_name).await?;
    let actor = crate::audit::AuditActor::cli("policy set");
    let set_by = format!("cli:{}", actor.id);
    let tenant_id = tenant.id.clone();
    let result = db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                crate::policy::change::change_policy(conn, &tenant_id, &text, &set_by, actor)
                    .await
                    .map(|c| (c.version, c.users_queued))
            })
        })
        .await;
    match result {
        Ok((v, None)) => {
            println!(
                "unchanged: tenant {} already has this policy as version {} (hash {})",
                tenant.name, v.version, v.hash
            );
            Ok(0)
        }
        Ok((v, Some(n))) => {
            println!(
                "tenant {}: policy version {} (hash {}) set; {n} users queued to converge",
                tenant.name, v.version, v.hash
            );
            Ok(0)
        }
        Err(PolicyStoreError::Invalid(errors)) => {
            for e in errors {
                eprintln!("{}:{}:{}: {}", file.display(), e.line, e.column, e.message);
            }
            Ok(1)
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn show(db: &Db, tenant_name: &str) -> Result<i32, String> {
    let tenant = super::tenant_named(db, tenant_name).await?;
    let (_, version) = current_policy(db, &tenant.id)
        .await
        .map_err(|e| e.to_string())?;
    match version {
        Some(v) => {
            println!(
                "# tenant {}: policy version {}, hash {}, set by {} at {}",
                tenant.name, v.version, v.hash, v.set_by, v.created
            );
            print!("{}", v.text);
            if !v.text.ends_with('\n') {
                println!();
            }
        }
        None => {
            println!(
                "# tenant {} has no policy; this default applies:",
                tenant.name
            );
            print!("{DEFAULT_POLICY_TOML}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Actor, Directory};
    use crate::factors::{
        create_session, enroll, list, list_sessions, EnrollMaterial, FactorStatus, FactorType,
    };
    use crate::store::tenants::create_tenant;
    use serde_json::json;

    const POLICY: &str = r#"
[[require]]
who = 'groups.display eq "Admins" or roles.value eq "admin"'
factors = ["webauthn"]
grace = "72h"

[[forbid]]
who = 'userType eq "Contractor"'
factors = ["sms", "voice"]
"#;

    fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn check_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(&write_file(dir.path(), "ok.toml", POLICY)), 0);
        assert_eq!(
            check(&write_file(dir.path(), "bad.toml", "mode = \"maybe\"\n")),
            1
        );
        assert_eq!(check(&dir.path().join("missing.toml")), 2);
    }

    #[tokio::test]
    async fn simulate_previews_and_changes_nothing_then_set_converges_everyone() {
        for db in crate::store::testing::fresh_dbs().await {
            let tenant = db
                .write(|c: &mut AnyConnection| {
                    Box::pin(async move { create_tenant(c, "sim").await })
                })
                .await
                .unwrap();
            let t = tenant.id.as_str();
            let dir = Directory::new(db.clone());
            let actor = Actor::system(t);
            let core = "urn:ietf:params:scim:schemas:core:2.0:User";
            for u in [
                json!({"schemas": [core], "userName": "Alice", "roles": [{"value": "admin"}], "active": true}),
                json!({"schemas": [core], "userName": "bob", "userType": "Contractor", "active": true}),
                json!({"schemas": [core], "userName": "carol", "active": false}),
                json!({"schemas": [core], "userName": "dave", "active": true}),
            ] {
                dir.create_user(&actor, u).await.unwrap();
            }
            let key = MasterKey::generate(KeySource::Ephemeral);
            let none = EnrollMaterial::None;
            enroll(&db, &key, t, "alice", FactorType::Totp, None, none.clone())
                .await
                .unwrap();
            enroll(&db, &key, t, "bob", FactorType::Sms, None, none.clone())
                .await
                .unwrap();
            let wa = EnrollMaterial::Webauthn {
                credential_id: "c1".into(),
                public_key: "pk".into(),
            };
            enroll(&db, &key, t, "carol", FactorType::Webauthn, None, wa)
                .await
                .unwrap();
            create_session(&db, t, "carol").await.unwrap();
            enroll(&db, &key, t, "dave", FactorType::Totp, None, none.clone())
                .await
                .unwrap();
            enroll(&db, &key, t, "zed", FactorType::Sms, None, none.clone())
                .await
                .unwrap();

            let policy = parse_policy(POLICY).unwrap();
            let sim = simulate_tenant(&db, t, &policy, Utc::now()).await.unwrap();
            let got: Vec<(String, String)> = sim
                .rows
                .iter()
                .map(|r| (r.user.clone(), r.action.clone()))
                .collect();
            let want: Vec<(String, String)> = [
                ("Alice", "require_enrollment"),
                ("bob", "revoke_factor"),
                ("carol", "suspend_factor"),
                ("carol", "revoke_sessions"),
                ("zed", "unlinked_factor_owner"),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
            assert_eq!(got, want);
            assert_eq!(
                (sim.users, sim.changed, sim.orphans, sim.unlinkable),
                (4, 3, 1, 0)
            );
            assert!(
                sim.rows[1].detail.contains("forbidden"),
                "{}",
                sim.rows[1].detail
            );

            // nothing changed
            for u in ["alice", "bob", "carol", "dave", "zed"] {
                assert!(
                    list(&db, t, u)
                        .await
                        .unwrap()
                        .iter()
                        .all(|f| f.status == FactorStatus::Active),
                    "{u}"
                );
            }
            assert!(!list_sessions(&db, t, "carol").await.unwrap()[0].revoked);

            // link by externalId: nobody has one, so every user is unlinked and all five
            // factor-store users are orphans
            let by_ext = parse_policy("[link]\nby = \"externalId\"\n").unwrap();
            let sim = simulate_tenant(&db, t, &by_ext, Utc::now()).await.unwrap();
            assert_eq!((sim.unlinkable, sim.orphans, sim.changed), (4, 5, 0));

            // policy set: stores version 1 and queues every user
            let tmp = tempfile::tempdir().unwrap();
            let file = write_file(tmp.path(), "p.toml", POLICY);
            let code = run(
                &db,
                PolicyCmd::Set {
                    file: file.clone(),
                    tenant: "sim".into(),
                },
            )
            .await
            .unwrap();
            assert_eq!(code, 0);
            let (p, v) = current_policy(&db, t).await.unwrap();
            assert_eq!(v.unwrap().version, 1);
            assert_eq!(p.forbid.len(), 1);
            let counts = crate::jobs::store::counts(&db, Some(t)).await.unwrap();
            let queued: i64 = counts.iter().map(|(_, n)| n).sum();
            assert_eq!(queued, 4, "{counts:?}");
            // the same file again is no new version
            run(
                &db,
                PolicyCmd::Set {
                    file,
                    tenant: "sim".into(),
                },
            )
            .await
            .unwrap();
            assert_eq!(crate::policy::list_versions(&db, t).await.unwrap().len(), 1);
            // an invalid file stores nothing
            let bad = write_file(tmp.path(), "bad.toml", "[deleted]\nfactors = \"shred\"\n");
            assert_eq!(
                run(
                    &db,
                    PolicyCmd::Set {
                        file: bad,
                        tenant: "sim".into()
                    }
                )
                .await
                .unwrap(),
                1
            );
            assert_eq!(crate::policy::list_versions(&db, t).await.unwrap().len(), 1);
            assert!(run(
                &db,
                PolicyCmd::Show {
                    tenant: "nope".into()
                }
            )
            .await
            .is_err());
            assert_eq!(
                run(
                    &db,
                    PolicyCmd::Show {
                        tenant: "sim".into()
                    }
                )
                .await
                .unwrap(),
                0
            );
        }
    }
}
