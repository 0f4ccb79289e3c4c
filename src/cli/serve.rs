//! `deprovd serve`: open the database, print the first-run tokens once, load the master key and
//! the configured policies, start the background workers and the HTTP server, and shut down
//! cleanly on SIGTERM / Ctrl-C. `prepare` is shared with the integration tests.

use std::net::TcpListener;
use std::sync::Arc;

use crate::auth::{Authenticator, Scope};
use crate::config::Config;
use crate::directory::Directory;
use crate::http::{metrics::Metrics, AppState, Application};
use crate::store::{tenants, Db};

/// Tokens created on a fresh database (shown once).
pub struct FirstRunTokens {
    pub scim: String,
    pub admin: String,
}

/// Everything the service needs, built from the configuration.
pub async fn prepare(config: Config) -> Result<(AppState, Option<FirstRunTokens>), String> {
    let db = super::open(&config).await?;
    let first_run = first_run_tokens(&db).await?;
    let master_key = super::master_key(&config, &db).await?;
    load_configured_policies(&db, &config).await?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let state = AppState {
        directory: Directory::new(db.clone()),
        auth: Authenticator::new(db.clone(), http),
        config: Arc::new(config),
        master_key,
        metrics: Arc::new(Metrics::default()),
        db,
    };
    Ok((state, first_run))
}

/// On a database whose tenant `default` has no token yet, creates one SCIM and one admin
/// token. Serialised through the write path (and a PostgreSQL advisory lock inside it), so two
/// replicas starting together print tokens once, not twice.
async fn first_run_tokens(db: &Db) -> Result<Option<FirstRunTokens>, String> {
    let tenant = tenants::ensure_default_tenant(db)
        .await
        .map_err(|e| e.to_string())?;
    let (scim, scim_hash) = crate::auth::generate_token(Scope::Scim);
    let (admin, admin_hash) = crate::auth::generate_token(Scope::Admin);
    let engine = db.engine;
    let created = db
        .write(move |conn| {
            Box::pin(async move {
                crate::store::locks::xact_lock(conn, engine, "first-run-tokens").await?;
                if tenants::count_tokens(&mut *conn, &tenant.id, Scope::Scim, false).await? > 0 {
                    return Ok::<bool, tenants::TenantError>(false);
                }
                tenants::insert_token(conn, &tenant.id, Scope::Scim, "first-run scim", &scim_hash)
                    .await?;
                tenants::insert_token(
                    conn,
                    &tenant.id,
                    Scope::Admin,
                    "first-run admin",
                    &admin_hash,
                )
                .await?;
                Ok(true)
            })
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(created.then_some(FirstRunTokens { scim, admin }))
}

pub async fn serve(config: Config) -> Result<i32, String> {
    let listen = config.listen;
    let (state, first_run) = prepare(config).await?;
    if let Some(t) = first_run {
        println!("SCIM token (tenant default): {}", t.scim);
        println!("Admin token (tenant default): {}", t.admin);
        println!("These tokens are shown once. Store them in your secret manager now.");
    }
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let app = Application::build(state, listener)
        .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
    let background = start_background(&app.state);
    tracing::info!(%listen, "deprovd listening; SCIM base URL http://{listen}/scim/v2");
    let result = app.run_until_stopped().await;
    background.shutdown().await;
    result.map_err(|e| format!("server error: {e}"))?;
    Ok(0)
}

/// Policies named in the configuration (`[policies] tenant = "file"`) become the tenant's
/// current policy at start when their text differs from it; each change is a new version.
async fn load_configured_policies(db: &Db, config: &Config) -> Result<(), String> {
    for (tenant_name, path) in &config.policies {
        let tenant = super::tenant_named(db, tenant_name).await?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read policy {}: {e}", path.display()))?;
        let set_by = format!("config:{}", path.display());
        let actor = crate::audit::AuditActor::system("config", &set_by);
        let tenant_id = tenant.id.clone();
        let change = db
            .write(move |conn| {
                Box::pin(async move {
                    crate::policy::change::change_policy(conn, &tenant_id, &text, &set_by, actor)
                        .await
                })
            })
            .await
            .map_err(|e| format!("policy {}: {e}", path.display()))?;
        crate::jobs::nudge();
        if let Some(n) = change.users_queued {
            let v = change.version;
            tracing::info!(tenant = %tenant_name, version = v.version, hash = %v.hash, users_queued = n, "policy loaded from the configuration");
        }
    }
    Ok(())
}

/// Background work of one process: converge workers and webhook delivery.
pub struct Background {
    workers: crate::jobs::worker::Workers,
    delivery: tokio::task::JoinHandle<()>,
    chainer: tokio::task::JoinHandle<()>,
    db: crate::store::Db,
}

impl Background {
    /// Lets running converges finish (leases make any interrupted one run again elsewhere).
    pub async fn shutdown(self) {
        self.workers.shutdown().await;
        self.delivery.abort();
        self.chainer.abort();
        // Link what the last converges appended (they would be linked by the next start or by
        // any reader anyway: pending entries are durable).
        if let Err(e) = crate::audit::link_pending(&self.db, None).await {
            tracing::warn!(error = %e, "cannot link pending audit entries at shutdown");
        }
    }
}

pub fn start_background(state: &AppState) -> Background {
    let mut ctx = crate::engine::EngineCtx::new(state.db.clone(), state.master_key.clone());
    ctx.jobs.max_attempts = state.config.job_max_attempts;
    ctx.jobs.backoff_base = state.config.job_backoff_base;
    ctx.jobs.backoff_cap = state.config.job_backoff_cap;
    let workers = crate::jobs::worker::spawn_workers(ctx, state.config.job_workers);
    let delivery = crate::notify::worker::spawn_delivery(
        state.db.clone(),
        state.master_key.clone(),
        Default::default(),
    );
    let chainer = crate::audit::chainer::spawn(state.db.clone());
    crate::engine::guard::prime_bases(&state.db);
    Background {
        workers,
        delivery,
        chainer,
        db: state.db.clone(),
    }
}
