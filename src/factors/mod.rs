//! The factor store port: the `FactorStore` trait every adapter implements (built-in store now,
//! privacyIDEA / Okta / Duo / Keycloak / Graph later), the factor and session types it speaks, how
//! a directory user maps to a factor-store user (`link_key`), and which store serves a tenant
//! (`store_for_tenant`, with a test override registry and `FlakyStore` for failure injection).
//!
//! Not here: deciding what a user's factors should be (`policy/`), planning and executing the
//! difference (`engine/`), SQL (`factors/store.rs`), HTTP.

pub mod builtin;
pub mod crypto;
pub mod store;
pub mod totp;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use builtin::{
    create_session, enroll, list, list_requirements, list_sessions, revoke_by_id, BuiltinStore,
    EnrollError, EnrollMaterial, Enrolled, EnrollmentRequirement,
};
pub use builtin::{enroll_audited, revoke_by_id_audited, AuditedBy};
pub use crypto::{load_or_create, verify_master_key, MasterKey};

/// Factor types of DESIGN.md; serialized in snake_case (`recovery_codes`, `hardware_otp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactorType {
    Totp,
    Hotp,
    Webauthn,
    Sms,
    Voice,
    Email,
    Push,
    RecoveryCodes,
    HardwareOtp,
    Certificate,
}

impl FactorType {
    pub const ALL: [FactorType; 10] = [
        FactorType::Totp,
        FactorType::Hotp,
        FactorType::Webauthn,
        FactorType::Sms,
        FactorType::Voice,
        FactorType::Email,
        FactorType::Push,
        FactorType::RecoveryCodes,
        FactorType::HardwareOtp,
        FactorType::Certificate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FactorType::Totp => "totp",
            FactorType::Hotp => "hotp",
            FactorType::Webauthn => "webauthn",
            FactorType::Sms => "sms",
            FactorType::Voice => "voice",
            FactorType::Email => "email",
            FactorType::Push => "push",
            FactorType::RecoveryCodes => "recovery_codes",
            FactorType::HardwareOtp => "hardware_otp",
            FactorType::Certificate => "certificate",
        }
    }

    /// Bound to the origin or to a private key the user cannot be tricked into relaying.
    pub fn is_phishing_resistant(self) -> bool {
        matches!(self, FactorType::Webauthn | FactorType::Certificate)
    }
}

impl fmt::Display for FactorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FactorType {
    type Err = String;
    /// Accepts the DESIGN.md names in any letter case, `-` for `_`.
    fn from_str(s: &str) -> Result<Self, String> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        FactorType::ALL
            .into_iter()
            .find(|t| t.as_str() == norm)
            .ok_or_else(|| {
                let names: Vec<&str> = FactorType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown factor type {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactorStatus {
    Active,
    Suspended,
    Revoked,
}

impl FactorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FactorStatus::Active => "active",
            FactorStatus::Suspended => "suspended",
            FactorStatus::Revoked => "revoked",
        }
    }
}

impl fmt::Display for FactorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FactorStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(FactorStatus::Active),
            "suspended" => Ok(FactorStatus::Suspended),
            "revoked" => Ok(FactorStatus::Revoked),
            other => Err(format!("unknown factor status {other:?}")),
        }
    }
}

/// One factor as every adapter reports it. JSON: `id`, `type`, `label`, `status`, `created`,
/// `lastUsed` (times are UTC RFC 3339 text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Factor {
    pub id: String,
    #[serde(rename = "type")]
    pub factor_type: FactorType,
    pub label: Option<String>,
    pub status: FactorStatus,
    pub created: String,
    pub last_used: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub created: String,
    pub last_seen: Option<String>,
    pub revoked: bool,
}

/// A factor-store failure. `retryable` says whether trying again later can help (a store that is
/// down, a timeout) or not (unknown factor, resuming a revoked factor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FactorError {
    pub retryable: bool,
    pub message: String,
}

impl FactorError {
    pub fn retryable(message: impl Into<String>) -> Self {
        FactorError {
            retryable: true,
            message: message.into(),
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        FactorError {
            retryable: false,
            message: message.into(),
        }
    }
}

type FResult<T> = Result<T, FactorError>;

/// A change to one user in a factor store, as [`FactorStore::apply_in_tx`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactorChange {
    Suspend {
        factor_id: String,
    },
    Resume {
        factor_id: String,
    },
    Revoke {
        factor_id: String,
    },
    RevokeSessions,
    RequireEnrollment {
        types: Vec<FactorType>,
        deadline: String,
    },
}

/// The port. `user_key` is the link value chosen by the policy's `[link] by` (see `link_key`).
/// Every mutation is idempotent: suspending a suspended factor, revoking a revoked one, revoking
/// sessions of a user who has none all succeed. Suspending a revoked factor succeeds too (it is
/// already unusable); resuming a revoked factor is a non-retryable error.
pub trait FactorStore: Send + Sync {
    fn name(&self) -> &str;
    fn list_factors<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
    ) -> BoxFuture<'a, FResult<Vec<Factor>>>;
    fn list_sessions<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
    ) -> BoxFuture<'a, FResult<Vec<Session>>>;
    /// User keys holding any factor that is not revoked or any session that is not revoked, in
    /// ascending key order, strictly after `after`, at most `limit` (reconciliation pages with it).
    fn list_users<'a>(
        &'a self,
        tenant: &'a str,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'a, FResult<Vec<String>>>;
    fn suspend<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        factor_id: &'a str,
    ) -> BoxFuture<'a, FResult<()>>;
    fn resume<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        factor_id: &'a str,
    ) -> BoxFuture<'a, FResult<()>>;
    fn revoke<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        factor_id: &'a str,
    ) -> BoxFuture<'a, FResult<()>>;
    /// Ends every live session of the user; returns how many were ended by this call.
    fn revoke_sessions<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
    ) -> BoxFuture<'a, FResult<u64>>;
    /// Records that the user must enroll one of `types` by `deadline` (UTC RFC 3339). Repeating
    /// the same call is a no-op; a new deadline replaces the old one.
    fn require_enrollment<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        types: &'a [FactorType],
        deadline: &'a str,
    ) -> BoxFuture<'a, FResult<()>>;
    /// Checks a one-time code (TOTP, HOTP, recovery code) against the user's active factors;
    /// an accepted code cannot be used again.
    fn verify_code<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, FResult<bool>>;

    /// Applies `change` through the store's own calls (its own transaction or API request).
    /// The JSON says what it did, as [`FactorStore::apply_in_tx`]'s does.
    fn apply<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        change: &'a FactorChange,
    ) -> BoxFuture<'a, FResult<Value>> {
        Box::pin(async move {
            let empty = || serde_json::json!({});
            match change {
                FactorChange::Suspend { factor_id } => self
                    .suspend(tenant, user_key, factor_id)
                    .await
                    .map(|_| empty()),
                FactorChange::Resume { factor_id } => self
                    .resume(tenant, user_key, factor_id)
                    .await
                    .map(|_| empty()),
                FactorChange::Revoke { factor_id } => self
                    .revoke(tenant, user_key, factor_id)
                    .await
                    .map(|_| empty()),
                FactorChange::RevokeSessions => self
                    .revoke_sessions(tenant, user_key)
                    .await
                    .map(|n| serde_json::json!({ "sessions_ended": n })),
                FactorChange::RequireEnrollment { types, deadline } => self
                    .require_enrollment(tenant, user_key, types, deadline)
                    .await
                    .map(|_| empty()),
            }
        })
    }

    /// True for a store whose data lives in deprovd's own database (the built-in store): the
    /// engine then runs its changes with [`FactorStore::apply_in_tx`] inside the transaction
    /// that records the decision and the outcomes, so one commit carries all of a converge and
    /// a crash can never separate a change from its audit entry. Remote stores keep the default.
    fn in_database(&self) -> bool {
        false
    }

    /// Applies `change` on `conn`, inside the caller's transaction (only called when
    /// [`FactorStore::in_database`]). The JSON says what it did (as `sessions_ended`). A
    /// retryable error means the transaction should be abandoned and the work retried.
    fn apply_in_tx<'a>(
        &'a self,
        _conn: &'a mut sqlx::AnyConnection,
        _tenant: &'a str,
        _user_key: &'a str,
        _change: &'a FactorChange,
    ) -> BoxFuture<'a, FResult<Value>> {
        Box::pin(async move {
            Err(FactorError::permanent(format!(
                "the {} factor store cannot run inside deprovd's transactions",
                self.name()
            )))
        })
    }
}

/// `[link] by`: which attribute of the directory user is the factor store's user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum LinkBy {
    #[default]
    #[serde(rename = "userName")]
    UserName,
    #[serde(rename = "externalId")]
    ExternalId,
    #[serde(rename = "emails.value")]
    EmailsValue,
    #[serde(rename = "employeeNumber")]
    EmployeeNumber,
}

impl LinkBy {
    pub const ALL: [LinkBy; 4] = [
        LinkBy::UserName,
        LinkBy::ExternalId,
        LinkBy::EmailsValue,
        LinkBy::EmployeeNumber,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkBy::UserName => "userName",
            LinkBy::ExternalId => "externalId",
            LinkBy::EmailsValue => "emails.value",
            LinkBy::EmployeeNumber => "employeeNumber",
        }
    }
}

impl FromStr for LinkBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        LinkBy::ALL.into_iter().find(|l| l.as_str().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            format!(
                "unknown link attribute {s:?} (expected userName, externalId, emails.value or employeeNumber)"
            )
        })
    }
}

const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// The factor-store key of a SCIM user under `by`, or None when the user has no such value.
/// `emails.value` takes the primary email, else the first; `userName` and emails are
/// lower-cased (caseExact = false in SCIM, so `Alice@x` and `alice@x` are one person);
/// externalId and employeeNumber are kept as written (case-exact identifiers).
pub fn link_key(resource: &Value, by: LinkBy) -> Option<String> {
    let non_empty = |v: Option<&Value>| -> Option<String> {
        let s = v?.as_str()?.trim();
        (!s.is_empty()).then(|| s.to_string())
    };
    match by {
        LinkBy::UserName => non_empty(resource.get("userName")).map(|s| s.to_lowercase()),
        LinkBy::ExternalId => non_empty(resource.get("externalId")),
        LinkBy::EmailsValue => {
            let emails = resource.get("emails")?.as_array()?;
            let primary = emails
                .iter()
                .find(|e| e.get("primary").and_then(Value::as_bool) == Some(true))
                .and_then(|e| non_empty(e.get("value")));
            primary
                .or_else(|| emails.iter().find_map(|e| non_empty(e.get("value"))))
                .map(|s| s.to_lowercase())
        }
        LinkBy::EmployeeNumber => {
            // The enterprise extension is where it belongs; tolerate a top-level copy too.
            let ext = resource.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(ENTERPRISE_USER))
                    .map(|(_, v)| v)
            });
            ext.and_then(|e| non_empty(e.get("employeeNumber")))
                .or_else(|| non_empty(resource.get("employeeNumber")))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Which store serves a tenant.

fn overrides() -> &'static RwLock<HashMap<String, Arc<dyn FactorStore>>> {
    static O: OnceLock<RwLock<HashMap<String, Arc<dyn FactorStore>>>> = OnceLock::new();
    O.get_or_init(|| RwLock::new(HashMap::new()))
}

/// Makes `store_for_tenant(.., tenant)` return `store` (tests inject failures with it).
pub fn set_store_override(tenant: &str, store: Arc<dyn FactorStore>) {
    let mut map = overrides().write().unwrap_or_else(|p| p.into_inner());
    map.insert(tenant.to_string(), store);
}

pub fn clear_store_override(tenant: &str) {
    let mut map = overrides().write().unwrap_or_else(|p| p.into_inner());
    map.remove(tenant);
}

/// The factor store of a tenant: an installed override, else the built-in store. (Other
/// adapters will be chosen here from the tenant's configuration.)
pub fn store_for_tenant(
    db: &crate::store::Db,
    key: Arc<MasterKey>,
    tenant: &str,
) -> Arc<dyn FactorStore> {
    let over = overrides()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(tenant)
        .cloned();
    match over {
        Some(s) => s,
        None => Arc::new(BuiltinStore::new(db.clone(), key)),
    }
}

// ---------------------------------------------------------------------------------------------
// Failure injection.

/// Wraps a store and fails its calls on demand, with retryable errors: `fail_next(n)` fails the
/// next n calls and then recovers; `fail_forever(true)` fails every call until switched off.
/// Public (not test-only) so integration tests and the engine can inject outages.
pub struct FlakyStore {
    pub inner: Arc<dyn FactorStore>,
    pub fail_next: AtomicU32,
    pub fail_forever: AtomicBool,
    /// How many calls were failed so far.
    pub failures: AtomicU32,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn FactorStore>) -> Self {
        FlakyStore {
            inner,
            fail_next: AtomicU32::new(0),
            fail_forever: AtomicBool::new(false),
            failures: AtomicU32::new(0),
        }
    }
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
    pub fn fail_forever(&self, on: bool) {
        self.fail_forever.store(on, Ordering::SeqCst);
    }

    fn check(&self, op: &str) -> FResult<()> {
        let fail = self.fail_forever.load(Ordering::SeqCst)
            || self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail {
            self.failures.fetch_add(1, Ordering::SeqCst);
            Err(FactorError::retryable(format!(
                "injected failure in {op} (FlakyStore)"
            )))
        } else {
            Ok(())
        }
    }
}

impl FactorStore for FlakyStore {
    fn name(&self) -> &str {
        "flaky"
    }
    fn list_factors<'a>(&'a self, t: &'a str, u: &'a str) -> BoxFuture<'a, FResult<Vec<Factor>>> {
        Box::pin(async move {
            self.check("list_factors")?;
            self.inner.list_factors(t, u).await
        })
    }
    fn list_sessions<'a>(&'a self, t: &'a str, u: &'a str) -> BoxFuture<'a, FResult<Vec<Session>>> {
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
    ) -> BoxFuture<'a, FResult<Vec<String>>> {
        Box::pin(async move {
            self.check("list_users")?;
            self.inner.list_users(t, after, limit).await
        })
    }
    fn suspend<'a>(&'a self, t: &'a str, u: &'a str, f: &'a str) -> BoxFuture<'a, FResult<()>> {
        Box::pin(async move {
            self.check("suspend")?;
            self.inner.suspend(t, u, f).await
        })
    }
    fn resume<'a>(&'a self, t: &'a str, u: &'a str, f: &'a str) -> BoxFuture<'a, FResult<()>> {
        Box::pin(async move {
            self.check("resume")?;
            self.inner.resume(t, u, f).await
        })
    }
    fn revoke<'a>(&'a self, t: &'a str, u: &'a str, f: &'a str) -> BoxFuture<'a, FResult<()>> {
        Box::pin(async move {
            self.check("revoke")?;
            self.inner.revoke(t, u, f).await
        })
    }
    fn revoke_sessions<'a>(&'a self, t: &'a str, u: &'a str) -> BoxFuture<'a, FResult<u64>> {
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
    ) -> BoxFuture<'a, FResult<()>> {
        Box::pin(async move {
            self.check("require_enrollment")?;
            self.inner.require_enrollment(t, u, types, deadline).await
        })
    }
    fn verify_code<'a>(
        &'a self,
        t: &'a str,
        u: &'a str,
        c: &'a str,
    ) -> BoxFuture<'a, FResult<bool>> {
        Box::pin(async move {
            self.check("verify_code")?;
            self.inner.verify_code(t, u, c).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn factor_type_names_round_trip() {
        for t in FactorType::ALL {
            assert_eq!(t.as_str().parse::<FactorType>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
            let back: FactorType = serde_json::from_value(json!(t.as_str())).unwrap();
            assert_eq!(back, t);
        }
        assert_eq!(
            "Recovery-Codes".parse::<FactorType>().unwrap(),
            FactorType::RecoveryCodes
        );
        assert!("yubikey"
            .parse::<FactorType>()
            .unwrap_err()
            .contains("webauthn"));
    }

    #[test]
    fn phishing_resistant_types() {
        let pr: Vec<FactorType> = FactorType::ALL
            .into_iter()
            .filter(|t| t.is_phishing_resistant())
            .collect();
        assert_eq!(pr, vec![FactorType::Webauthn, FactorType::Certificate]);
    }

    #[test]
    fn factor_json_shape() {
        let f = Factor {
            id: "f1".into(),
            factor_type: FactorType::RecoveryCodes,
            label: None,
            status: FactorStatus::Suspended,
            created: "2024-01-01T00:00:00.000000Z".into(),
            last_used: None,
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["type"], "recovery_codes");
        assert_eq!(v["status"], "suspended");
        assert!(v.get("lastUsed").is_some());
        assert!(v.get("factor_type").is_none());
        let s = Session {
            id: "s".into(),
            created: "c".into(),
            last_seen: None,
            revoked: true,
        };
        assert!(serde_json::to_value(&s).unwrap().get("lastSeen").is_some());
    }

    #[test]
    fn link_keys() {
        let u = json!({
            "userName": "Alice@Example.com",
            "externalId": "00uAbC",
            "emails": [{"value": "a@x.com"}, {"value": "Alice@Y.com", "primary": true}],
            ENTERPRISE_USER: {"employeeNumber": "E-7"}
        });
        assert_eq!(link_key(&u, LinkBy::UserName).unwrap(), "alice@example.com");
        assert_eq!(link_key(&u, LinkBy::ExternalId).unwrap(), "00uAbC");
        assert_eq!(link_key(&u, LinkBy::EmailsValue).unwrap(), "alice@y.com");
        assert_eq!(link_key(&u, LinkBy::EmployeeNumber).unwrap(), "E-7");
        let bare =
            json!({"userName": "  ", "emails": [{"value": "b@x.com"}], "employeeNumber": "9"});
        assert_eq!(link_key(&bare, LinkBy::UserName), None);
        assert_eq!(link_key(&bare, LinkBy::ExternalId), None);
        assert_eq!(link_key(&bare, LinkBy::EmailsValue).unwrap(), "b@x.com");
        assert_eq!(link_key(&bare, LinkBy::EmployeeNumber).unwrap(), "9");
        assert_eq!(link_key(&json!([1, 2]), LinkBy::EmailsValue), None);
    }

    #[test]
    fn link_by_parse() {
        for l in LinkBy::ALL {
            assert_eq!(l.as_str().parse::<LinkBy>().unwrap(), l);
        }
        assert!("mail".parse::<LinkBy>().is_err());
    }
}
