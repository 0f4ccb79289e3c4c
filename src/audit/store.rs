//! The audit log's SQL: append to a chain, read it back in pages, verify and export. Same SQL
//! text on SQLite and PostgreSQL. Nothing here decides what gets audited.

use std::io::Write;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{AuditEntry, AuditRecord, HashInput, ListFilter, VerifyReport, GENESIS};
use crate::store::{now_ts, Db, Engine};

/// Rows read per query while verifying or exporting: bounds memory on large logs.
const PAGE: i64 = 1000;

const COLUMNS: &str = "tenant_id, seq, id, at, kind, actor_kind, actor_id, actor_name, client_ip, \
                       request_id, subject, detail, prev_hash, hash";

/// Entries written per INSERT statement (14 parameters each).
const INSERT_CHUNK: usize = 32;

/// Appends entries, in order, and moves the chain head once per chunk; returns the last new
/// entry's (seq, hash), or None when `entries` is empty.
pub(crate) async fn append_many(
    conn: &mut AnyConnection,
    tenant_id: &str,
    entries: &[AuditEntry],
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let mut last = None;
    for chunk in entries.chunks(INSERT_CHUNK) {
        last = Some(append_chunk(conn, tenant_id, chunk).await?);
    }
    Ok(last)
}

async fn append_chunk(
    conn: &mut AnyConnection,
    tenant_id: &str,
    entries: &[AuditEntry],
) -> Result<(i64, String), sqlx::Error> {
    let engine = if crate::jobs::store::is_postgres(conn) {
        Engine::Postgres
    } else {
        Engine::Sqlite
    };
    let n = entries.len() as i64;
    // Reserve n seqs in one statement: a new chain's head is inserted at seq n with prev
    // GENESIS; an existing one moves from s to s + n and returns its (still old) hash. On
    // PostgreSQL the upsert holds the head row's lock until commit, which is what serialises
    // appends to one tenant's chain.
    let head = sqlx::query(
        "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, $3, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET seq = audit_heads.seq + $3 \
         RETURNING seq, hash",
    )
    .bind(tenant_id)
    .bind(GENESIS)
    .bind(n)
    .fetch_one(&mut *conn)
    .await?;
    let last_seq: i64 = head.try_get("seq")?;
    let mut prev_hash: String = head.try_get("hash")?;
    let at = now_ts();

    struct Row {
        seq: i64,
        detail: String,
        prev_hash: String,
        hash: String,
    }
    let mut rows = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let seq = last_seq - n + 1 + i as i64;
        let detail = serde_json::to_string(&entry.detail).unwrap_or_else(|_| "null".into());
        let hash = super::entry_hash(&HashInput {
            tenant_id,
            seq,
            at: &at,
            kind: &entry.kind,
            actor_kind: &entry.actor.kind,
            actor_id: &entry.actor.id,
            actor_name: &entry.actor.name,
            client_ip: entry.actor.client_ip.as_deref(),
            request_id: entry.actor.request_id.as_deref(),
            subject: entry.subject.as_deref(),
            detail: &detail,
            prev_hash: &prev_hash,
        });
        rows.push(Row {
            seq,
            detail,
            prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        });
    }
    let mut values = String::new();
    for i in 0..rows.len() {
        let b = i * 14;
        if i > 0 {
            values.push_str(", ");
        }
        let params: Vec<String> = (1..=14).map(|k| format!("${}", b + k)).collect();
        values.push('(');
        values.push_str(&params.join(", "));
        values.push(')');
    }
    let insert = format!(
        "INSERT INTO audit_log (tenant_id, seq, id, at, kind, actor_kind, actor_id, actor_name, \
         client_ip, request_id, subject, detail, prev_hash, hash) VALUES {values}"
    );
    // The head moves in the same round trip as the insert: on PostgreSQL in a data-modifying
    // CTE (while the head row is locked), on SQLite as a second statement of the same call
    // (each call crosses to SQLite's thread and back; the writer is alone anyway).
    let head_param = rows.len() * 14 + 1;
    let sql = match engine {
        Engine::Postgres => format!(
            "WITH ins AS ({insert} RETURNING 1) UPDATE audit_heads SET hash = ${head_param} \
             WHERE tenant_id = $1"
        ),
        Engine::Sqlite => {
            format!("{insert}; UPDATE audit_heads SET hash = ${head_param} WHERE tenant_id = $1")
        }
    };
    let mut q = sqlx::query(&sql);
    for (row, entry) in rows.iter().zip(entries) {
        q = q
            .bind(tenant_id)
            .bind(row.seq)
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(&at)
            .bind(&entry.kind)
            .bind(&entry.actor.kind)
            .bind(&entry.actor.id)
            .bind(&entry.actor.name)
            .bind(entry.actor.client_ip.clone())
            .bind(entry.actor.request_id.clone())
            .bind(entry.subject.clone())
            .bind(&row.detail)
            .bind(&row.prev_hash)
            .bind(&row.hash);
    }
    q.bind(&prev_hash).execute(&mut *conn).await?;
    Ok((last_seq, prev_hash))
}

fn record(row: &AnyRow) -> Result<AuditRecord, sqlx::Error> {
    let detail_text: String = row.try_get("detail")?;
    Ok(AuditRecord {
        tenant_id: row.try_get("tenant_id")?,
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        actor_kind: row.try_get("actor_kind")?,
        actor_id: row.try_get("actor_id")?,
        actor_name: row.try_get("actor_name")?,
        client_ip: row.try_get("client_ip")?,
        request_id: row.try_get("request_id")?,
        subject: row.try_get("subject")?,
        // A row edited into invalid JSON still lists (as a string); verify flags it anyway.
        detail: serde_json::from_str(&detail_text)
            .unwrap_or_else(|_| serde_json::Value::String(detail_text.clone())),
        detail_text,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

async fn page(
    db: &Db,
    tenant_id: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    ))
    .bind(tenant_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(record).collect()
}

/// Every tenant that has a chain (a head or any entry), in id order.
async fn chain_tenants(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT tenant_id FROM audit_heads UNION SELECT DISTINCT tenant_id FROM audit_log \
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
}

async fn head(db: &Db, tenant_id: &str) -> Result<Option<(i64, String)>, sqlx::Error> {
    let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_optional(&db.pool)
        .await?;
    match row {
        Some(r) => Ok(Some((r.try_get("seq")?, r.try_get("hash")?))),
        None => Ok(None),
    }
}

/// The chain head of one tenant: (seq, hash) of its last entry, for reports.
pub async fn chain_head(db: &Db, tenant_id: &str) -> Result<Option<(i64, String)>, sqlx::Error> {
    head(db, tenant_id).await
}

/// Recomputes one tenant's chain (or every tenant's) and names the first bad entry.
///
/// Detects: an edited entry (its hash no longer matches its fields), a removed entry (a gap in
/// seq), a reordered or replaced entry (its `prev_hash` does not match the previous entry's hash,
/// or its hash does not cover its new seq), and entries cut off the end (the chain head in
/// `audit_heads` points past the last entry).
pub async fn verify(db: &Db, tenant: Option<&str>) -> Result<VerifyReport, sqlx::Error> {
    let tenants = match tenant {
        Some(t) => vec![t.to_string()],
        None => chain_tenants(db).await?,
    };
    let mut report = VerifyReport {
        ok: true,
        entries: 0,
        tenants: 0,
        first_bad: None,
    };
    for t in tenants {
        report.tenants += 1;
        if let Some((seq, reason)) = verify_chain(db, &t, &mut report.entries).await? {
            report.ok = false;
            report.first_bad = Some((t, seq, reason));
            return Ok(report);
        }
    }
    Ok(report)
}

async fn verify_chain(
    db: &Db,
    tenant_id: &str,
    entries: &mut u64,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let mut expected: i64 = 1;
    let mut prev = GENESIS.to_string();
    loop {
        let rows = page(db, tenant_id, expected - 1, PAGE).await?;
        let done = (rows.len() as i64) < PAGE;
        for r in rows {
            *entries += 1;
            if r.seq != expected {
                let last = expected - 1;
                return Ok(Some((
                    expected,
                    format!(
                        "entry {expected} is missing: the chain jumps from {last} to {} \
                         (a row was deleted or its seq changed)",
                        r.seq
                    ),
                )));
            }
            if r.prev_hash != prev {
                return Ok(Some((
                    r.seq,
                    format!(
                        "prev_hash does not match the hash of entry {} (an entry was removed, \
                         replaced or reordered)",
                        r.seq - 1
                    ),
                )));
            }
            if r.compute_hash() != r.hash {
                return Ok(Some((
                    r.seq,
                    "hash does not match the entry's contents (the entry was edited)".into(),
                )));
            }
            prev = r.hash;
            expected += 1;
        }
        if done {
            break;
        }
    }
    let last = expected - 1;
    match head(db, tenant_id).await? {
        None if last > 0 => Ok(Some((last, "the chain head is missing".into()))),
        None => Ok(None),
        Some((head_seq, _)) if head_seq > last => Ok(Some((
            last + 1,
            format!(
                "entries {}..={head_seq} are missing from the end of the chain (truncated)",
                last + 1
            ),
        ))),
        Some((head_seq, head_hash)) if head_seq != last || head_hash != prev => Ok(Some((
            last,
            format!("the chain head (seq {head_seq}) does not match the last entry (seq {last})"),
        ))),
        Some(_) => Ok(None),
    }
}

/// Writes a tenant's chain (or every chain) as JSON lines, in chain order; returns the count.
pub async fn export(
    db: &Db,
    tenant: Option<&str>,
    writer: &mut (dyn Write + Send),
) -> Result<u64, ExportError> {
    let tenants = match tenant {
        Some(t) => vec![t.to_string()],
        None => chain_tenants(db).await?,
    };
    let mut n = 0u64;
    for t in tenants {
        let mut after = 0i64;
        loop {
            let rows = page(db, &t, after, PAGE).await?;
            let done = (rows.len() as i64) < PAGE;
            for r in &rows {
                serde_json::to_writer(&mut *writer, r).map_err(std::io::Error::from)?;
                writer.write_all(b"\n")?;
                after = r.seq;
                n += 1;
            }
            if done {
                break;
            }
        }
    }
    writer.flush()?;
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
}

/// Escapes LIKE wildcards so a kind prefix matches literally (escape character `\`).
fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// One tenant's entries matching `filter`, oldest first, after `after_seq` (a cursor: pass the
/// last seq of the previous page), at most `limit` (clamped to 1..=1000).
pub async fn list(
    db: &Db,
    tenant_id: &str,
    filter: &ListFilter,
    limit: i64,
    after_seq: Option<i64>,
) -> Result<Vec<AuditRecord>, sqlx::Error> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE tenant_id = $1 AND seq > $2");
    let mut binds: Vec<String> = Vec::new();
    let mut n = 2;
    let mut cond = |sql: &mut String, text: &str, value: String| {
        n += 1;
        sql.push_str(&text.replace("$?", &format!("${n}")));
        binds.push(value);
    };
    if let Some(s) = &filter.subject {
        cond(&mut sql, " AND subject = $?", s.clone());
    }
    if let Some(k) = &filter.kind_prefix {
        cond(&mut sql, " AND kind LIKE $? ESCAPE '\\'", like_prefix(k));
    }
    if let Some(s) = &filter.since {
        cond(&mut sql, " AND at >= $?", s.clone());
    }
    if let Some(u) = &filter.until {
        cond(&mut sql, " AND at < $?", u.clone());
    }
    n += 1;
    sql.push_str(&format!(" ORDER BY seq LIMIT ${n}"));
    let mut q = sqlx::query(&sql)
        .bind(tenant_id)
        .bind(after_seq.unwrap_or(0));
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.bind(limit.clamp(1, 1000)).fetch_all(&db.pool).await?;
    rows.iter().map(record).collect()
}

/// Test helpers that tamper with the stored log (the point of `verify`).
#[cfg(test)]
pub(crate) mod tamper {
    use super::*;

    pub async fn exec(db: &Db, sql: &str) {
        sqlx::query(sql).execute(&db.pool).await.expect(sql);
    }
}
