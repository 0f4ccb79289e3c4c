//! Spawns the real application (the same `prepare` + `Application::build` as `deprovd serve`)
//! on a random loopback port with a fresh database: a SQLite file in a temp dir always, and a
//! fresh PostgreSQL database too when `DEPROVD_TEST_PG` points at a server.

use std::net::TcpListener;

use deprovd::config::{Config, Sources};
use deprovd::http::Application;
use serde_json::{json, Value};
use sqlx::Connection;

pub const SCIM: &str = "application/scim+json";

pub struct TestApp {
    pub engine: &'static str,
    pub base: String,
    pub scim_token: String,
    pub admin_token: String,
    pub client: reqwest::Client,
    pub state: actix_web::web::Data<deprovd::http::AppState>,
    pub database_url: String,
    handle: actix_web::dev::ServerHandle,
    _database: TestDatabase,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // Stop the server's worker threads; the database goes with `_database` (and the SQLite
        // file with `_dir`), dropped after this.
        drop(handle.stop(false));
    }
}

/// One app per engine under test.
pub async fn apps() -> Vec<TestApp> {
    let mut out = vec![spawn_app("sqlite").await];
    if std::env::var("DEPROVD_TEST_PG")
        .map(|v| !v.is_empty())
        .unwrap_or(false)
    {
        out.push(spawn_app("postgres").await);
    }
    out
}

/// A test's database; a PostgreSQL one is dropped with this (left behind, every run of the
/// suite would add dozens to the server).
pub struct TestDatabase {
    pub url: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        deprovd::store::testing::drop_test_database(&self.url);
    }
}

pub async fn fresh_database(engine: &str, dir: &std::path::Path) -> TestDatabase {
    TestDatabase {
        url: fresh_database_url(engine, dir).await,
    }
}

async fn fresh_database_url(engine: &str, dir: &std::path::Path) -> String {
    match engine {
        "sqlite" => format!("sqlite://{}", dir.join("deprovd.db").display()),
        _ => {
            let base = std::env::var("DEPROVD_TEST_PG").expect("DEPROVD_TEST_PG");
            let base = base.trim_end_matches('/').to_string();
            let name = format!("deprovd_it_{}", uuid::Uuid::new_v4().simple());
            sqlx::any::install_default_drivers();
            let mut admin = sqlx::AnyConnection::connect(&format!("{base}/postgres"))
                .await
                .expect("connect to PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .expect("create test database");
            let _ = admin.close().await;
            format!("{base}/{name}")
        }
    }
}

pub async fn spawn_app(engine: &'static str) -> TestApp {
    spawn_app_with(engine, |_| {}).await
}

pub async fn spawn_app_with(engine: &'static str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = fresh_database(engine, dir.path()).await;
    let database_url = database.url.clone();
    let mut config =
        Config::load_from(&Sources::default(), &Default::default()).expect("default config");
    config.database_url = database_url.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.master_key = Some(deprovd_test_key());
    tweak(&mut config);
    let (state, tokens) = deprovd::cli::serve::prepare(config)
        .await
        .expect("prepare app");
    let tokens = tokens.expect("a fresh database prints first-run tokens");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let app = Application::build(state, listener).expect("build app");
    let port = app.port();
    let handle = app.server_handle();
    let state = app.state.clone();
    let _background = deprovd::cli::serve::start_background(&state);
    tokio::spawn(async move {
        let _keep = _background;
        let _ = app.run_until_stopped().await;
    });
    TestApp {
        engine,
        base: format!("http://127.0.0.1:{port}"),
        scim_token: tokens.scim,
        admin_token: tokens.admin,
        client: reqwest::Client::builder().build().unwrap(),
        state,
        database_url,
        handle,
        _database: database,
        _dir: dir,
    }
}

/// A fixed 32-byte test key (base64), so tests never write a key file.
pub fn deprovd_test_key() -> String {
    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_string()
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}/scim/v2{}", self.base, path)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", SCIM).body(b.to_string());
        }
        into_resp(req.send().await.expect("request")).await
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Resp {
        let req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.scim_token)
            .header("content-type", content_type)
            .body(body);
        into_resp(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(reqwest::Method::GET, path, None, Some(&self.scim_token))
            .await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(
            reqwest::Method::POST,
            path,
            Some(body),
            Some(&self.scim_token),
        )
        .await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(
            reqwest::Method::PUT,
            path,
            Some(body),
            Some(&self.scim_token),
        )
        .await
    }
    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.send(
            reqwest::Method::PATCH,
            path,
            Some(body),
            Some(&self.scim_token),
        )
        .await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(reqwest::Method::DELETE, path, None, Some(&self.scim_token))
            .await
    }

    /// `GET /scim/v2/Users?filter=…` with the filter URL-encoded.
    pub async fn filter(&self, endpoint: &str, filter: &str) -> Resp {
        let url =
            reqwest::Url::parse_with_params(&self.url(endpoint), &[("filter", filter)]).unwrap();
        let path = format!("{}?{}", endpoint, url.query().unwrap_or(""));
        self.get(&path).await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(b);
        }
        into_resp(req.send().await.expect("request")).await
    }

    /// Creates a user and returns its SCIM JSON.
    pub async fn create_user(&self, user_name: &str) -> Value {
        let r = self.post("/Users", &user(user_name)).await;
        assert_eq!(
            r.status, 201,
            "[{}] create {user_name}: {}",
            self.engine, r.text
        );
        r.body
    }

    pub async fn create_group(&self, name: &str, members: &[&str]) -> Value {
        let members: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
        let r = self
            .post(
                "/Groups",
                &json!({"schemas": [GROUP], "displayName": name, "members": members}),
            )
            .await;
        assert_eq!(
            r.status, 201,
            "[{}] create group {name}: {}",
            self.engine, r.text
        );
        r.body
    }
}

async fn into_resp(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        text,
    }
}

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

pub fn user(user_name: &str) -> Value {
    json!({
        "schemas": [USER],
        "userName": user_name,
        "name": {"givenName": "Given", "familyName": "Family"},
        "emails": [{"value": format!("{user_name}@example.com"), "type": "work", "primary": true}],
        "active": true
    })
}

pub fn patch(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": ops})
}
