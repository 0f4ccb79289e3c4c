//! `deprovd offboard --tenant T --user USERNAME [--at TIME] [--reason TEXT] [--ticket ID]`: HR
//! offboarding from the command line, now or at a set time; `--list` shows the tenant's
//! offboardings and `--cancel ID` cancels one that has not started. The work is `offboarding/`.

use chrono::{DateTime, Utc};
use clap::Args;

use crate::directory::{Actor, ActorKind};
use crate::offboarding;
use crate::store::Db;

#[derive(Debug, Args)]
pub struct OffboardArgs {
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// The userName of the person leaving.
    #[arg(long, required_unless_present_any = ["list", "cancel"])]
    pub user: Option<String>,
    /// When to deactivate (RFC 3339, e.g. 2025-07-01T17:00:00Z); now when left out.
    #[arg(long, value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,
    #[arg(long)]
    pub reason: Option<String>,
    /// The HR ticket this offboarding belongs to.
    #[arg(long)]
    pub ticket: Option<String>,
    /// List the tenant's offboardings instead.
    #[arg(long, conflicts_with_all = ["user", "cancel"])]
    pub list: bool,
    /// Cancel a scheduled offboarding (by id) instead.
    #[arg(long, value_name = "ID", conflicts_with = "user")]
    pub cancel: Option<String>,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time (like 2025-07-01T17:00:00Z): {e}"))
}

fn cli_actor(tenant_id: &str, command: &str) -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    Actor {
        tenant_id: tenant_id.to_string(),
        kind: ActorKind::Cli,
        id: user.clone(),
        name: format!("{user} ({command})"),
        client_ip: None,
        request_id: None,
    }
}

fn line(o: &offboarding::Offboarding) -> String {
    format!(
        "{}  {:<9}  {}  {}  {}{}",
        o.id,
        o.state,
        o.at,
        o.user_name,
        o.outcome.as_deref().unwrap_or(""),
        o.ticket
            .as_deref()
            .map(|t| format!("  ticket {t}"))
            .unwrap_or_default()
    )
}

pub async fn run(db: &Db, args: OffboardArgs) -> Result<(), String> {
    let t = crate::cli::tenant_named(db, &args.tenant).await?;
    if args.list {
        let all = offboarding::list(db, &t.id)
            .await
            .map_err(|e| e.to_string())?;
        for o in &all {
            println!("{}", line(o));
        }
        return Ok(());
    }
    if let Some(id) = args.cancel {
        let o = offboarding::cancel(db, &cli_actor(&t.id, "offboard --cancel"), &t.id, &id)
            .await
            .map_err(|e| e.to_string())?;
        println!("cancelled: {}", line(&o));
        return Ok(());
    }
    let user = args.user.ok_or("--user is required")?;
    let o = offboarding::schedule(
        db,
        &cli_actor(&t.id, "offboard"),
        &t.id,
        &user,
        args.at,
        args.reason,
        args.ticket,
    )
    .await
    .map_err(|e| e.to_string())?;
    println!("scheduled: {}", line(&o));
    eprintln!(
        "a running deprovd deactivates {} at {} (cancel before then with --cancel {})",
        o.user_name, o.at, o.id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        args: OffboardArgs,
    }

    #[test]
    fn flags_parse() {
        let t = T::try_parse_from([
            "x",
            "--user",
            "alice",
            "--at",
            "2030-01-02T03:04:05+01:00",
            "--ticket",
            "HR-1",
        ])
        .unwrap();
        assert_eq!(t.args.user.as_deref(), Some("alice"));
        assert_eq!(t.args.at.unwrap().to_rfc3339(), "2030-01-02T02:04:05+00:00");
        assert_eq!(t.args.tenant, "default");
        assert!(T::try_parse_from(["x"]).is_err(), "--user is required");
        assert!(T::try_parse_from(["x", "--user", "a", "--at", "tomorrow"]).is_err());
        assert!(T::try_parse_from(["x", "--list"]).unwrap().args.list);
        assert!(T::try_parse_from(["x", "--cancel", "id"])
            .unwrap()
            .args
            .cancel
            .is_some());
        assert!(T::try_parse_from(["x", "--list", "--user", "a"]).is_err());
    }

    #[tokio::test]
    async fn schedule_list_cancel() {
        for db in crate::store::testing::fresh_dbs().await {
            let t = crate::store::tenants::ensure_default_tenant(&db)
                .await
                .unwrap();
            let dir = crate::directory::Directory::new(db.clone());
            dir.create_user(
                &Actor::system(t.id.clone()),
                serde_json::json!({"userName": "alice"}),
            )
            .await
            .unwrap();
            let parse = |a: &[&str]| {
                T::try_parse_from(std::iter::once("x").chain(a.iter().copied()))
                    .unwrap()
                    .args
            };
            run(
                &db,
                parse(&[
                    "--user",
                    "Alice",
                    "--at",
                    "2099-01-01T00:00:00Z",
                    "--reason",
                    "left",
                ]),
            )
            .await
            .unwrap();
            let all = offboarding::list(&db, &t.id).await.unwrap();
            assert_eq!(all.len(), 1);
            assert_eq!(all[0].at, "2099-01-01T00:00:00.000000Z");
            run(&db, parse(&["--list"])).await.unwrap();
            run(&db, parse(&["--cancel", &all[0].id])).await.unwrap();
            assert_eq!(
                offboarding::list(&db, &t.id).await.unwrap()[0].state,
                "cancelled"
            );
            assert!(run(&db, parse(&["--user", "bob"]))
                .await
                .unwrap_err()
                .contains("bob"));
        }
    }
}
