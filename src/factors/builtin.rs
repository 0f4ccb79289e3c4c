//! The built-in factor store (the embedded default): factors with their secrets encrypted under
//! the master key, TOTP/HOTP and recovery-code verification, WebAuthn/certificate/phone records,
//! sessions and enrollment requirements, all in deprovd's own database. Implements
//! `FactorStore` for the engine and offers the administration calls (`enroll`, `list`,
//! `revoke_by_id`, sessions) used by the CLI and the admin API.
//!
//! Not here: SQL text (`store.rs`), the cipher (`crypto.rs`), OTP arithmetic (`totp.rs`). It
//! does not perform WebAuthn ceremonies; it keeps the credential a ceremony produced.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use rand::RngCore;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use super::crypto::{row_aad, MasterKey};
use super::store as fs;
use super::totp;
use super::{Factor, FactorChange, FactorError, FactorStatus, FactorStore, FactorType, Session};
use crate::store::{now_ts, Db, StoreError};

/// Recovery codes handed out per set.
pub const RECOVERY_CODES: usize = 10;
/// HOTP counters checked ahead of the stored one (a token pressed without logging in).
const HOTP_LOOK_AHEAD: u64 = 10;
/// Generated OTP secrets: 160 bits, the RFC 4226 recommendation for HMAC-SHA1.
const OTP_SECRET_BYTES: usize = 20;

/// What a factor is enrolled with, besides its type and label.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EnrollMaterial {
    /// Nothing: TOTP/HOTP secrets and recovery codes are generated; other types are records.
    #[default]
    None,
    /// The credential a WebAuthn registration (or a certificate issuance) produced.
    Webauthn {
        credential_id: String,
        public_key: String,
    },
    /// An existing OTP seed (hardware token, migrated authenticator), raw bytes.
    Secret { secret: Vec<u8> },
    /// Where an sms/voice/email/push factor delivers: a phone number, address or device id.
    Destination { value: String },
}

/// The answer to an enrollment: the factor, and what is shown exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrolled {
    pub factor: Factor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otpauth_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The request cannot be honoured as given (400 at the API).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for EnrollError {
    fn from(e: sqlx::Error) -> Self {
        EnrollError::Store(StoreError::Database(e))
    }
}

/// An open enrollment requirement (or a satisfied one) of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentRequirement {
    pub types: Vec<FactorType>,
    pub deadline: String,
    pub created: String,
    pub satisfied: bool,
}

fn recovery_hash(tenant: &str, factor_id: &str, code: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"deprovd recovery code v1\0");
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(factor_id.as_bytes());
    h.update([0]);
    h.update(normalize_code(code).as_bytes());
    hex::encode(h.finalize())
}

/// Codes are compared without spaces or dashes and in lower case.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// `xxxxx-xxxxx` from the base32 alphabet: 50 random bits each.
fn new_recovery_code() -> String {
    let mut b = [0u8; 7];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let s = totp::base32_encode(&b).to_ascii_lowercase();
    let s: String = s.chars().take(10).collect();
    format!("{}-{}", &s[..5], &s[5..])
}

fn check_text(what: &str, v: &str, max: usize) -> Result<String, EnrollError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(EnrollError::Invalid(format!("{what} is empty")));
    }
    if v.len() > max || v.chars().any(|c| c.is_control()) {
        return Err(EnrollError::Invalid(format!(
            "{what} is too long or holds control characters"
        )));
    }
    Ok(v.to_string())
}

/// Enrolls a factor for `user_key`. TOTP/HOTP get a generated secret (or the given one) and
/// their `otpauth://` URI, returned now and never again; recovery codes get a new set of 10
/// (replacing any live set), returned now and stored only as hashes; WebAuthn and certificates
/// need the credential; other types are records. Fulfils the user's open requirements for the type.
pub async fn enroll(
    db: &Db,
    key: &MasterKey,
    tenant: &str,
    user_key: &str,
    factor_type: FactorType,
    label: Option<String>,
    material: EnrollMaterial,
) -> Result<Enrolled, EnrollError> {
    enroll_with(
        db,
        key,
        tenant,
        user_key,
        factor_type,
        label,
        material,
        None,
    )
    .await
}

/// Who enrolled or revoked a factor, for the audit entry written in the same transaction as
/// the change (admin API and CLI): `subject` is the SCIM user id when known.
pub struct AuditedBy {
    pub actor: crate::audit::AuditActor,
    pub subject: Option<String>,
}

/// [`enroll`] with its `factor.enrolled` audit entry committed in the same transaction, so the
/// evidence can never miss a factor that exists.
#[allow(clippy::too_many_arguments)]
pub async fn enroll_audited(
    db: &Db,
    key: &MasterKey,
    tenant: &str,
    user_key: &str,
    factor_type: FactorType,
    label: Option<String>,
    material: EnrollMaterial,
    by: AuditedBy,
) -> Result<Enrolled, EnrollError> {
    enroll_with(
        db,
        key,
        tenant,
        user_key,
        factor_type,
        label,
        material,
        Some(by),
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn enroll_with(
    db: &Db,
    key: &MasterKey,
    tenant: &str,
    user_key: &str,
    factor_type: FactorType,
    label: Option<String>,
    material: EnrollMaterial,
    by: Option<AuditedBy>,
) -> Result<Enrolled, EnrollError> {
    let user_key = check_text("user", user_key, 512)?;
    let label = label.map(|l| check_text("label", &l, 200)).transpose()?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_ts();
    let mut row = fs::FactorRow {
        tenant_id: tenant.to_string(),
        user_key: user_key.clone(),
        factor: Factor {
            id: id.clone(),
            factor_type,
            label,
            status: FactorStatus::Active,
            created: now.clone(),
            last_used: None,
        },
        secret_enc: None,
        otp_counter: None,
        credential_id: None,
        public_key: None,
        status_changed: now,
    };
    let mut otpauth_uri = None;
    let mut codes: Option<Vec<String>> = None;
    let aad = row_aad(tenant, &id);

    let otp_secret = |material: &EnrollMaterial| -> Result<Vec<u8>, EnrollError> {
        match material {
            EnrollMaterial::Secret { secret } if secret.len() >= 10 && secret.len() <= 64 => {
                Ok(secret.clone())
            }
            EnrollMaterial::Secret { .. } => Err(EnrollError::Invalid(
                "an OTP secret must be 10 to 64 bytes".into(),
            )),
            EnrollMaterial::None => {
                let mut s = vec![0u8; OTP_SECRET_BYTES];
                rand::rngs::OsRng.fill_bytes(&mut s);
                Ok(s)
            }
            _ => Err(EnrollError::Invalid(format!(
                "a {factor_type} factor takes no credential or destination"
            ))),
        }
    };

    match factor_type {
        FactorType::Totp => {
            let secret = otp_secret(&material)?;
            row.secret_enc = Some(key.encrypt(&secret, &aad));
            otpauth_uri = Some(totp::otpauth_uri(
                &user_key,
                &secret,
                totp::TotpParams::default(),
            ));
        }
        FactorType::Hotp => {
            let secret = otp_secret(&material)?;
            row.secret_enc = Some(key.encrypt(&secret, &aad));
            row.otp_counter = Some(0);
            otpauth_uri = Some(totp::otpauth_hotp_uri(&user_key, &secret, 0));
        }
        FactorType::HardwareOtp => match &material {
            // A seeded token is a TOTP token; its seed is not shown back.
            EnrollMaterial::Secret { .. } => {
                let secret = otp_secret(&material)?;
                row.secret_enc = Some(key.encrypt(&secret, &aad));
            }
            EnrollMaterial::None => {}
            EnrollMaterial::Destination { value }
            | EnrollMaterial::Webauthn {
                credential_id: value,
                ..
            } => {
                row.credential_id = Some(check_text("serial", value, 512)?);
            }
        },
        FactorType::RecoveryCodes => {
            if material != EnrollMaterial::None {
                return Err(EnrollError::Invalid(
                    "recovery codes are generated, not given".into(),
                ));
            }
            codes = Some((0..RECOVERY_CODES).map(|_| new_recovery_code()).collect());
        }
        FactorType::Webauthn | FactorType::Certificate => match &material {
            EnrollMaterial::Webauthn {
                credential_id,
                public_key,
            } => {
                row.credential_id = Some(check_text("credential id", credential_id, 1024)?);
                row.public_key = Some(check_text("public key", public_key, 16_384)?);
            }
            _ => {
                return Err(EnrollError::Invalid(format!(
                    "a {factor_type} factor needs its credential id and public key"
                )))
            }
        },
        FactorType::Sms | FactorType::Voice | FactorType::Email | FactorType::Push => {
            match &material {
                EnrollMaterial::None => {}
                EnrollMaterial::Destination { value } => {
                    row.credential_id = Some(check_text("destination", value, 512)?);
                }
                _ => {
                    return Err(EnrollError::Invalid(format!(
                        "a {factor_type} factor takes a destination only"
                    )))
                }
            }
        }
    }

    if let (Some(cred), FactorType::Webauthn | FactorType::Certificate) =
        (&row.credential_id, factor_type)
    {
        if fs::credential_in_use(&db.pool, tenant, factor_type, cred).await? {
            return Err(EnrollError::Invalid(format!(
                "this {factor_type} credential is already enrolled"
            )));
        }
    }

    let hashes: Vec<String> = codes
        .iter()
        .flatten()
        .map(|c| recovery_hash(tenant, &id, c))
        .collect();
    let to_store = row.clone();
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            let t = &to_store.tenant_id;
            let u = &to_store.user_key;
            if to_store.factor.factor_type == FactorType::RecoveryCodes {
                // One live set per user: a new set replaces the old.
                for old in fs::live_factor_ids(conn, t, u, FactorType::RecoveryCodes).await? {
                    fs::revoke(conn, t, u, &old).await?;
                }
            }
            fs::insert_factor(conn, &to_store).await?;
            fs::insert_recovery_codes(conn, t, &to_store.factor.id, &hashes).await?;
            fs::satisfy_requirements(conn, t, u, to_store.factor.factor_type).await?;
            if let Some(by) = by {
                let detail = serde_json::json!({
                    "factor_id": to_store.factor.id, "type": to_store.factor.factor_type,
                    "user_key": u, "store": "builtin",
                });
                let entry = crate::audit::AuditEntry::new(
                    "factor.enrolled",
                    by.actor,
                    by.subject.as_deref(),
                    detail,
                );
                crate::audit::append(conn, t, entry).await?;
            }
            Ok::<(), StoreError>(())
        })
    })
    .await?;
    Ok(Enrolled {
        factor: row.factor,
        otpauth_uri,
        recovery_codes: codes,
    })
}

/// A user's factors, every status, oldest first.
pub async fn list(db: &Db, tenant: &str, user_key: &str) -> Result<Vec<Factor>, StoreError> {
    Ok(fs::user_factors(&db.pool, tenant, user_key)
        .await?
        .into_iter()
        .map(|r| r.factor)
        .collect())
}

/// Revokes a factor by id (admin path); None when the tenant has no such factor. Idempotent.
pub async fn revoke_by_id(
    db: &Db,
    tenant: &str,
    factor_id: &str,
) -> Result<Option<Factor>, StoreError> {
    let Some(row) = fs::get_factor(&db.pool, tenant, factor_id).await? else {
        return Ok(None);
    };
    let (t, u, id) = (
        tenant.to_string(),
        row.user_key.clone(),
        factor_id.to_string(),
    );
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            fs::revoke(conn, &t, &u, &id).await?;
            Ok::<(), StoreError>(())
        })
    })
    .await?;
    Ok(fs::get_factor(&db.pool, tenant, factor_id)
        .await?
        .map(|r| r.factor))
}

/// An admin's revocation by id, in one transaction with its evidence: when the factor was not
/// already revoked, the `factor.revoked` audit entry and the `factor_revoked` webhook event
/// commit with it. Returns the factor and whether it changed; None when the tenant has no such
/// factor.
pub async fn revoke_by_id_audited(
    db: &Db,
    tenant: &str,
    factor_id: &str,
    by: AuditedBy,
) -> Result<Option<(Factor, bool)>, StoreError> {
    let (t, id) = (tenant.to_string(), factor_id.to_string());
    let changed = db
        .write(move |conn: &mut AnyConnection| {
            Box::pin(async move {
                let Some(before) = fs::get_factor(&mut *conn, &t, &id).await? else {
                    return Ok::<_, StoreError>(None);
                };
                if before.factor.status == FactorStatus::Revoked {
                    return Ok(Some(false));
                }
                fs::revoke(conn, &t, &before.user_key, &id).await?;
                let f = &before.factor;
                let detail = serde_json::json!({
                    "factor_id": f.id, "type": f.factor_type, "store": "builtin",
                    "reason": "admin", "user_key": before.user_key,
                });
                let entry = crate::audit::AuditEntry::new(
                    "factor.revoked",
                    by.actor,
                    by.subject.as_deref(),
                    detail,
                );
                crate::audit::append(conn, &t, entry).await?;
                crate::notify::enqueue_event(
                    conn,
                    &t,
                    crate::notify::events::FACTOR_REVOKED,
                    by.subject.as_deref(),
                    serde_json::json!({
                        "factorId": f.id, "factorType": f.factor_type,
                        "userKey": before.user_key, "reason": "admin",
                    }),
                )
                .await?;
                Ok(Some(true))
            })
        })
        .await?;
    let Some(changed) = changed else {
        return Ok(None);
    };
    let factor = fs::get_factor(&db.pool, tenant, factor_id)
        .await?
        .map(|r| r.factor);
    Ok(factor.map(|f| (f, changed)))
}

/// Opens a session for a user (self-service login later; tests now).
pub async fn create_session(db: &Db, tenant: &str, user_key: &str) -> Result<Session, StoreError> {
    let s = Session {
        id: uuid::Uuid::new_v4().to_string(),
        created: now_ts(),
        last_seen: None,
        revoked: false,
    };
    let (t, u, row) = (tenant.to_string(), user_key.to_string(), s.clone());
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            fs::insert_session(conn, &t, &u, &row).await?;
            Ok::<(), StoreError>(())
        })
    })
    .await?;
    Ok(s)
}

/// A user's sessions, revoked ones included, oldest first.
pub async fn list_sessions(
    db: &Db,
    tenant: &str,
    user_key: &str,
) -> Result<Vec<Session>, StoreError> {
    Ok(fs::user_sessions(&db.pool, tenant, user_key).await?)
}

/// A user's enrollment requirements.
pub async fn list_requirements(
    db: &Db,
    tenant: &str,
    user_key: &str,
) -> Result<Vec<EnrollmentRequirement>, StoreError> {
    Ok(fs::user_requirements(&db.pool, tenant, user_key)
        .await?
        .into_iter()
        .map(
            |(types, deadline, created, satisfied)| EnrollmentRequirement {
                types,
                deadline,
                created,
                satisfied,
            },
        )
        .collect())
}

/// The built-in store as a `FactorStore`.
#[derive(Clone)]
pub struct BuiltinStore {
    db: Db,
    key: Arc<MasterKey>,
}

/// Database trouble is worth retrying (busy, connection lost, shutting down).
fn db_err(e: impl std::fmt::Display) -> FactorError {
    FactorError::retryable(format!("built-in factor store: {e}"))
}

type FResult<T> = Result<T, FactorError>;

impl BuiltinStore {
    pub fn new(db: Db, key: Arc<MasterKey>) -> Self {
        BuiltinStore { db, key }
    }

    /// Applies one change in a transaction of its own (the port's single-change calls).
    async fn apply_own_tx(
        &self,
        tenant: &str,
        user_key: &str,
        change: FactorChange,
    ) -> FResult<Value> {
        let (t, u) = (tenant.to_string(), user_key.to_string());
        self.db
            .write(move |conn: &mut AnyConnection| {
                Box::pin(
                    async move { Ok::<_, StoreError>(apply_change(conn, &t, &u, &change).await?) },
                )
            })
            .await
            .map_err(db_err)?
    }

    async fn verify(&self, tenant: &str, user_key: &str, code: &str) -> FResult<bool> {
        let code = normalize_code(code);
        if code.is_empty() || code.len() > 64 {
            return Ok(false);
        }
        let rows = fs::user_factors(&self.db.pool, tenant, user_key)
            .await
            .map_err(db_err)?;
        let now = chrono::Utc::now().timestamp();
        let is_otp = (6..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit());
        for row in rows
            .iter()
            .filter(|r| r.factor.status == FactorStatus::Active)
        {
            let id = &row.factor.id;
            let advance_to = match (row.factor.factor_type, &row.secret_enc) {
                (FactorType::Totp | FactorType::HardwareOtp | FactorType::Hotp, Some(ct))
                    if is_otp =>
                {
                    let secret = self.key.decrypt(ct, &row_aad(tenant, id)).map_err(|e| {
                        FactorError::permanent(format!("factor {id}: secret does not decrypt: {e}"))
                    })?;
                    if row.factor.factor_type == FactorType::Hotp {
                        let next = row.otp_counter.unwrap_or(0).max(0) as u64;
                        totp::verify_hotp(
                            &secret,
                            &code,
                            next,
                            HOTP_LOOK_AHEAD,
                            6,
                            totp::Algorithm::Sha1,
                        )
                        .map(|n| n as i64)
                    } else {
                        totp::verify_totp(
                            &secret,
                            &code,
                            now,
                            totp::TotpParams::default(),
                            row.otp_counter,
                        )
                    }
                }
                (FactorType::RecoveryCodes, _) => {
                    let hash = recovery_hash(tenant, id, &code);
                    let (t, u, f) = (tenant.to_string(), user_key.to_string(), id.clone());
                    let used = self
                        .db
                        .write(move |conn: &mut AnyConnection| {
                            Box::pin(async move {
                                Ok::<bool, StoreError>(
                                    fs::use_recovery_code(conn, &t, &u, &f, &hash).await?,
                                )
                            })
                        })
                        .await
                        .map_err(db_err)?;
                    if used {
                        return Ok(true);
                    }
                    None
                }
                _ => None,
            };
            if let Some(value) = advance_to {
                let (t, u, f) = (tenant.to_string(), user_key.to_string(), id.clone());
                let fresh = self
                    .db
                    .write(move |conn: &mut AnyConnection| {
                        Box::pin(async move {
                            Ok::<bool, StoreError>(
                                fs::advance_otp_counter(conn, &t, &u, &f, value).await?,
                            )
                        })
                    })
                    .await
                    .map_err(db_err)?;
                // false: the same code (or a later one) was accepted meanwhile: a replay.
                if fresh {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Suspend,
    Resume,
    Revoke,
}

/// One status change on `conn`; when it changes nothing, explains from the current row (already
/// there is a success, resuming a revoked factor or an unknown factor is not). The outer error
/// is the database's; the inner one the store's answer.
async fn change_in_tx(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    factor_id: &str,
    op: Op,
) -> Result<FResult<()>, sqlx::Error> {
    let changed = match op {
        Op::Suspend => {
            fs::transition(
                conn,
                tenant,
                user_key,
                factor_id,
                FactorStatus::Active,
                FactorStatus::Suspended,
            )
            .await?
        }
        Op::Resume => {
            fs::transition(
                conn,
                tenant,
                user_key,
                factor_id,
                FactorStatus::Suspended,
                FactorStatus::Active,
            )
            .await?
        }
        Op::Revoke => fs::revoke(conn, tenant, user_key, factor_id).await?,
    };
    if changed {
        return Ok(Ok(()));
    }
    let status = match fs::get_factor(&mut *conn, tenant, factor_id).await? {
        Some(r) if r.user_key == user_key => r.factor.status,
        _ => {
            return Ok(Err(FactorError::permanent(format!(
                "no factor {factor_id} for user {user_key:?} in the built-in store"
            ))))
        }
    };
    Ok(match (op, status) {
        (Op::Resume, FactorStatus::Revoked) => Err(FactorError::permanent(format!(
            "factor {factor_id} is revoked and cannot be resumed; the user must enroll again"
        ))),
        // Already where it should be (or stronger: a revoked factor is also unusable).
        _ => Ok(()),
    })
}

/// One change on `conn`, in the caller's transaction. The outer error is the database's; the
/// inner one the store's answer (the JSON says what it did, as `sessions_ended`).
async fn apply_change(
    conn: &mut AnyConnection,
    tenant: &str,
    user_key: &str,
    change: &FactorChange,
) -> Result<FResult<Value>, sqlx::Error> {
    let (factor_id, op) = match change {
        FactorChange::Suspend { factor_id } => (factor_id, Op::Suspend),
        FactorChange::Resume { factor_id } => (factor_id, Op::Resume),
        FactorChange::Revoke { factor_id } => (factor_id, Op::Revoke),
        FactorChange::RevokeSessions => {
            let n = fs::revoke_sessions(conn, tenant, user_key).await?;
            return Ok(Ok(json!({ "sessions_ended": n })));
        }
        FactorChange::RequireEnrollment { types, deadline } => {
            if types.is_empty() {
                return Ok(Err(FactorError::permanent(
                    "an enrollment requirement needs at least one type",
                )));
            }
            fs::upsert_requirement(conn, tenant, user_key, types, deadline).await?;
            return Ok(Ok(json!({})));
        }
    };
    Ok(change_in_tx(conn, tenant, user_key, factor_id, op)
        .await?
        .map(|()| json!({})))
}

impl FactorStore for BuiltinStore {
    fn name(&self) -> &str {
        "builtin"
    }

    fn list_factors<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
    ) -> BoxFuture<'a, FResult<Vec<Factor>>> {
        Box::pin(async move { list(&self.db, tenant, user_key).await.map_err(db_err) })
    }

    fn list_sessions<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
    ) -> BoxFuture<'a, FResult<Vec<Session>>> {
        Box::pin(async move {
            list_sessions(&self.db, tenant, user_key)
                .await
                .map_err(db_err)
        })
    }

    fn list_users<'a>(
        &'a self,
        tenant: &'a str,
        after: Option<String>,
        limit: usize,
    ) -> BoxFuture<'a, FResult<Vec<String>>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            fs::list_user_keys(&self.db.pool, tenant, after.as_deref(), limit)
                .await
                .map_err(db_err)
        })
    }

    fn suspend<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        factor_id: &'a str,
    ) -> BoxFuture<'a, FResult<()>> {
        let change = FactorChange::Suspend {
            factor_id: factor_id.to_string(),
        };
        Box::pin(async move { self.apply_own_tx(tenant, user_key, change).await.map(drop) })
    }

    fn resume<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        factor_id: &'a str,
    ) -> BoxFuture<'a, FResult<()>> {
        let change = FactorChange::Resume {
            factor_id: factor_id.to_string(),
        };
        Box::pin(async move { self.apply_own_tx(tenant, user_key, change).await.map(drop) })
    }

    fn revoke<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        factor_id: &'a str,
    ) -> BoxFuture<'a, FResult<()>> {
        let change = FactorChange::Revoke {
            factor_id: factor_id.to_string(),
        };
        Box::pin(async move { self.apply_own_tx(tenant, user_key, change).await.map(drop) })
    }

    fn revoke_sessions<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
    ) -> BoxFuture<'a, FResult<u64>> {
        Box::pin(async move {
            let done = self
                .apply_own_tx(tenant, user_key, FactorChange::RevokeSessions)
                .await?;
            Ok(done["sessions_ended"].as_u64().unwrap_or(0))
        })
    }

    fn require_enrollment<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        types: &'a [FactorType],
        deadline: &'a str,
    ) -> BoxFuture<'a, FResult<()>> {
        let change = FactorChange::RequireEnrollment {
            types: types.to_vec(),
            deadline: deadline.to_string(),
        };
        Box::pin(async move { self.apply_own_tx(tenant, user_key, change).await.map(drop) })
    }

    fn in_database(&self) -> bool {
        true
    }

    fn apply_in_tx<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        tenant: &'a str,
        user_key: &'a str,
        change: &'a FactorChange,
    ) -> BoxFuture<'a, FResult<Value>> {
        Box::pin(async move {
            apply_change(conn, tenant, user_key, change)
                .await
                .map_err(db_err)?
        })
    }

    fn verify_code<'a>(
        &'a self,
        tenant: &'a str,
        user_key: &'a str,
        code: &'a str,
    ) -> BoxFuture<'a, FResult<bool>> {
        Box::pin(self.verify(tenant, user_key, code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factors::crypto::KeySource;
    use crate::factors::{verify_master_key, FlakyStore};
    use crate::store::testing::fresh_dbs;
    use sqlx::Row;

    const T: &str = "tenant-1";

    fn key() -> Arc<MasterKey> {
        Arc::new(MasterKey::generate(KeySource::Ephemeral))
    }

    fn secret_from_uri(uri: &str) -> Vec<u8> {
        let s = uri
            .split("secret=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        totp::base32_decode(s).unwrap()
    }

    async fn status(db: &Db, id: &str) -> FactorStatus {
        fs::get_factor(&db.pool, T, id)
            .await
            .unwrap()
            .unwrap()
            .factor
            .status
    }

    #[tokio::test]
    async fn enroll_list_and_lifecycle_idempotent() {
        for db in fresh_dbs().await {
            let k = key();
            let store = BuiltinStore::new(db.clone(), k.clone());
            let totp_f = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Totp,
                Some("phone".into()),
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            let uri = totp_f.otpauth_uri.clone().unwrap();
            assert!(
                uri.starts_with("otpauth://totp/deprovd:alice?secret="),
                "{uri}"
            );
            assert!(uri.ends_with("&issuer=deprovd&algorithm=SHA1&digits=6&period=30"));
            assert!(totp_f.recovery_codes.is_none());
            let wa = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Webauthn,
                None,
                EnrollMaterial::Webauthn {
                    credential_id: "cred-1".into(),
                    public_key: "pk".into(),
                },
            )
            .await
            .unwrap();
            assert!(wa.otpauth_uri.is_none());
            let rc = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::RecoveryCodes,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            assert_eq!(rc.recovery_codes.as_ref().unwrap().len(), 10);

            let listed = store.list_factors(T, "alice").await.unwrap();
            assert_eq!(listed.len(), 3);
            assert!(listed.iter().all(|f| f.status == FactorStatus::Active));
            assert_eq!(listed[0].label.as_deref(), Some("phone"));
            assert!(store.list_factors(T, "bob").await.unwrap().is_empty());
            assert!(store
                .list_factors("other-tenant", "alice")
                .await
                .unwrap()
                .is_empty());

            let id = &wa.factor.id;
            store.suspend(T, "alice", id).await.unwrap();
            store.suspend(T, "alice", id).await.unwrap();
            assert_eq!(status(&db, id).await, FactorStatus::Suspended);
            store.resume(T, "alice", id).await.unwrap();
            store.resume(T, "alice", id).await.unwrap();
            assert_eq!(status(&db, id).await, FactorStatus::Active);
            store.revoke(T, "alice", id).await.unwrap();
            store.revoke(T, "alice", id).await.unwrap();
            assert_eq!(status(&db, id).await, FactorStatus::Revoked);
            // suspending a revoked factor: already unusable, fine
            store.suspend(T, "alice", id).await.unwrap();
            assert_eq!(status(&db, id).await, FactorStatus::Revoked);
            // resuming it is a permanent error
            let e = store.resume(T, "alice", id).await.unwrap_err();
            assert!(!e.retryable, "{e:?}");
            // unknown factor, or another user's factor: permanent error
            let e = store.suspend(T, "alice", "nope").await.unwrap_err();
            assert!(!e.retryable);
            let e = store.revoke(T, "bob", &totp_f.factor.id).await.unwrap_err();
            assert!(!e.retryable);
            assert_eq!(status(&db, &totp_f.factor.id).await, FactorStatus::Active);

            // revoke destroys the TOTP ciphertext
            store.revoke(T, "alice", &totp_f.factor.id).await.unwrap();
            let row = fs::get_factor(&db.pool, T, &totp_f.factor.id)
                .await
                .unwrap()
                .unwrap();
            assert!(row.secret_enc.is_none());

            // revoke_by_id, for the admin path
            let f = revoke_by_id(&db, T, &rc.factor.id).await.unwrap().unwrap();
            assert_eq!(f.status, FactorStatus::Revoked);
            assert!(revoke_by_id(&db, T, "missing").await.unwrap().is_none());
            assert!(fs::recovery_code_hashes(&db.pool, T, &rc.factor.id)
                .await
                .unwrap()
                .is_empty());
        }
    }

    #[tokio::test]
    async fn enroll_rejects_bad_material() {
        for db in fresh_dbs().await {
            let k = key();
            let bad = [
                (FactorType::Webauthn, EnrollMaterial::None),
                (
                    FactorType::Certificate,
                    EnrollMaterial::Destination { value: "x".into() },
                ),
                (
                    FactorType::Totp,
                    EnrollMaterial::Secret { secret: vec![1; 4] },
                ),
                (
                    FactorType::Totp,
                    EnrollMaterial::Destination { value: "x".into() },
                ),
                (
                    FactorType::RecoveryCodes,
                    EnrollMaterial::Secret {
                        secret: vec![1; 20],
                    },
                ),
                (
                    FactorType::Sms,
                    EnrollMaterial::Secret {
                        secret: vec![1; 20],
                    },
                ),
                (
                    FactorType::Webauthn,
                    EnrollMaterial::Webauthn {
                        credential_id: " ".into(),
                        public_key: "pk".into(),
                    },
                ),
            ];
            for (t, m) in bad {
                let r = enroll(&db, &k, T, "alice", t, None, m.clone()).await;
                assert!(
                    matches!(r, Err(EnrollError::Invalid(_))),
                    "{t} {m:?}: {r:?}"
                );
            }
            assert!(matches!(
                enroll(&db, &k, T, "", FactorType::Sms, None, EnrollMaterial::None).await,
                Err(EnrollError::Invalid(_))
            ));
            // a WebAuthn credential is enrolled once per tenant
            let m = EnrollMaterial::Webauthn {
                credential_id: "c".into(),
                public_key: "pk".into(),
            };
            enroll(&db, &k, T, "alice", FactorType::Webauthn, None, m.clone())
                .await
                .unwrap();
            assert!(matches!(
                enroll(&db, &k, T, "bob", FactorType::Webauthn, None, m.clone()).await,
                Err(EnrollError::Invalid(_))
            ));
            let sms = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Sms,
                None,
                EnrollMaterial::Destination {
                    value: "+4412".into(),
                },
            )
            .await
            .unwrap();
            assert_eq!(sms.factor.factor_type, FactorType::Sms);
            assert!(list(&db, T, "alice").await.unwrap().len() == 2);
        }
    }

    #[tokio::test]
    async fn totp_verifies_once_and_secret_is_encrypted() {
        for db in fresh_dbs().await {
            let k = key();
            let store = BuiltinStore::new(db.clone(), k.clone());
            let e = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Totp,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            let secret = secret_from_uri(e.otpauth_uri.as_ref().unwrap());
            assert_eq!(secret.len(), 20);
            let row = fs::get_factor(&db.pool, T, &e.factor.id)
                .await
                .unwrap()
                .unwrap();
            let ct = row.secret_enc.unwrap();
            assert!(!ct.contains(&totp::base32_encode(&secret)));
            assert_eq!(k.decrypt(&ct, &row_aad(T, &e.factor.id)).unwrap(), secret);

            let now = chrono::Utc::now().timestamp();
            let code = totp::totp(&secret, now, totp::TotpParams::default());
            assert!(!store.verify_code(T, "alice", "000000x").await.unwrap());
            assert!(store.verify_code(T, "alice", &code).await.unwrap());
            // replay refused
            assert!(!store.verify_code(T, "alice", &code).await.unwrap());
            assert!(list(&db, T, "alice").await.unwrap()[0].last_used.is_some());
            // another user's code space is separate
            assert!(!store.verify_code(T, "bob", &code).await.unwrap());
            // a suspended factor does not verify
            store.suspend(T, "alice", &e.factor.id).await.unwrap();
            let next = totp::totp(&secret, now + 30, totp::TotpParams::default());
            assert!(!store.verify_code(T, "alice", &next).await.unwrap());
            store.resume(T, "alice", &e.factor.id).await.unwrap();
            assert!(store.verify_code(T, "alice", &next).await.unwrap());
        }
    }

    #[tokio::test]
    async fn hotp_and_seeded_hardware_tokens() {
        for db in fresh_dbs().await {
            let k = key();
            let store = BuiltinStore::new(db.clone(), k.clone());
            let seed = b"12345678901234567890".to_vec();
            let h = enroll(
                &db,
                &k,
                T,
                "u",
                FactorType::Hotp,
                None,
                EnrollMaterial::Secret {
                    secret: seed.clone(),
                },
            )
            .await
            .unwrap();
            assert!(h
                .otpauth_uri
                .unwrap()
                .starts_with("otpauth://hotp/deprovd:u?"));
            // RFC 4226 counter 2 (look-ahead), then 1 is behind and refused, then 3
            assert!(store.verify_code(T, "u", "359152").await.unwrap());
            assert!(!store.verify_code(T, "u", "287082").await.unwrap());
            assert!(!store.verify_code(T, "u", "359152").await.unwrap());
            assert!(store.verify_code(T, "u", "969429").await.unwrap());

            let hw = enroll(
                &db,
                &k,
                T,
                "w",
                FactorType::HardwareOtp,
                None,
                EnrollMaterial::Secret {
                    secret: seed.clone(),
                },
            )
            .await
            .unwrap();
            assert!(
                hw.otpauth_uri.is_none(),
                "a hardware seed is never shown back"
            );
            let code = totp::totp(
                &seed,
                chrono::Utc::now().timestamp(),
                totp::TotpParams::default(),
            );
            assert!(store.verify_code(T, "w", &code).await.unwrap());
        }
    }

    #[tokio::test]
    async fn recovery_codes_hashed_single_use_and_replaced() {
        for db in fresh_dbs().await {
            let k = key();
            let store = BuiltinStore::new(db.clone(), k.clone());
            let e = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::RecoveryCodes,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            let codes = e.recovery_codes.unwrap();
            let distinct: std::collections::HashSet<&String> = codes.iter().collect();
            assert_eq!(distinct.len(), 10);
            // nothing in the database holds a code in clear
            let hashes = fs::recovery_code_hashes(&db.pool, T, &e.factor.id)
                .await
                .unwrap();
            assert_eq!(hashes.len(), 10);
            for c in &codes {
                assert_eq!(c.len(), 11);
                let bare = c.replace('-', "");
                assert!(hashes
                    .iter()
                    .all(|h| !h.contains(&bare) && !h.contains(c.as_str())));
                let hits: i64 =
                    sqlx::query("SELECT COUNT(*) FROM recovery_codes WHERE code_hash LIKE $1")
                        .bind(format!("%{bare}%"))
                        .fetch_one(&db.pool)
                        .await
                        .unwrap()
                        .get(0);
                assert_eq!(hits, 0);
            }
            assert!(store
                .verify_code(T, "alice", &codes[0].to_uppercase())
                .await
                .unwrap());
            assert!(!store.verify_code(T, "alice", &codes[0]).await.unwrap());
            assert!(store
                .verify_code(T, "alice", &codes[1].replace('-', " "))
                .await
                .unwrap());
            assert_eq!(
                fs::recovery_codes_left(&db.pool, T, &e.factor.id)
                    .await
                    .unwrap(),
                8
            );
            assert!(!store.verify_code(T, "alice", "aaaaa-aaaaa").await.unwrap());
            // a new set replaces the old one
            let e2 = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::RecoveryCodes,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            assert_eq!(status(&db, &e.factor.id).await, FactorStatus::Revoked);
            // Revoking destroyed the old set's hashes, not only its status.
            assert!(fs::recovery_code_hashes(&db.pool, T, &e.factor.id)
                .await
                .unwrap()
                .is_empty());
            assert!(!store.verify_code(T, "alice", &codes[2]).await.unwrap());
            assert!(store
                .verify_code(T, "alice", &e2.recovery_codes.unwrap()[0])
                .await
                .unwrap());
        }
    }

    #[tokio::test]
    async fn sessions_and_user_listing() {
        for db in fresh_dbs().await {
            let k = key();
            let store = BuiltinStore::new(db.clone(), k.clone());
            for _ in 0..3 {
                create_session(&db, T, "alice").await.unwrap();
            }
            create_session(&db, T, "carol").await.unwrap();
            enroll(
                &db,
                &k,
                T,
                "bob",
                FactorType::Sms,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            let dave = enroll(
                &db,
                &k,
                T,
                "dave",
                FactorType::Email,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            store.revoke(T, "dave", &dave.factor.id).await.unwrap();
            create_session(&db, "t2", "zed").await.unwrap();

            assert_eq!(store.list_sessions(T, "alice").await.unwrap().len(), 3);
            assert_eq!(store.revoke_sessions(T, "alice").await.unwrap(), 3);
            assert_eq!(store.revoke_sessions(T, "alice").await.unwrap(), 0);
            assert!(store
                .list_sessions(T, "alice")
                .await
                .unwrap()
                .iter()
                .all(|s| s.revoked));
            assert_eq!(
                store
                    .list_sessions(T, "carol")
                    .await
                    .unwrap()
                    .iter()
                    .filter(|s| !s.revoked)
                    .count(),
                1
            );

            // alice: only revoked sessions now; dave: only a revoked factor
            assert_eq!(
                store.list_users(T, None, 10).await.unwrap(),
                vec!["bob", "carol"]
            );
            assert_eq!(store.list_users(T, None, 1).await.unwrap(), vec!["bob"]);
            assert_eq!(
                store.list_users(T, Some("bob".into()), 10).await.unwrap(),
                vec!["carol"]
            );
            assert!(store
                .list_users(T, Some("carol".into()), 10)
                .await
                .unwrap()
                .is_empty());
            assert_eq!(store.list_users("t2", None, 10).await.unwrap(), vec!["zed"]);
        }
    }

    #[tokio::test]
    async fn enrollment_requirements() {
        for db in fresh_dbs().await {
            let k = key();
            let store = BuiltinStore::new(db.clone(), k.clone());
            let types = [FactorType::Webauthn, FactorType::Certificate];
            store
                .require_enrollment(T, "alice", &types, "2024-01-04T00:00:00.000000Z")
                .await
                .unwrap();
            store
                .require_enrollment(T, "alice", &types, "2024-01-04T00:00:00.000000Z")
                .await
                .unwrap();
            store
                .require_enrollment(
                    T,
                    "alice",
                    &[types[1], types[0]],
                    "2024-01-05T00:00:00.000000Z",
                )
                .await
                .unwrap();
            let r = list_requirements(&db, T, "alice").await.unwrap();
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(
                r[0].types,
                vec![FactorType::Certificate, FactorType::Webauthn]
            );
            assert_eq!(r[0].deadline, "2024-01-05T00:00:00.000000Z");
            assert!(!r[0].satisfied);
            assert!(
                !store
                    .require_enrollment(T, "alice", &[], "x")
                    .await
                    .unwrap_err()
                    .retryable
            );
            // a TOTP does not satisfy it, a WebAuthn credential does
            enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Totp,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            assert!(!list_requirements(&db, T, "alice").await.unwrap()[0].satisfied);
            enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Webauthn,
                None,
                EnrollMaterial::Webauthn {
                    credential_id: "c".into(),
                    public_key: "p".into(),
                },
            )
            .await
            .unwrap();
            assert!(list_requirements(&db, T, "alice").await.unwrap()[0].satisfied);
            // asking again re-arms it
            store
                .require_enrollment(T, "alice", &types, "2024-02-01T00:00:00.000000Z")
                .await
                .unwrap();
            assert!(!list_requirements(&db, T, "alice").await.unwrap()[0].satisfied);
        }
    }

    #[tokio::test]
    async fn startup_refuses_a_wrong_key_over_encrypted_rows() {
        for db in fresh_dbs().await {
            let k = key();
            // fresh database: the first key is recorded and accepted again
            verify_master_key(&db, &k).await.unwrap();
            verify_master_key(&db, &k).await.unwrap();
            enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Totp,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            let err = verify_master_key(&db, &key()).await.unwrap_err();
            assert!(
                err.contains("DEPROVD_MASTER_KEY") && err.contains("master.key"),
                "{err}"
            );
            // without the key_check row, the secrets themselves are checked
            sqlx::query("DELETE FROM key_check")
                .execute(&db.pool)
                .await
                .unwrap();
            assert!(verify_master_key(&db, &key()).await.is_err());
            verify_master_key(&db, &k).await.unwrap();
            assert!(fs::key_check(&db).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn ciphertext_moved_to_another_row_does_not_open() {
        for db in fresh_dbs().await {
            let k = key();
            let store = BuiltinStore::new(db.clone(), k.clone());
            let a = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Totp,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            let b = enroll(
                &db,
                &k,
                T,
                "mallory",
                FactorType::Totp,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            let alice_secret = secret_from_uri(a.otpauth_uri.as_ref().unwrap());
            // mallory copies alice's ciphertext onto her own factor row
            let ct = fs::get_factor(&db.pool, T, &a.factor.id)
                .await
                .unwrap()
                .unwrap()
                .secret_enc
                .unwrap();
            sqlx::query("UPDATE factors SET secret_enc = $1 WHERE tenant_id = $2 AND id = $3")
                .bind(ct)
                .bind(T)
                .bind(&b.factor.id)
                .execute(&db.pool)
                .await
                .unwrap();
            let code = totp::totp(
                &alice_secret,
                chrono::Utc::now().timestamp(),
                totp::TotpParams::default(),
            );
            let r = store.verify_code(T, "mallory", &code).await;
            assert!(matches!(r, Err(ref e) if !e.retryable), "{r:?}");
        }
    }

    #[tokio::test]
    async fn flaky_store_fails_then_recovers() {
        for db in fresh_dbs().await {
            let k = key();
            let inner: Arc<dyn FactorStore> = Arc::new(BuiltinStore::new(db.clone(), k.clone()));
            let e = enroll(
                &db,
                &k,
                T,
                "alice",
                FactorType::Sms,
                None,
                EnrollMaterial::None,
            )
            .await
            .unwrap();
            let flaky = FlakyStore::new(inner);
            flaky.fail_next(2);
            for _ in 0..2 {
                let err = flaky.suspend(T, "alice", &e.factor.id).await.unwrap_err();
                assert!(err.retryable);
            }
            assert_eq!(status(&db, &e.factor.id).await, FactorStatus::Active);
            flaky.suspend(T, "alice", &e.factor.id).await.unwrap();
            assert_eq!(status(&db, &e.factor.id).await, FactorStatus::Suspended);
            flaky.fail_forever(true);
            for _ in 0..5 {
                assert!(
                    flaky
                        .revoke(T, "alice", &e.factor.id)
                        .await
                        .unwrap_err()
                        .retryable
                );
            }
            assert!(flaky.list_factors(T, "alice").await.is_err());
            flaky.fail_forever(false);
            assert_eq!(flaky.list_factors(T, "alice").await.unwrap().len(), 1);
            assert_eq!(flaky.failures.load(std::sync::atomic::Ordering::SeqCst), 8);
        }
    }

    #[tokio::test]
    async fn store_override_registry() {
        let db = crate::store::testing::fresh_sqlite().await;
        let k = key();
        assert_eq!(
            crate::factors::store_for_tenant(&db, k.clone(), "ovr-t").name(),
            "builtin"
        );
        let flaky: Arc<dyn FactorStore> = Arc::new(FlakyStore::new(Arc::new(BuiltinStore::new(
            db.clone(),
            k.clone(),
        ))));
        crate::factors::set_store_override("ovr-t", flaky);
        assert_eq!(
            crate::factors::store_for_tenant(&db, k.clone(), "ovr-t").name(),
            "flaky"
        );
        assert_eq!(
            crate::factors::store_for_tenant(&db, k.clone(), "ovr-other").name(),
            "builtin"
        );
        crate::factors::clear_store_override("ovr-t");
        assert_eq!(
            crate::factors::store_for_tenant(&db, k, "ovr-t").name(),
            "builtin"
        );
    }
}
