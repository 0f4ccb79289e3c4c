//! The audit log's SQL: append to a chain, read it back in pages, verify and export. Same SQL
//! text on SQLite and PostgreSQL. Nothing here decides what gets audited.

use std::io::Write;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{AuditEntry, AuditRecord, HashInput, ListFilter, VerifyReport, GENESIS};
use crate::store::{now_ts, Db, Engine, StoreError};

/// Rows read per query while verifying or exporting: bounds memory on large logs.
const PAGE: i64 = 1000;

const COLUMNS: &str = "tenant_id, seq, id, at, kind, actor_kind, actor_id, actor_name, client_ip, \
                       request_id, subject, detail, prev_hash, hash";

/// Entries written per INSERT statement (14 parameters each in `audit_log`, 11 in
/// `audit_pending`).
const INSERT_CHUNK: usize = 32;

/// Pending entries linked per chainer transaction.
const LINK_BATCH: i64 = 1000;

/// An entry with everything but its place in the chain (seq, prev_hash, hash).
struct Unlinked {
    id: String,
    at: String,
    kind: String,
    actor_kind: String,
    actor_id: String,
    actor_name: String,
    client_ip: Option<String>,
    request_id: Option<String>,
    subject: Option<String>,
    /// JSON text, hashed exactly as stored.
    detail: String,
}

impl Unlinked {
    fn new(entry: &AuditEntry, at: &str) -> Unlinked {
        Unlinked {
            id: uuid::Uuid::new_v4().to_string(),
            at: at.to_string(),
            kind: entry.kind.clone(),
            actor_kind: entry.actor.kind.clone(),
            actor_id: entry.actor.id.clone(),
            actor_name: entry.actor.name.clone(),
            client_ip: entry.actor.client_ip.clone(),
            request_id: entry.actor.request_id.clone(),
            subject: entry.subject.clone(),
            detail: serde_json::to_string(&entry.detail).unwrap_or_else(|_| "null".into()),
        }
    }

    /// Binds the entry columns, `id` to `detail`, in table order.
    fn bind_to<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        q.bind(&self.id)
            .bind(&self.at)
            .bind(&self.kind)
            .bind(&self.actor_kind)
            .bind(&self.actor_id)
            .bind(&self.actor_name)
            .bind(self.client_ip.as_deref())
            .bind(self.request_id.as_deref())
            .bind(self.subject.as_deref())
            .bind(&self.detail)
    }

    /// The entry columns of an `audit_log` or `audit_pending` row.
    fn from_row(row: &AnyRow) -> Result<Unlinked, sqlx::Error> {
        Ok(Unlinked {
            id: row.try_get("id")?,
            at: row.try_get("at")?,
            kind: row.try_get("kind")?,
            actor_kind: row.try_get("actor_kind")?,
            actor_id: row.try_get("actor_id")?,
            actor_name: row.try_get("actor_name")?,
            client_ip: row.try_get("client_ip")?,
            request_id: row.try_get("request_id")?,
            subject: row.try_get("subject")?,
            detail: row.try_get("detail")?,
        })
    }
}

/// `$a, $a+1, … $a+n-1` as `($a, …), ($a+n, …)` rows for a multi-row VALUES.
fn values_list(rows: usize, per_row: usize, first: usize) -> String {
    let mut values = String::new();
    for i in 0..rows {
        let b = first + i * per_row;
        if i > 0 {
            values.push_str(", ");
        }
        let params: Vec<String> = (0..per_row).map(|k| format!("${}", b + k)).collect();
        values.push('(');
        values.push_str(&params.join(", "));
        values.push(')');
    }
    values
}

/// Appends entries, in order, inside the caller's transaction.
///
/// On SQLite they are linked into the chain at once (the single writer serialises appends and
/// holds no lock across anyone else's commit). On PostgreSQL they go to `audit_pending`, and
/// the chainer links them after the commit: linking here would hold the chain head's row lock
/// until this transaction's WAL flush, and every write of the tenant would queue behind it.
pub(crate) async fn append_many(
    conn: &mut AnyConnection,
    tenant_id: &str,
    entries: &[AuditEntry],
) -> Result<(), sqlx::Error> {
    let at = now_ts();
    let postgres = crate::store::engine_of(conn) == Engine::Postgres;
    for chunk in entries.chunks(INSERT_CHUNK) {
        let unlinked: Vec<Unlinked> = chunk.iter().map(|e| Unlinked::new(e, &at)).collect();
        if postgres {
            insert_pending(conn, tenant_id, &unlinked).await?;
        } else {
            // Reserve n seqs in one statement: a new chain's head is inserted at seq n with
            // prev GENESIS; an existing one moves from s to s + n and returns its old hash.
            let n = unlinked.len() as i64;
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
            let prev: String = head.try_get("hash")?;
            link(
                conn,
                Engine::Sqlite,
                tenant_id,
                last_seq - n + 1,
                prev,
                &unlinked,
            )
            .await?;
        }
    }
    if postgres && !entries.is_empty() {
        crate::store::after_commit(super::chainer::nudge);
    }
    Ok(())
}

async fn insert_pending(
    conn: &mut AnyConnection,
    tenant_id: &str,
    entries: &[Unlinked],
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO audit_pending (tenant_id, id, at, kind, actor_kind, actor_id, actor_name, \
         client_ip, request_id, subject, detail) VALUES {}",
        values_list(entries.len(), 11, 1)
    );
    let mut q = sqlx::query(&sql);
    for e in entries {
        q = e.bind_to(q.bind(tenant_id));
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// Writes `entries` as seqs `first_seq..` after an entry whose hash is `prev_hash`, and moves
/// the chain head to the last of them, in one round trip. The caller holds the head (its row
/// lock on PostgreSQL, the single writer on SQLite). Returns the new head.
async fn link(
    conn: &mut AnyConnection,
    engine: Engine,
    tenant_id: &str,
    first_seq: i64,
    mut prev_hash: String,
    entries: &[Unlinked],
) -> Result<(i64, String), sqlx::Error> {
    let mut links = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let seq = first_seq + i as i64;
        let hash = super::entry_hash(&HashInput {
            tenant_id,
            seq,
            at: &e.at,
            kind: &e.kind,
            actor_kind: &e.actor_kind,
            actor_id: &e.actor_id,
            actor_name: &e.actor_name,
            client_ip: e.client_ip.as_deref(),
            request_id: e.request_id.as_deref(),
            subject: e.subject.as_deref(),
            detail: &e.detail,
            prev_hash: &prev_hash,
        });
        links.push((seq, std::mem::replace(&mut prev_hash, hash.clone()), hash));
    }
    let last_seq = first_seq + entries.len() as i64 - 1;
    let insert = format!(
        "INSERT INTO audit_log (tenant_id, seq, id, at, kind, actor_kind, actor_id, actor_name, \
         client_ip, request_id, subject, detail, prev_hash, hash) VALUES {}",
        values_list(entries.len(), 14, 1)
    );
    // The head moves in the same round trip as the insert: on PostgreSQL in a data-modifying
    // CTE, on SQLite as a second statement of the same call.
    let (seq_param, hash_param) = (entries.len() * 14 + 1, entries.len() * 14 + 2);
    let set_head = format!(
        "UPDATE audit_heads SET seq = ${seq_param}, hash = ${hash_param} WHERE tenant_id = $1"
    );
    let sql = match engine {
        Engine::Postgres => format!("WITH ins AS ({insert} RETURNING 1) {set_head}"),
        Engine::Sqlite => format!("{insert}; {set_head}"),
    };
    let mut q = sqlx::query(&sql);
    for ((seq, prev, hash), e) in links.iter().zip(entries) {
        q = e
            .bind_to(q.bind(tenant_id).bind(*seq))
            .bind(prev)
            .bind(hash);
    }
    q.bind(last_seq)
        .bind(&prev_hash)
        .execute(&mut *conn)
        .await?;
    Ok((last_seq, prev_hash))
}

/// Links committed pending entries into their chains: one tenant's, or every tenant's. Returns
/// how many were linked. Safe to run from several processes at once (each batch holds the
/// chain head's row lock); a no-op on SQLite, where nothing is ever pending.
pub async fn link_pending(db: &Db, tenant: Option<&str>) -> Result<u64, StoreError> {
    if db.engine == Engine::Sqlite {
        return Ok(0);
    }
    let tenants: Vec<String> = match tenant {
        Some(t) => vec![t.to_string()],
        None => {
            let rows = sqlx::query("SELECT DISTINCT tenant_id FROM audit_pending")
                .fetch_all(&db.pool)
                .await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()?
        }
    };
    let mut linked = 0u64;
    for t in tenants {
        loop {
            let tenant = t.clone();
            let n = db
                .write(move |conn: &mut AnyConnection| {
                    Box::pin(async move {
                        Ok::<_, StoreError>(link_batch(conn, &tenant, LINK_BATCH).await?)
                    })
                })
                .await?;
            linked += n as u64;
            if (n as i64) < LINK_BATCH {
                break;
            }
        }
    }
    Ok(linked)
}

/// Entries committed and not yet linked (for /metrics).
pub async fn pending_count(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_pending")
        .fetch_one(&db.pool)
        .await
}

/// One chainer transaction: lock the head, take up to `limit` of the tenant's oldest pending
/// entries and link them in `pending_id` order.
async fn link_batch(
    conn: &mut AnyConnection,
    tenant_id: &str,
    limit: i64,
) -> Result<usize, sqlx::Error> {
    // Taking the head first serialises chainers; the DELETE that follows (a new snapshot under
    // READ COMMITTED) then sees what a chainer before us already took.
    let head = sqlx::query(
        "INSERT INTO audit_heads (tenant_id, seq, hash) VALUES ($1, 0, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET seq = audit_heads.seq RETURNING seq, hash",
    )
    .bind(tenant_id)
    .bind(GENESIS)
    .fetch_one(&mut *conn)
    .await?;
    let (seq, hash): (i64, String) = (head.try_get("seq")?, head.try_get("hash")?);
    let rows = sqlx::query(
        "DELETE FROM audit_pending WHERE pending_id IN (SELECT pending_id FROM audit_pending \
         WHERE tenant_id = $1 ORDER BY pending_id LIMIT $2) \
         RETURNING pending_id, id, at, kind, actor_kind, actor_id, actor_name, client_ip, \
         request_id, subject, detail",
    )
    .bind(tenant_id)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut pending = rows
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>("pending_id")?, Unlinked::from_row(r)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    pending.sort_by_key(|(id, _)| *id);
    let entries: Vec<Unlinked> = pending.into_iter().map(|(_, e)| e).collect();
    let engine = crate::store::engine_of(conn);
    let (mut next, mut prev) = (seq + 1, hash);
    for chunk in entries.chunks(INSERT_CHUNK) {
        let (last, h) = link(conn, engine, tenant_id, next, prev, chunk).await?;
        (next, prev) = (last + 1, h);
    }
    Ok(entries.len())
}

fn record(row: &AnyRow) -> Result<AuditRecord, sqlx::Error> {
    let e = Unlinked::from_row(row)?;
    Ok(AuditRecord {
        tenant_id: row.try_get("tenant_id")?,
        seq: row.try_get("seq")?,
        id: e.id,
        at: e.at,
        kind: e.kind,
        actor_kind: e.actor_kind,
        actor_id: e.actor_id,
        actor_name: e.actor_name,
        client_ip: e.client_ip,
        request_id: e.request_id,
        subject: e.subject,
        // A row edited into invalid JSON still lists (as a string); verify flags it anyway.
        detail: serde_json::from_str(&e.detail)
            .unwrap_or_else(|_| serde_json::Value::String(e.detail.clone())),
        detail_text: e.detail,
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
pub async fn chain_head(db: &Db, tenant_id: &str) -> Result<Option<(i64, String)>, StoreError> {
    link_pending(db, Some(tenant_id)).await?;
    Ok(head(db, tenant_id).await?)
}

/// Recomputes one tenant's chain (or every tenant's) and names the first bad entry.
///
/// Detects: an edited entry (its hash no longer matches its fields), a removed entry (a gap in
/// seq), a reordered or replaced entry (its `prev_hash` does not match the previous entry's hash,
/// or its hash does not cover its new seq), entries cut off the end (the chain head in
/// `audit_heads` points past the last entry), and entries added past the head. Safe on a live
/// log: entries written while it reads are not mistaken for tampering.
pub async fn verify(db: &Db, tenant: Option<&str>) -> Result<VerifyReport, StoreError> {
    // Entries committed but not linked yet are part of the log: link them, then check.
    link_pending(db, tenant).await?;
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
    // The head is read before the entries: the log stays live while it is verified (writers on
    // SQLite, the chainer on PostgreSQL), and an entry linked meanwhile moves the head past
    // what we read. An entry past the head we read makes us read the head again; only an
    // entry still past it is out of place. (Entries and their head commit together, so no
    // reader sees a head ahead of its entries.)
    let mut bound = head(db, tenant_id).await?;
    let mut expected: i64 = 1;
    let mut prev = GENESIS.to_string();
    loop {
        let rows = page(db, tenant_id, expected - 1, PAGE).await?;
        let got = rows.len() as i64;
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
            if bound.as_ref().is_none_or(|(seq, _)| r.seq > *seq) {
                bound = head(db, tenant_id).await?;
                match &bound {
                    None => {
                        return Ok(Some((r.seq, "the chain head is missing".into())));
                    }
                    Some((seq, _)) if r.seq > *seq => {
                        return Ok(Some((
                            r.seq,
                            format!(
                                "entry {} is past the chain head (seq {seq}): it was added \
                                 outside deprovd",
                                r.seq
                            ),
                        )));
                    }
                    Some(_) => {}
                }
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
        if got == PAGE {
            continue;
        }
        // A short page ends the walk unless the head read during it is further on: those
        // entries committed before that read, so one more page must hold them (if it holds
        // nothing, they are gone).
        let head_seq = bound.as_ref().map_or(0, |(seq, _)| *seq);
        if expected > head_seq || got == 0 {
            break;
        }
    }
    let last = expected - 1;
    match bound {
        None => Ok(None),
        Some((head_seq, _)) if head_seq > last => Ok(Some((
            last + 1,
            format!(
                "entries {}..={head_seq} are missing from the end of the chain (truncated)",
                last + 1
            ),
        ))),
        Some((head_seq, head_hash)) if head_hash != prev => Ok(Some((
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
    link_pending(db, tenant).await?;
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
    Db(#[from] StoreError),
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for ExportError {
    fn from(e: sqlx::Error) -> Self {
        ExportError::Db(e.into())
    }
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
) -> Result<Vec<AuditRecord>, StoreError> {
    link_pending(db, Some(tenant_id)).await?;
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
    Ok(rows.iter().map(record).collect::<Result<_, _>>()?)
}

/// Test helpers that tamper with the stored log (the point of `verify`).
#[cfg(test)]
pub(crate) mod tamper {
    use super::*;

    pub async fn exec(db: &Db, sql: &str) {
        sqlx::query(sql).execute(&db.pool).await.expect(sql);
    }
}
