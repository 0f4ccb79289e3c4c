//! The command line: global flags, one module per verb. Every verb loads the configuration,
//! opens (and migrates) the database and makes sure tenant `default` exists, so any verb works
//! on a fresh machine.

pub mod audit;
pub mod factors;
pub mod guard;
pub mod jobs;
pub mod offboard;
pub mod policy;
pub mod serve;
pub mod tenant;
pub mod token;
pub mod webhooks;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat, Sources};
use crate::store::Db;

#[derive(Debug, Parser)]
#[command(
    name = "deprovd",
    version,
    about = "SCIM 2.0 server that turns user lifecycle changes into MFA factor and session action"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database URL: sqlite://FILE or postgres://… (overrides DEPROVD_DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve,
    /// Create, list and revoke API tokens.
    Token {
        #[command(subcommand)]
        cmd: token::TokenCmd,
    },
    /// Create and configure tenants.
    Tenant {
        #[command(subcommand)]
        cmd: tenant::TenantCmd,
    },
    /// Validate, simulate, set and show a tenant's policy.
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
    },
    /// Administer the built-in factor store.
    Factors {
        #[command(subcommand)]
        cmd: factors::FactorsCmd,
    },
    /// HR offboarding: deactivate a user now or at a set time.
    Offboard(offboard::OffboardArgs),
    /// Verify or export the hash-chained audit log.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// List and retry converge jobs (dead letters included).
    Jobs {
        #[command(subcommand)]
        cmd: jobs::JobsCmd,
    },
    /// Show, release or discard the blast-radius guard's quarantine.
    Guard {
        #[command(subcommand)]
        cmd: guard::GuardCmd,
    },
    /// Manage webhook subscriptions (signed, durable event delivery).
    Webhooks {
        #[command(subcommand)]
        cmd: webhooks::WebhooksCmd,
    },
}

/// Runs the verb and returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let sources = Sources {
        file: cli.config.clone(),
        database_url_flag: cli.database_url.clone(),
    };
    let config = match Config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("deprovd: {e}");
            return 2;
        }
    };
    init_logging(&config, matches!(cli.command, Command::Serve));
    let result = match cli.command {
        Command::Serve => serve::serve(config).await,
        // Checking a file needs no database.
        Command::Policy {
            cmd: policy::PolicyCmd::Check { file },
        } => Ok(policy::check(&file)),
        other => match open(&config).await {
            Ok(db) => match other {
                Command::Token { cmd } => token::run(&db, cmd).await,
                Command::Tenant { cmd } => tenant::run(&db, cmd).await,
                Command::Policy { cmd } => policy::run(&db, cmd).await,
                Command::Factors { cmd } => match master_key(&config, &db).await {
                    Ok(key) => factors::run(&db, key, cmd).await.map(|()| 0),
                    Err(e) => Err(e),
                },
                Command::Offboard(args) => offboard::run(&db, args).await.map(|()| 0),
                Command::Audit { cmd } => audit::run(&db, cmd).await,
                Command::Jobs { cmd } => jobs::run(&db, cmd).await,
                Command::Guard { cmd } => guard::run(&db, cmd).await,
                Command::Webhooks { cmd } => match master_key(&config, &db).await {
                    Ok(key) => webhooks::run(&db, key, cmd).await.map(|()| 0),
                    Err(e) => Err(e),
                },
                Command::Serve => unreachable_serve(),
            },
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("deprovd: {e}");
            1
        }
    }
}

fn unreachable_serve() -> Result<i32, String> {
    Err("internal: serve dispatched twice".into())
}

/// Opens and migrates the database and makes sure tenant `default` exists.
pub async fn open(config: &Config) -> Result<Db, String> {
    let db = Db::connect(&config.database_url)
        .await
        .map_err(|e| format!("cannot open database: {e}"))?;
    crate::store::tenants::ensure_default_tenant(&db)
        .await
        .map_err(|e| format!("cannot create tenant default: {e}"))?;
    Ok(db)
}

/// The master key that encrypts factor secrets, checked against the database.
pub async fn master_key(
    config: &Config,
    db: &Db,
) -> Result<std::sync::Arc<crate::factors::crypto::MasterKey>, String> {
    let key =
        crate::factors::crypto::load_or_create(&config.database_url, config.master_key.as_deref())?;
    crate::factors::crypto::verify_master_key(db, &key).await?;
    Ok(std::sync::Arc::new(key))
}

/// Logs go to stderr (stdout carries tokens and reports). `serve` logs at info by default,
/// other verbs at warn; `RUST_LOG` overrides.
fn init_logging(config: &Config, serving: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if serving { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Resolves a tenant name to its row, with an error that says what exists.
pub async fn tenant_named(db: &Db, name: &str) -> Result<crate::store::tenants::Tenant, String> {
    match crate::store::tenants::tenant_by_name(&db.pool, name).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(format!(
            "tenant {name:?} not found (create it with `deprovd tenant create {name}`)"
        )),
        Err(e) => Err(format!("database error: {e}")),
    }
}
