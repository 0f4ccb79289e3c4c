//! Versioned policy storage: every version a tenant ever set, with its text, hash, who set it and
//! when; the highest version is current. `current_policy` reads the latest row (one indexed
//! query) and keeps parsed policies by the SHA-256 of their text, so a policy set by another
//! process (another replica, the CLI) is seen on the next call and parsing happens once.
//!
//! Not here: parsing (`parse.rs`), auditing the change (the caller writes the audit entry in the
//! same transaction as `set_policy`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{parse_policy, policy_hash, Policy, PolicyError};
use crate::store::{now_ts, Db, StoreError};

/// One stored version of a tenant's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVersion {
    pub tenant_id: String,
    pub version: i64,
    pub hash: String,
    pub set_by: String,
    pub created: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    /// The text is not a valid policy; nothing was stored.
    #[error("invalid policy: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<PolicyError>),
    /// A stored version no longer parses (a policy written by a newer or older deprovd).
    #[error("stored policy version {version} of tenant {tenant} does not parse: {message}")]
    Corrupt {
        tenant: String,
        version: i64,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PolicyStoreError {
    fn from(e: sqlx::Error) -> Self {
        PolicyStoreError::Store(StoreError::Database(e))
    }
}

const COLS: &str = "tenant_id, version, hash, set_by, created, text";

fn version_row(r: &AnyRow) -> Result<PolicyVersion, sqlx::Error> {
    Ok(PolicyVersion {
        tenant_id: r.try_get("tenant_id")?,
        version: r.try_get("version")?,
        hash: r.try_get("hash")?,
        set_by: r.try_get("set_by")?,
        created: r.try_get("created")?,
        text: r.try_get("text")?,
    })
}

/// Parsed policies by the hash of their text (computed here, not read from the row): a text
/// always parses the same, whichever tenant or database it came from.
type Cache = Mutex<HashMap<String, Arc<Policy>>>;

/// Distinct policy texts kept parsed; past this the cache starts over (it only saves parsing).
const CACHE_MAX: usize = 1024;

fn cache() -> &'static Cache {
    static C: OnceLock<Cache> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Validates `text` and stores it as the tenant's next version, inside the caller's
/// transaction (so the audit entry and the "converge everyone" jobs commit with it).
/// Storing the same text as the current version stores nothing and returns the current one.
pub async fn set_policy(
    conn: &mut AnyConnection,
    tenant: &str,
    text: &str,
    set_by: &str,
) -> Result<PolicyVersion, PolicyStoreError> {
    parse_policy(text).map_err(PolicyStoreError::Invalid)?;
    let hash = policy_hash(text);
    let sql =
        format!("SELECT {COLS} FROM policies WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1");
    let current = sqlx::query(&sql)
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
    let current = current.as_ref().map(version_row).transpose()?;
    if let Some(c) = current.as_ref().filter(|c| c.hash == hash) {
        return Ok(c.clone());
    }
    let v = PolicyVersion {
        tenant_id: tenant.to_string(),
        version: current.map(|c| c.version + 1).unwrap_or(1),
        hash,
        set_by: set_by.to_string(),
        created: now_ts(),
        text: text.to_string(),
    };
    // Two writers racing for the same version number: the primary key refuses the second,
    // whose transaction fails and can be retried.
    sqlx::query(&format!(
        "INSERT INTO policies ({COLS}) VALUES ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(&v.tenant_id)
    .bind(v.version)
    .bind(&v.hash)
    .bind(&v.set_by)
    .bind(&v.created)
    .bind(&v.text)
    .execute(&mut *conn)
    .await?;
    Ok(v)
}

/// `set_policy` in a transaction of its own, only when `text` differs from the current version
/// (for policies loaded from the config file at every start). Returns (version, changed).
pub async fn ensure_policy(
    db: &Db,
    tenant: &str,
    text: &str,
    set_by: &str,
) -> Result<(PolicyVersion, bool), PolicyStoreError> {
    let hash = policy_hash(text);
    if let Some(v) = latest(db, tenant).await? {
        if v.hash == hash {
            return Ok((v, false));
        }
    }
    let (t, x, s) = (tenant.to_string(), text.to_string(), set_by.to_string());
    let v = db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move { set_policy(conn, &t, &x, &s).await })
        })
        .await?;
    Ok((v, true))
}

async fn latest(db: &Db, tenant: &str) -> Result<Option<PolicyVersion>, sqlx::Error> {
    let sql =
        format!("SELECT {COLS} FROM policies WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1");
    let row = sqlx::query(&sql)
        .bind(tenant)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(version_row).transpose()
}

/// The tenant's current policy and its version; `Policy::default()` and None when the tenant
/// never set one. A call costs one indexed lookup; parsing happens once per distinct text.
pub async fn current_policy(
    db: &Db,
    tenant: &str,
) -> Result<(Arc<Policy>, Option<PolicyVersion>), PolicyStoreError> {
    let Some(v) = latest(db, tenant).await? else {
        return Ok((Arc::new(Policy::default()), None));
    };
    let key = policy_hash(&v.text);
    let cached = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some(p) = cached {
        return Ok((p, Some(v)));
    }
    let policy = parse_policy(&v.text).map_err(|errs| PolicyStoreError::Corrupt {
        tenant: tenant.to_string(),
        version: v.version,
        message: errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    })?;
    let policy = Arc::new(policy);
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= CACHE_MAX {
        c.clear();
    }
    c.insert(key, policy.clone());
    drop(c);
    Ok((policy, Some(v)))
}

/// Every version of the tenant's policy, newest first.
pub async fn list_versions(db: &Db, tenant: &str) -> Result<Vec<PolicyVersion>, PolicyStoreError> {
    let sql = format!("SELECT {COLS} FROM policies WHERE tenant_id = $1 ORDER BY version DESC");
    let rows = sqlx::query(&sql).bind(tenant).fetch_all(&db.pool).await?;
    Ok(rows.iter().map(version_row).collect::<Result<_, _>>()?)
}

/// One version of the tenant's policy.
pub async fn get_version(
    db: &Db,
    tenant: &str,
    version: i64,
) -> Result<Option<PolicyVersion>, PolicyStoreError> {
    let sql = format!("SELECT {COLS} FROM policies WHERE tenant_id = $1 AND version = $2");
    let row = sqlx::query(&sql)
        .bind(tenant)
        .bind(version)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(version_row).transpose()?)
}

/// The tenant's highest policy version number, inside a transaction.
pub async fn latest_version(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query("SELECT MAX(version) FROM policies WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
    row.try_get::<Option<i64>, _>(0)
}

/// Ids of every directory user of the tenant (a policy change converges them all; callers
/// enqueue the jobs in the transaction that stores the policy).
pub async fn tenant_user_ids(
    conn: &mut AnyConnection,
    tenant: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query("SELECT id FROM users WHERE tenant_id = $1 ORDER BY seq")
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mode;
    use crate::store::testing::fresh_dbs;

    async fn set(
        db: &Db,
        tenant: &str,
        text: &str,
        by: &str,
    ) -> Result<PolicyVersion, PolicyStoreError> {
        let (t, x, b) = (tenant.to_string(), text.to_string(), by.to_string());
        db.write(move |c: &mut AnyConnection| {
            Box::pin(async move { set_policy(c, &t, &x, &b).await })
        })
        .await
    }

    #[tokio::test]
    async fn versions_kept_and_current_follows_latest() {
        for db in fresh_dbs().await {
            let t = format!("pt-{}", uuid::Uuid::new_v4());
            let (p, v) = current_policy(&db, &t).await.unwrap();
            assert_eq!(*p, Policy::default());
            assert!(v.is_none());

            let v1 = set(&db, &t, "mode = \"audit-only\"\n", "admin:alice")
                .await
                .unwrap();
            assert_eq!(v1.version, 1);
            assert_eq!(v1.hash, policy_hash("mode = \"audit-only\"\n"));
            assert_eq!(v1.set_by, "admin:alice");
            let (p, v) = current_policy(&db, &t).await.unwrap();
            assert_eq!(p.mode, Mode::AuditOnly);
            assert_eq!(v.unwrap().version, 1);

            // same text again: no new version
            assert_eq!(
                set(&db, &t, "mode = \"audit-only\"\n", "x")
                    .await
                    .unwrap()
                    .version,
                1
            );

            let v2 = set(&db, &t, "mode = \"enforce\"\n", "cli").await.unwrap();
            assert_eq!(v2.version, 2);
            let (p, v) = current_policy(&db, &t).await.unwrap();
            assert_eq!(p.mode, Mode::Enforce);
            assert_eq!(v.unwrap().hash, v2.hash);

            // an invalid policy is refused and stores nothing
            match set(&db, &t, "mode = \"sometimes\"\n", "cli").await {
                Err(PolicyStoreError::Invalid(e)) => assert_eq!(e[0].line, 1),
                other => panic!("{other:?}"),
            }
            let all = list_versions(&db, &t).await.unwrap();
            assert_eq!(
                all.iter().map(|v| v.version).collect::<Vec<_>>(),
                vec![2, 1]
            );
            assert_eq!(
                get_version(&db, &t, 1).await.unwrap().unwrap().text,
                "mode = \"audit-only\"\n"
            );
            assert!(get_version(&db, &t, 9).await.unwrap().is_none());

            // ensure_policy: only a different text makes a version
            let (v, changed) = ensure_policy(&db, &t, "mode = \"enforce\"\n", "config")
                .await
                .unwrap();
            assert!(!changed);
            assert_eq!(v.version, 2);
            let (v, changed) = ensure_policy(&db, &t, "mode = \"audit-only\"\n", "config")
                .await
                .unwrap();
            assert!(changed);
            assert_eq!(v.version, 3);
            assert!(current_policy(&db, &t).await.unwrap().0.audit_only());

            let mut conn = db.pool.acquire().await.unwrap();
            assert_eq!(latest_version(&mut conn, &t).await.unwrap(), Some(3));
            assert_eq!(latest_version(&mut conn, "nobody").await.unwrap(), None);
            drop(conn);

            // tenants are separate
            let (p, v) = current_policy(&db, "another").await.unwrap();
            assert!(v.is_none() && !p.audit_only());
        }
    }

    #[tokio::test]
    async fn same_tenant_and_version_in_two_databases_do_not_mix() {
        let (a, b) = (
            crate::store::testing::fresh_sqlite().await,
            crate::store::testing::fresh_sqlite().await,
        );
        set(&a, "same", "mode = \"audit-only\"\n", "x")
            .await
            .unwrap();
        set(&b, "same", "mode = \"enforce\"\n", "x").await.unwrap();
        assert!(current_policy(&a, "same").await.unwrap().0.audit_only());
        assert!(!current_policy(&b, "same").await.unwrap().0.audit_only());
        assert!(current_policy(&a, "same").await.unwrap().0.audit_only());
    }

    #[tokio::test]
    async fn a_version_written_behind_the_cache_is_seen() {
        for db in fresh_dbs().await {
            let t = format!("pt-{}", uuid::Uuid::new_v4());
            set(&db, &t, "mode = \"enforce\"\n", "a").await.unwrap();
            assert!(!current_policy(&db, &t).await.unwrap().0.audit_only());
            // another process writes version 2 directly
            sqlx::query("INSERT INTO policies (tenant_id, version, hash, set_by, created, text) VALUES ($1, 2, 'h', 'other', 'now', $2)")
                .bind(&t)
                .bind("mode = \"audit-only\"\n")
                .execute(&db.pool)
                .await
                .unwrap();
            assert!(current_policy(&db, &t).await.unwrap().0.audit_only());
            // a stored version that does not parse is an error, not a silent default
            sqlx::query("INSERT INTO policies (tenant_id, version, hash, set_by, created, text) VALUES ($1, 3, 'h', 'other', 'now', 'mode = 1')")
                .bind(&t)
                .execute(&db.pool)
                .await
                .unwrap();
            assert!(matches!(
                current_policy(&db, &t).await,
                Err(PolicyStoreError::Corrupt { version: 3, .. })
            ));
        }
    }
}
