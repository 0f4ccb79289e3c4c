//! The actix-web application: state, middleware (request id, client IP, metrics, tracing span),
//! and the route table. `Application::build` is the one function that `deprovd serve` and the
//! integration tests both call, so the tests run the real app.

pub mod admin;
pub mod auth;
pub mod error;
pub mod metrics;
pub mod scim;

use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, HttpServer};
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::directory::Directory;
use crate::factors::crypto::MasterKey;
use crate::store::Db;

pub struct AppState {
    pub db: Db,
    pub directory: Directory,
    pub auth: Authenticator,
    pub config: Arc<Config>,
    pub master_key: Arc<MasterKey>,
    pub metrics: Arc<metrics::Metrics>,
}

/// Per-request facts the middleware works out once: the request id (from a sane
/// `X-Request-Id` or a new UUID) and the client address (the peer, or the first
/// `X-Forwarded-For` hop when the peer is a trusted proxy).
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    pub client_ip: IpAddr,
}

impl RequestMeta {
    pub fn of(req: &HttpRequest) -> RequestMeta {
        req.extensions()
            .get::<RequestMeta>()
            .cloned()
            .unwrap_or_else(|| RequestMeta {
                request_id: uuid::Uuid::new_v4().to_string(),
                client_ip: req
                    .peer_addr()
                    .map(|a| a.ip())
                    .unwrap_or(IpAddr::from([127, 0, 0, 1])),
            })
    }
}

fn request_meta(req: &actix_web::dev::ServiceRequest, trusted: &[IpAddr]) -> RequestMeta {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let client_ip = if trusted.contains(&peer) {
        req.headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer)
    } else {
        peer
    };
    RequestMeta {
        request_id,
        client_ip,
    }
}

pub struct Application {
    port: u16,
    server: Server,
    pub state: web::Data<AppState>,
}

impl Application {
    /// Binds the listener and builds the server; background workers are started by the caller
    /// through [`crate::cli::serve::start_background`], so tests can choose.
    pub fn build(state: AppState, listener: TcpListener) -> std::io::Result<Application> {
        let port = listener.local_addr()?.port();
        let state = web::Data::new(state);
        let data = state.clone();
        let server = HttpServer::new(move || {
            let trusted = data.config.trusted_proxies.clone();
            let metrics = data.metrics.clone();
            App::new()
                .app_data(data.clone())
                .wrap_fn(move |req, srv| {
                    let meta = request_meta(&req, &trusted);
                    let request_id = meta.request_id.clone();
                    let span = tracing::info_span!("request", id = %meta.request_id, method = %req.method(), path = %req.path());
                    req.extensions_mut().insert(meta);
                    let method = req.method().to_string();
                    let started = Instant::now();
                    let metrics = metrics.clone();
                    let fut = srv.call(req);
                    async move {
                        let mut res = fut.await?;
                        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_string());
                        let status = res.status().as_u16();
                        metrics.observe(&route, &method, status, started.elapsed());
                        if status >= 500 {
                            tracing::warn!(status, "request failed");
                        } else {
                            tracing::debug!(status, elapsed_us = started.elapsed().as_micros() as u64, "request");
                        }
                        if let Ok(v) = HeaderValue::from_str(&request_id) {
                            res.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
                        }
                        Ok(res)
                    }
                    .instrument(span)
                })
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics_endpoint))
                .configure(scim::routes)
                .configure(admin::routes)
        })
        .listen(listener)?
        .shutdown_timeout(10)
        .run();
        Ok(Application {
            port,
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.db.ping().await {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("database unreachable\n")
    }
}

async fn metrics_endpoint(state: web::Data<AppState>) -> HttpResponse {
    let (size, idle) = state.db.pool_stats();
    let (batches, ops) = state.db.write_stats();
    // Entries waiting for the chainer (PostgreSQL): a number that keeps growing means the
    // chain is not being linked. -1 when it cannot be read.
    let audit_pending = crate::audit::store::pending_count(&state.db)
        .await
        .map_or(-1.0, |n| n as f64);
    let body = state.metrics.render(&[
        (
            "deprovd_audit_pending",
            "Audit entries committed but not yet linked into their hash chain.",
            audit_pending,
        ),
        (
            "deprovd_db_pool_connections",
            "Open database connections.",
            size as f64,
        ),
        (
            "deprovd_db_pool_idle",
            "Idle database connections.",
            idle as f64,
        ),
        (
            "deprovd_db_write_batches",
            "Write transactions committed (SQLite batches several writes per commit).",
            batches as f64,
        ),
        (
            "deprovd_db_write_ops",
            "Write operations committed.",
            ops as f64,
        ),
    ]);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
