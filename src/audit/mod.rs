//! The audit log: every SCIM write, policy decision, action and outcome, admin and CLI action,
//! guard trip and offboarding, kept as one append-only SHA-256 hash chain per tenant, so that
//! `deprovd audit verify` detects any edited, removed, reordered or cut-off entry.
//!
//! Entries are appended inside the caller's transaction ([`append`]), so an entry exists exactly
//! when the change it describes was committed. On PostgreSQL an appended entry is pending until
//! the [`chainer`] links it (milliseconds after the commit); every read links pending entries
//! first. An entry's seq is its place in the chain, so it is given when it is linked; its `at`
//! is when it was written (causally ordered entries are linked in order).
//!
//! This module defines the entry, the canonical encoding that is hashed, and verification; the
//! SQL lives in [`store`]. It does not decide what is worth auditing (callers do) and it is not
//! a general event bus (see `notify`).
//!
//! ## The canonical encoding (version 1)
//!
//! `hash = hex(SHA-256(encoding))`, lowercase hex, where `encoding` is the ASCII bytes
//! `deprovd.audit.v1` followed by these fields in order:
//! `tenant_id, seq, at, kind, actor_kind, actor_id, actor_name, client_ip, request_id, subject,
//! detail, prev_hash`. Each present field is the byte `0x01`, its UTF-8 length as an unsigned
//! 64-bit big-endian integer, then its UTF-8 bytes; an absent optional field is the single byte
//! `0x00`. `seq` is written as its decimal text, `detail` as the JSON text exactly as stored. The
//! first entry of a chain has `prev_hash` = 64 zeros ([`GENESIS`]). Length prefixes make the
//! encoding injective: no two different entries encode to the same bytes.

pub mod chainer;
pub mod store;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use crate::store::{Db, StoreError};

pub use store::{export, link_pending, list, verify};

/// `prev_hash` of the first entry of every chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Audit kinds written by the lifecycle engine and friends. Others write their own `admin.*` /
/// `cli.*` kinds; these are the ones more than one module needs to agree on.
pub mod kinds {
    pub const POLICY_DECISION: &str = "policy.decision";
    pub const ACTION_EXECUTED: &str = "action.executed";
    pub const ACTION_FAILED: &str = "action.failed";
    pub const ACTION_WOULD_EXECUTE: &str = "action.would_execute";
    pub const ACTION_QUARANTINED: &str = "action.quarantined";
    pub const GUARD_TRIPPED: &str = "guard.tripped";
    pub const GUARD_RELEASED: &str = "guard.released";
    pub const GUARD_DISCARDED: &str = "guard.discarded";
    pub const JOB_DEAD: &str = "job.dead";
    pub const JOB_RETRIED: &str = "job.retried";
    pub const OFFBOARDING_SCHEDULED: &str = "offboarding.scheduled";
    pub const OFFBOARDING_DONE: &str = "offboarding.done";
    pub const OFFBOARDING_CANCELLED: &str = "offboarding.cancelled";
    pub const OFFBOARDING_FAILED: &str = "offboarding.failed";
}

/// Who did it. Mirrors `directory::Actor` without the tenant (the chain is per tenant already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditActor {
    /// `scim_token` | `jwt` | `admin_token` | `auditor_token` | `cli` | `system`
    pub kind: String,
    pub id: String,
    pub name: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
}

impl AuditActor {
    /// deprovd itself (the engine, a worker, a scheduled job).
    pub fn system(id: &str, name: &str) -> AuditActor {
        AuditActor {
            kind: "system".into(),
            id: id.into(),
            name: name.into(),
            client_ip: None,
            request_id: None,
        }
    }

    /// Someone at the command line of the server.
    pub fn cli(command: &str) -> AuditActor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("USERNAME"))
            .unwrap_or_else(|_| "unknown".into());
        AuditActor {
            kind: "cli".into(),
            id: user.clone(),
            name: format!("{user} ({command})"),
            client_ip: None,
            request_id: None,
        }
    }

    pub fn from_actor(actor: &crate::directory::Actor) -> AuditActor {
        AuditActor {
            kind: actor.kind.as_str().to_string(),
            id: actor.id.clone(),
            name: actor.name.clone(),
            client_ip: actor.client_ip.clone(),
            request_id: actor.request_id.clone(),
        }
    }
}

impl From<&crate::directory::Actor> for AuditActor {
    fn from(actor: &crate::directory::Actor) -> Self {
        AuditActor::from_actor(actor)
    }
}

/// What to append; `seq`, `at`, `id` and the hashes are filled in by [`append`].
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub kind: String,
    pub actor: AuditActor,
    /// The user the entry is about (SCIM id), when there is one.
    pub subject: Option<String>,
    pub detail: Value,
}

impl AuditEntry {
    pub fn new(kind: &str, actor: AuditActor, subject: Option<&str>, detail: Value) -> AuditEntry {
        AuditEntry {
            kind: kind.to_string(),
            actor,
            subject: subject.map(str::to_string),
            detail,
        }
    }
}

/// One stored entry, as listed and exported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub tenant_id: String,
    pub seq: i64,
    pub id: String,
    pub at: String,
    pub kind: String,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_name: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
    pub subject: Option<String>,
    /// Parsed for listing; the hash covers [`AuditRecord::detail_text`].
    pub detail: Value,
    #[serde(skip)]
    pub detail_text: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The hash this entry should carry, recomputed from its fields.
    pub fn compute_hash(&self) -> String {
        entry_hash(&HashInput {
            tenant_id: &self.tenant_id,
            seq: self.seq,
            at: &self.at,
            kind: &self.kind,
            actor_kind: &self.actor_kind,
            actor_id: &self.actor_id,
            actor_name: &self.actor_name,
            client_ip: self.client_ip.as_deref(),
            request_id: self.request_id.as_deref(),
            subject: self.subject.as_deref(),
            detail: &self.detail_text,
            prev_hash: &self.prev_hash,
        })
    }
}

/// The fields covered by an entry's hash, in encoding order.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub tenant_id: &'a str,
    pub seq: i64,
    pub at: &'a str,
    pub kind: &'a str,
    pub actor_kind: &'a str,
    pub actor_id: &'a str,
    pub actor_name: &'a str,
    pub client_ip: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub detail: &'a str,
    pub prev_hash: &'a str,
}

/// The canonical encoding described in the module doc.
pub fn canonical_bytes(input: &HashInput<'_>) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, value: Option<&str>) {
        match value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u64).to_be_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
    let seq = input.seq.to_string();
    let mut out = Vec::with_capacity(256 + input.detail.len());
    out.extend_from_slice(b"deprovd.audit.v1");
    field(&mut out, Some(input.tenant_id));
    field(&mut out, Some(&seq));
    field(&mut out, Some(input.at));
    field(&mut out, Some(input.kind));
    field(&mut out, Some(input.actor_kind));
    field(&mut out, Some(input.actor_id));
    field(&mut out, Some(input.actor_name));
    field(&mut out, input.client_ip);
    field(&mut out, input.request_id);
    field(&mut out, input.subject);
    field(&mut out, Some(input.detail));
    field(&mut out, Some(input.prev_hash));
    out
}

/// `hex(SHA-256(canonical_bytes(input)))`.
pub fn entry_hash(input: &HashInput<'_>) -> String {
    hex::encode(Sha256::digest(canonical_bytes(input)))
}

/// Appends `entry` to the tenant's chain inside the caller's transaction. On SQLite it is
/// linked at once; on PostgreSQL it is pending until the chainer links it after the commit
/// (see [`chainer`]); either way it exists exactly when the transaction committed.
pub async fn append(
    conn: &mut AnyConnection,
    tenant_id: &str,
    entry: AuditEntry,
) -> Result<(), sqlx::Error> {
    store::append_many(conn, tenant_id, std::slice::from_ref(&entry)).await
}

/// Appends several entries, in order, inside the caller's transaction: one INSERT per 32
/// entries (and on SQLite one chain-head update per 32) rather than statements for each.
pub async fn append_many(
    conn: &mut AnyConnection,
    tenant_id: &str,
    entries: &[AuditEntry],
) -> Result<(), sqlx::Error> {
    store::append_many(conn, tenant_id, entries).await
}

/// Appends one entry in its own transaction (for callers with nothing else to write).
pub async fn append_now(db: &Db, tenant_id: &str, entry: AuditEntry) -> Result<(), StoreError> {
    let tenant = tenant_id.to_string();
    db.write(move |conn: &mut AnyConnection| {
        Box::pin(async move {
            append(conn, &tenant, entry).await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
}

/// Filters for [`list`]; every field optional.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only entries about this user (the entry's subject).
    pub subject: Option<String>,
    /// Only kinds starting with this, e.g. `action.` or `scim.user.deactivated`.
    pub kind_prefix: Option<String>,
    /// `at >= since` (RFC 3339 UTC text, compared as text).
    pub since: Option<String>,
    /// `at < until`.
    pub until: Option<String>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Entries checked (all tenants).
    pub entries: u64,
    /// Chains checked.
    pub tenants: u64,
    /// The first bad entry: tenant, seq, and what is wrong with it.
    pub first_bad: Option<(String, i64, String)>,
}

#[cfg(test)]
mod tests;
