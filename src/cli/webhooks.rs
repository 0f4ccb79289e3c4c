//! `deprovd webhooks list|create|delete|ping|deliveries`: manage a tenant's webhook
//! subscriptions from the command line, as `/admin/v1/webhooks` does over HTTP. The secret of a
//! new subscription is generated (or read from standard input with `--secret-stdin`, never from
//! the command line, where `ps` and shell history would keep it) and printed once. Every change
//! is audited.
//!
//! Not here: delivery (`notify/worker.rs`, run by `deprovd serve`).

use std::sync::Arc;

use clap::Subcommand;
use serde_json::json;
use sqlx::AnyConnection;

use crate::audit::{self, AuditActor, AuditEntry};
use crate::factors::MasterKey;
use crate::notify::{self, NewSubscription, NotifyError};
use crate::store::{Db, StoreError};

#[derive(Debug, Subcommand)]
pub enum WebhooksCmd {
    /// List the tenant's subscriptions and how their deliveries are going.
    List {
        #[arg(long, default_value = "default")]
        tenant: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Subscribe a URL to events; prints the signing secret once.
    Create {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        url: String,
        /// An event type to receive (repeat the flag); none means all. Types: factor_revoked,
        /// factor_suspended, factor_resumed, sessions_revoked, enforcement_required,
        /// guard_tripped, job_dead, ping.
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// Read the secret from the first line of standard input instead of generating one.
        #[arg(long)]
        secret_stdin: bool,
    },
    /// Delete a subscription (its undelivered deliveries are dropped).
    Delete {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// Queue a `ping` event for one subscription (the server delivers it).
    Ping {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        id: String,
    },
    /// The latest deliveries of a subscription, newest first.
    Deliveries {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

/// Errors of the write transactions below.
#[derive(Debug, thiserror::Error)]
enum CliTxError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CliTxError {
    fn from(e: sqlx::Error) -> Self {
        CliTxError::Store(StoreError::Database(e))
    }
}

fn read_secret_line() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the secret from standard input: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub async fn run(db: &Db, key: Arc<MasterKey>, cmd: WebhooksCmd) -> Result<(), String> {
    match cmd {
        WebhooksCmd::List { tenant, json } => {
            let t = super::tenant_named(db, &tenant).await?;
            let subs = notify::list_subscriptions(db, &t.id)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                for s in &subs {
                    println!("{}", serde_json::to_string(s).map_err(|e| e.to_string())?);
                }
                return Ok(());
            }
            println!(
                "{:<36}  {:>7}  {:>7}  {:>9}  {:<30}  URL",
                "ID", "PENDING", "FAILING", "DELIVERED", "EVENTS"
            );
            for s in &subs {
                println!(
                    "{:<36}  {:>7}  {:>7}  {:>9}  {:<30}  {}",
                    s.id,
                    s.deliveries.pending,
                    s.deliveries.failing,
                    s.deliveries.delivered,
                    s.event_types.join(","),
                    s.url
                );
                if let Some(e) = &s.deliveries.last_error {
                    println!("{:<36}  last error: {e}", "");
                }
            }
            Ok(())
        }
        WebhooksCmd::Create {
            tenant,
            url,
            events,
            description,
            secret_stdin,
        } => {
            let t = super::tenant_named(db, &tenant).await?;
            let secret = if secret_stdin {
                Some(read_secret_line()?)
            } else {
                None
            };
            let valid = notify::validate_subscription(NewSubscription {
                url,
                secret,
                event_types: events,
                description,
            })
            .map_err(|e| match e {
                NotifyError::Invalid(m) => m,
                other => other.to_string(),
            })?;
            let secret = valid.secret.clone();
            let tenant_id = t.id.clone();
            let sub = db
                .write(move |conn: &mut AnyConnection| {
                    Box::pin(async move {
                        let sub =
                            notify::create_subscription(conn, &key, &tenant_id, &valid).await?;
                        let detail = json!({
                            "webhook_id": sub.id, "url": sub.url, "event_types": sub.event_types,
                            "description": sub.description,
                        });
                        let actor = AuditActor::cli("webhooks create");
                        let entry = AuditEntry::new("webhook.created", actor, None, detail);
                        audit::append(conn, &tenant_id, entry).await?;
                        Ok::<_, CliTxError>(sub)
                    })
                })
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string(&sub).map_err(|e| e.to_string())?
            );
            eprintln!(
                "the signing secret, shown once (receivers verify X-Deprovd-Signature with it):"
            );
            println!("{secret}");
            Ok(())
        }
        WebhooksCmd::Delete { tenant, id } => {
            let t = super::tenant_named(db, &tenant).await?;
            let (tenant_id, id2) = (t.id.clone(), id.clone());
            let deleted = db
                .write(move |conn: &mut AnyConnection| {
                    Box::pin(async move {
                        if !notify::delete_subscription(conn, &tenant_id, &id2).await? {
                            return Ok::<_, CliTxError>(false);
                        }
                        let actor = AuditActor::cli("webhooks delete");
                        let detail = json!({ "webhook_id": id2 });
                        let entry = AuditEntry::new("webhook.deleted", actor, None, detail);
                        audit::append(conn, &tenant_id, entry).await?;
                        Ok(true)
                    })
                })
                .await
                .map_err(|e| e.to_string())?;
            if !deleted {
                return Err(format!("no webhook {id} in tenant {}", t.name));
            }
            println!("deleted webhook {id}");
            Ok(())
        }
        WebhooksCmd::Ping { tenant, id } => {
            let t = super::tenant_named(db, &tenant).await?;
            let (tenant_id, id2) = (t.id.clone(), id.clone());
            let event = db
                .write(move |conn: &mut AnyConnection| {
                    Box::pin(async move {
                        let Some(event_id) = notify::enqueue_ping(conn, &tenant_id, &id2).await?
                        else {
                            return Ok::<_, CliTxError>(None);
                        };
                        let actor = AuditActor::cli("webhooks ping");
                        let detail = json!({ "webhook_id": id2, "event_id": event_id });
                        let entry = AuditEntry::new("webhook.pinged", actor, None, detail);
                        audit::append(conn, &tenant_id, entry).await?;
                        Ok(Some(event_id))
                    })
                })
                .await
                .map_err(|e| e.to_string())?;
            match event {
                Some(e) => {
                    println!("queued ping event {e}; a running `deprovd serve` delivers it");
                    Ok(())
                }
                None => Err(format!("no enabled webhook {id} in tenant {}", t.name)),
            }
        }
        WebhooksCmd::Deliveries { tenant, id, limit } => {
            let t = super::tenant_named(db, &tenant).await?;
            if notify::get_subscription(db, &t.id, &id)
                .await
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Err(format!("no webhook {id} in tenant {}", t.name));
            }
            let rows = notify::list_deliveries(db, &t.id, &id, limit)
                .await
                .map_err(|e| e.to_string())?;
            for r in &rows {
                println!("{}", serde_json::to_string(r).map_err(|e| e.to_string())?);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: WebhooksCmd,
    }

    #[test]
    fn parses_repeated_events() {
        let cli = Cli::try_parse_from([
            "webhooks",
            "create",
            "--url",
            "https://x.example/h",
            "--event",
            "factor_revoked",
            "--event",
            "job_dead",
        ])
        .unwrap();
        match cli.cmd {
            WebhooksCmd::Create {
                tenant,
                events,
                secret_stdin,
                ..
            } => {
                assert_eq!(tenant, "default");
                assert_eq!(events, vec!["factor_revoked", "job_dead"]);
                assert!(!secret_stdin);
            }
            other => panic!("{other:?}"),
        }
        // there is no way to pass a secret on the command line
        assert!(
            Cli::try_parse_from(["webhooks", "create", "--url", "u", "--secret", "s"]).is_err()
        );
    }

    #[tokio::test]
    async fn create_list_ping_delete() {
        use crate::factors::crypto::KeySource;
        for db in crate::store::testing::fresh_dbs().await {
            let tenant = db
                .write(|conn: &mut AnyConnection| {
                    Box::pin(async move {
                        crate::store::tenants::create_tenant(conn, "default")
                            .await
                            .map(|t| t.id)
                    })
                })
                .await
                .unwrap();
            let key = Arc::new(MasterKey::generate(KeySource::Ephemeral));
            let create = WebhooksCmd::Create {
                tenant: "default".into(),
                url: "https://hooks.example.com/x".into(),
                events: vec!["job_dead".into()],
                description: None,
                secret_stdin: false,
            };
            run(&db, key.clone(), create).await.unwrap();
            let bad = WebhooksCmd::Create {
                tenant: "default".into(),
                url: "https://hooks.example.com/x".into(),
                events: vec!["nope".into()],
                description: None,
                secret_stdin: false,
            };
            assert!(run(&db, key.clone(), bad)
                .await
                .unwrap_err()
                .contains("nope"));
            let subs = notify::list_subscriptions(&db, &tenant).await.unwrap();
            assert_eq!(subs.len(), 1);
            let id = subs[0].id.clone();
            let list = WebhooksCmd::List {
                tenant: "default".into(),
                json: true,
            };
            run(&db, key.clone(), list).await.unwrap();
            let ping = WebhooksCmd::Ping {
                tenant: "default".into(),
                id: id.clone(),
            };
            run(&db, key.clone(), ping).await.unwrap();
            assert_eq!(
                notify::list_deliveries(&db, &tenant, &id, 10)
                    .await
                    .unwrap()
                    .len(),
                1
            );
            let del = || WebhooksCmd::Delete {
                tenant: "default".into(),
                id: id.clone(),
            };
            run(&db, key.clone(), del()).await.unwrap();
            assert!(run(&db, key.clone(), del()).await.is_err());
            let f = audit::ListFilter {
                kind_prefix: Some("webhook.".into()),
                ..Default::default()
            };
            let kinds: Vec<String> = audit::list(&db, &tenant, &f, 10, None)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            assert_eq!(
                kinds,
                vec!["webhook.created", "webhook.pinged", "webhook.deleted"]
            );
        }
    }
}
