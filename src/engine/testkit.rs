//! Test fixtures for the engine, jobs and offboarding tests: a tenant on each fresh database
//! with an engine context, users, factors in the built-in store, and quick looks at the results.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{AnyConnection, Row};

use super::EngineCtx;
use crate::directory::Actor;
use crate::factors::crypto::KeySource;
use crate::factors::{self, EnrollMaterial, Factor, FactorStatus, FactorType, MasterKey};
use crate::jobs::JobsConfig;
use crate::store::{tenants, testing::fresh_dbs, StoreError};

pub struct Fixture {
    pub ctx: EngineCtx,
    pub tenant: String,
}

/// Fast queue settings for tests.
pub fn fast_jobs() -> JobsConfig {
    JobsConfig {
        max_attempts: 3,
        lease: Duration::from_secs(10),
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        poll: Duration::from_millis(20),
        batch: 8,
        keep_done: Duration::from_secs(3600),
    }
}

/// A policy with a guard that never trips (tests of other things).
pub const OPEN_POLICY: &str = r#"
[deactivated]
factors = "suspend"
sessions = "revoke"
revoke_after = "30d"

[deleted]
factors = "revoke"
sessions = "revoke"

[guard]
max_destructive_per_15m = 100000
max_destructive_percent_per_15m = 100
percent_applies_above = 100000
"#;

pub async fn fixtures() -> Vec<Fixture> {
    fixtures_with(OPEN_POLICY).await
}

pub async fn fixtures_with(policy: &str) -> Vec<Fixture> {
    let mut out = Vec::new();
    for db in fresh_dbs().await {
        out.push(fixture_on(db, policy).await);
    }
    out
}

/// A tenant `acme` with `policy` on `db`.
pub async fn fixture_on(db: crate::store::Db, policy: &str) -> Fixture {
    let t = db
        .write(|c: &mut AnyConnection| {
            Box::pin(async move { tenants::create_tenant(c, "acme").await })
        })
        .await
        .expect("tenant");
    let mut ctx = EngineCtx::new(db, Arc::new(MasterKey::generate(KeySource::Ephemeral)));
    ctx.jobs = fast_jobs();
    let f = Fixture { ctx, tenant: t.id };
    f.set_policy(policy).await;
    f
}

/// A fresh PostgreSQL database (dropped with its last handle) with a pool of `size`
/// connections; `base` is the server URL of `DEPROVD_TEST_PG`.
pub async fn pg_with_pool(base: &str, size: u32) -> crate::store::Db {
    use sqlx::ConnectOptions;
    sqlx::any::install_default_drivers();
    let base = base.trim_end_matches('/');
    let admin_url = format!("{base}/postgres");
    let name = format!("deprovd_t_{}", uuid::Uuid::new_v4().simple());
    let opts: sqlx::any::AnyConnectOptions = admin_url.parse().expect("admin url");
    let mut admin = opts.connect().await.expect("connect");
    sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create database");
    let cleanup = crate::store::testing::Cleanup::PgDatabase {
        admin_url,
        name: name.clone(),
    };
    let opts = crate::store::DbOptions {
        max_connections: Some(size),
    };
    crate::store::Db::open(&format!("{base}/{name}"), opts, Some(cleanup))
        .await
        .expect("open")
}

impl Fixture {
    pub fn db(&self) -> &crate::store::Db {
        &self.ctx.db
    }

    pub fn actor(&self) -> Actor {
        Actor::system(self.tenant.clone())
    }

    pub async fn set_policy(&self, text: &str) {
        let (t, text) = (self.tenant.clone(), text.to_string());
        self.db()
            .write(move |c: &mut AnyConnection| {
                Box::pin(async move { crate::policy::set_policy(c, &t, &text, "tests").await })
            })
            .await
            .expect("policy");
    }

    /// Creates a user (`userName` = name) and returns its id.
    pub async fn user(&self, name: &str, extra: Value) -> String {
        let mut r = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": name,
            "active": true,
        });
        if let (Some(o), Some(e)) = (r.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        self.ctx
            .directory
            .create_user(&self.actor(), r)
            .await
            .expect("user")
            .id
    }

    pub async fn enroll(&self, name: &str, t: FactorType) -> Factor {
        let material = match t {
            FactorType::Webauthn | FactorType::Certificate => EnrollMaterial::Webauthn {
                credential_id: uuid::Uuid::new_v4().to_string(),
                public_key: "pk".into(),
            },
            _ => EnrollMaterial::None,
        };
        factors::enroll(
            self.db(),
            &self.ctx.master_key,
            &self.tenant,
            name,
            t,
            None,
            material,
        )
        .await
        .expect("enroll")
        .factor
    }

    /// A user with TOTP, WebAuthn and recovery codes, and one live session.
    pub async fn user_with_factors(&self, name: &str) -> String {
        let id = self.user(name, json!({})).await;
        for t in [
            FactorType::Totp,
            FactorType::Webauthn,
            FactorType::RecoveryCodes,
        ] {
            self.enroll(name, t).await;
        }
        factors::create_session(self.db(), &self.tenant, name)
            .await
            .expect("session");
        id
    }

    pub async fn set_active(&self, id: &str, active: bool) {
        let mutate: crate::directory::users::Mutate = Box::new(move |old| {
            let mut r = old.resource.clone();
            if let Some(o) = r.as_object_mut() {
                o.insert("active".into(), Value::Bool(active));
            }
            Ok(r)
        });
        self.ctx
            .directory
            .update_user(&self.actor(), &self.tenant, id, None, mutate)
            .await
            .expect("update");
    }

    pub async fn delete(&self, id: &str) {
        self.ctx
            .directory
            .delete_user(&self.actor(), &self.tenant, id, None)
            .await
            .expect("delete");
    }

    /// (type, status) of every factor of the user, by type.
    pub async fn statuses(&self, name: &str) -> Vec<(FactorType, FactorStatus)> {
        let mut v: Vec<(FactorType, FactorStatus)> = factors::list(self.db(), &self.tenant, name)
            .await
            .expect("list")
            .into_iter()
            .map(|f| (f.factor_type, f.status))
            .collect();
        v.sort_by_key(|(t, _)| *t);
        v
    }

    /// Whether every factor of the user has status `s` (and there is at least one).
    pub async fn all(&self, name: &str, s: FactorStatus) -> bool {
        let v = self.statuses(name).await;
        !v.is_empty() && v.iter().all(|(_, x)| *x == s)
    }

    pub async fn live_sessions(&self, name: &str) -> usize {
        factors::list_sessions(self.db(), &self.tenant, name)
            .await
            .expect("sessions")
            .iter()
            .filter(|s| !s.revoked)
            .count()
    }

    /// Audit kinds about `subject`, in chain order.
    pub async fn audit_kinds(&self, subject: &str) -> Vec<String> {
        let f = crate::audit::ListFilter {
            subject: Some(subject.into()),
            ..Default::default()
        };
        crate::audit::list(self.db(), &self.tenant, &f, 1000, None)
            .await
            .expect("audit")
            .into_iter()
            .map(|r| r.kind)
            .collect()
    }

    /// Audit kinds of the whole tenant, in chain order.
    pub async fn all_audit_kinds(&self) -> Vec<String> {
        crate::audit::list(self.db(), &self.tenant, &Default::default(), 1000, None)
            .await
            .expect("audit")
            .into_iter()
            .map(|r| r.kind)
            .collect()
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::query(sql).execute(&self.db().pool).await.expect(sql);
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query(sql)
            .fetch_one(&self.db().pool)
            .await
            .expect(sql)
            .get(0)
    }

    /// Moves a user's last `kind` lifecycle row `days` into the past (time travel for
    /// revoke_after).
    pub async fn backdate(&self, user_id: &str, kind: &str, days: i64) {
        let at = crate::store::ts_from(chrono::Utc::now() - chrono::Duration::days(days));
        let (t, u, k) = (self.tenant.clone(), user_id.to_string(), kind.to_string());
        self.db()
            .write(move |c: &mut AnyConnection| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE lifecycle_events SET created = $4 WHERE tenant_id = $1 \
                         AND user_id = $2 AND kind = $3",
                    )
                    .bind(&t)
                    .bind(&u)
                    .bind(&k)
                    .bind(&at)
                    .execute(&mut *c)
                    .await?;
                    Ok::<_, StoreError>(())
                })
            })
            .await
            .expect("backdate");
    }
}

/// A factor store that fails one operation (by name) `n` times with a retryable error and
/// passes everything else through.
pub struct FailOp {
    inner: Arc<dyn crate::factors::FactorStore>,
    op: &'static str,
    remaining: std::sync::atomic::AtomicU32,
}

impl FailOp {
    pub fn new(inner: Arc<dyn crate::factors::FactorStore>, op: &'static str, n: u32) -> Self {
        FailOp {
            inner,
            op,
            remaining: std::sync::atomic::AtomicU32::new(n),
        }
    }

    fn check(&self, op: &str) -> Result<(), crate::factors::FactorError> {
        use std::sync::atomic::Ordering;
        if op == self.op
            && self
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(crate::factors::FactorError::retryable(format!(
                "{op} failed (test)"
            )));
        }
        Ok(())
    }
}

type FR<T> = Result<T, crate::factors::FactorError>;
type BF<'a, T> = futures_util::future::BoxFuture<'a, FR<T>>;

impl crate::factors::FactorStore for FailOp {
    fn name(&self) -> &str {
        "failop"
    }
    fn list_factors<'a>(&'a self, t: &'a str, u: &'a str) -> BF<'a, Vec<Factor>> {
        Box::pin(async move {
            self.check("list_factors")?;
            self.inner.list_factors(t, u).await
        })
    }
    fn list_sessions<'a>(&'a self, t: &'a str, u: &'a str) -> BF<'a, Vec<factors::Session>> {
        Box::pin(async move {
            self.check("list_sessions")?;
            self.inner.list_sessions(t, u).await
        })
    }
    fn list_users<'a>(
        &'a self,
        t: &'a str,
        after: Option<String>,
        limit: usize,
    ) -> BF<'a, Vec<String>> {
        self.inner.list_users(t, after, limit)
    }
    fn suspend<'a>(&'a self, t: &'a str, u: &'a str, f: &'a str) -> BF<'a, ()> {
        Box::pin(async move {
            self.check("suspend")?;
            self.inner.suspend(t, u, f).await
        })
    }
    fn resume<'a>(&'a self, t: &'a str, u: &'a str, f: &'a str) -> BF<'a, ()> {
        Box::pin(async move {
            self.check("resume")?;
            self.inner.resume(t, u, f).await
        })
    }
    fn revoke<'a>(&'a self, t: &'a str, u: &'a str, f: &'a str) -> BF<'a, ()> {
        Box::pin(async move {
            self.check("revoke")?;
            self.inner.revoke(t, u, f).await
        })
    }
    fn revoke_sessions<'a>(&'a self, t: &'a str, u: &'a str) -> BF<'a, u64> {
        Box::pin(async move {
            self.check("revoke_sessions")?;
            self.inner.revoke_sessions(t, u).await
        })
    }
    fn require_enrollment<'a>(
        &'a self,
        t: &'a str,
        u: &'a str,
        types: &'a [FactorType],
        deadline: &'a str,
    ) -> BF<'a, ()> {
        Box::pin(async move {
            self.check("require_enrollment")?;
            self.inner.require_enrollment(t, u, types, deadline).await
        })
    }
    fn verify_code<'a>(&'a self, t: &'a str, u: &'a str, c: &'a str) -> BF<'a, bool> {
        self.inner.verify_code(t, u, c)
    }
}
