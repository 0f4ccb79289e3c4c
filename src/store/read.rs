//! Reads on the hot path (SCIM lookups, gets and lists): one statement in, plain rows out.
//!
//! On SQLite the statement runs on the calling thread, on a connection that thread keeps for
//! the database (rusqlite over the same bundled SQLite that sqlx links). Why not the sqlx
//! pool: sqlx runs each SQLite connection on a worker thread of its own, so every statement
//! is two thread hand-offs, and on small VMs those cost more than the indexed lookup itself
//! (deprovd-bench, lookups at 100k users on 2 cores: see README "Benchmarks"). A WAL reader
//! never waits for the writer, so running it inline holds the caller's thread only for the
//! statement's own work. The connection is `query_only`: nothing written goes around the
//! single writer (`Db::write`).
//!
//! On PostgreSQL the statement goes through the pool, as every other query does.
//!
//! Parameters are written `$1`, `$2`… as everywhere in deprovd's SQL.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{Any, AnyArguments, AnyRow, AnyTypeInfoKind};
use sqlx::query::Query;
use sqlx::{Row, ValueRef as _};

use super::{Db, StoreError};

/// A statement parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Text(String),
    Int(i64),
    Real(f64),
}

/// Binds `args` to a query in order.
pub fn bind_args<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    args: &[SqlValue],
) -> Query<'q, Any, AnyArguments<'q>> {
    for a in args {
        q = match a {
            SqlValue::Text(s) => q.bind(s.clone()),
            SqlValue::Int(i) => q.bind(*i),
            SqlValue::Real(f) => q.bind(*f),
        };
    }
    q
}

/// One column of a row read with [`Db::read_rows`].
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Cell {
    pub fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn real(&self) -> Option<f64> {
        match self {
            Cell::Real(f) => Some(*f),
            Cell::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn into_text(self) -> Option<String> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A row of cells; [`cell`] reads one column of it.
pub type CellRow = Vec<Cell>;

/// Column `i` of a row, or an error naming the statement's shape when the row is shorter.
pub fn cell(row: &[Cell], i: usize) -> Result<&Cell, StoreError> {
    row.get(i)
        .ok_or_else(|| StoreError::Read(format!("row has no column {i}")))
}

/// Which SQLite file a process-local reader opens, and a number no other `Db` in this process
/// has (a thread's connections are kept per database).
#[derive(Debug)]
pub(crate) struct LocalReader {
    id: u64,
    path: PathBuf,
}

static NEXT_READER_ID: AtomicU64 = AtomicU64::new(1);

impl LocalReader {
    pub(crate) fn new(path: PathBuf) -> Self {
        LocalReader {
            id: NEXT_READER_ID.fetch_add(1, Ordering::Relaxed),
            path,
        }
    }
}

/// Connections a thread keeps open, most recently used last. A process normally has one
/// database; tests open many, so a thread keeps only a few.
const CONNECTIONS_PER_THREAD: usize = 4;

/// Prepared statements each connection keeps (lookups, gets, lists and their counts).
const STATEMENT_CACHE: usize = 64;

thread_local! {
    static CONNECTIONS: RefCell<Vec<(u64, rusqlite::Connection)>> = const { RefCell::new(Vec::new()) };
}

impl Db {
    /// The SQLite database file (None on PostgreSQL).
    #[cfg(test)]
    pub(crate) fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.inner.local_reader.as_ref().map(|r| r.path.as_path())
    }

    /// Runs one read-only statement and returns all its rows. See the module comment for where
    /// it runs. Use it for statements that read few rows through an index; a statement that
    /// scans a large table holds the calling thread for as long.
    pub async fn read_rows(
        &self,
        sql: &str,
        args: &[SqlValue],
    ) -> Result<Vec<CellRow>, StoreError> {
        match &self.inner.local_reader {
            Some(reader) => read_local(reader, sql, args),
            None => self.read_rows_pooled(sql, args).await,
        }
    }

    /// [`Db::read_rows`] through the connection pool on every engine: for a statement that may
    /// walk many rows (a deep OFFSET), which on SQLite then runs on sqlx's connection thread.
    pub async fn read_rows_pooled(
        &self,
        sql: &str,
        args: &[SqlValue],
    ) -> Result<Vec<CellRow>, StoreError> {
        let rows = bind_args(sqlx::query(sql), args)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(cells_of).collect()
    }
}

/// An `AnyRow` as cells, each column decoded by the kind of its value (booleans as 0/1, as
/// deprovd stores them on SQLite).
pub fn cells_of(row: &AnyRow) -> Result<CellRow, StoreError> {
    let mut out = Vec::with_capacity(row.columns().len());
    for i in 0..row.columns().len() {
        let raw = row.try_get_raw(i)?;
        let kind = if raw.is_null() {
            AnyTypeInfoKind::Null
        } else {
            raw.type_info().kind()
        };
        out.push(match kind {
            AnyTypeInfoKind::Null => Cell::Null,
            AnyTypeInfoKind::Bool => Cell::Int(i64::from(row.try_get::<bool, _>(i)?)),
            AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt => {
                Cell::Int(row.try_get(i)?)
            }
            AnyTypeInfoKind::Real | AnyTypeInfoKind::Double => Cell::Real(row.try_get(i)?),
            AnyTypeInfoKind::Text => Cell::Text(row.try_get(i)?),
            AnyTypeInfoKind::Blob => {
                Cell::Text(String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(i)?).into_owned())
            }
        });
    }
    Ok(out)
}

fn local_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        // Only while another connection holds an exclusive lock (a checkpoint restarting the
        // WAL, a CLI migration) past the busy timeout: nothing was read, retrying helps.
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Aborted(format!("database busy: {e}"))
        }
        _ => StoreError::Read(e.to_string()),
    }
}

fn open_local(reader: &LocalReader) -> Result<rusqlite::Connection, StoreError> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        &reader.path,
        // The writer created the file and made it WAL; never create one here.
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(local_error)?;
    conn.busy_timeout(Duration::from_millis(u64::from(
        super::SQLITE_BUSY_TIMEOUT_MS,
    )))
    .map_err(local_error)?;
    conn.execute_batch(&format!(
        "PRAGMA query_only = ON; PRAGMA mmap_size = {};",
        super::SQLITE_MMAP_BYTES
    ))
    .map_err(local_error)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn read_local(
    reader: &LocalReader,
    sql: &str,
    args: &[SqlValue],
) -> Result<Vec<CellRow>, StoreError> {
    CONNECTIONS.with(|conns| {
        let mut conns = conns.borrow_mut();
        let at = match conns.iter().position(|(id, _)| *id == reader.id) {
            Some(at) => at,
            None => {
                if conns.len() >= CONNECTIONS_PER_THREAD {
                    conns.remove(0);
                }
                conns.push((reader.id, open_local(reader)?));
                conns.len() - 1
            }
        };
        let conn = &conns[at].1;
        run(conn, sql, args).map_err(local_error)
    })
}

fn run(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[SqlValue],
) -> Result<Vec<CellRow>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    // `$N` is a named parameter to SQLite, numbered in order of first appearance; bind each
    // by the N in its name.
    for i in 1..=stmt.parameter_count() {
        let n = stmt
            .parameter_name(i)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=args.len()).contains(n))
            .ok_or(rusqlite::Error::InvalidParameterCount(i, args.len()))?;
        match &args[n - 1] {
            SqlValue::Text(s) => stmt.raw_bind_parameter(i, s.as_str())?,
            SqlValue::Int(v) => stmt.raw_bind_parameter(i, *v)?,
            SqlValue::Real(v) => stmt.raw_bind_parameter(i, *v)?,
        }
    }
    let columns = stmt.column_count();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut cells = Vec::with_capacity(columns);
        for c in 0..columns {
            use rusqlite::types::ValueRef;
            cells.push(match row.get_ref(c)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(i) => Cell::Int(i),
                ValueRef::Real(f) => Cell::Real(f),
                ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Cell::Text(String::from_utf8_lossy(b).into_owned()),
            });
        }
        out.push(cells);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    #[tokio::test]
    async fn binds_each_dollar_parameter_by_its_number_and_reads_every_type() {
        for db in testing::fresh_dbs().await {
            // $2 appears first: SQLite numbers named parameters in order of appearance.
            let rows = db
                .read_rows(
                    "SELECT $2, $1, $3, CAST(NULL AS TEXT), $2 || 'x'",
                    &[
                        SqlValue::Int(7),
                        SqlValue::Text("b".into()),
                        SqlValue::Real(1.5),
                    ],
                )
                .await
                .unwrap();
            assert_eq!(
                rows,
                vec![vec![
                    Cell::Text("b".into()),
                    Cell::Int(7),
                    Cell::Real(1.5),
                    Cell::Null,
                    Cell::Text("bx".into()),
                ]],
                "{:?}",
                db.engine
            );
        }
    }

    #[tokio::test]
    async fn sees_every_committed_write_and_cannot_write() {
        for db in testing::fresh_dbs().await {
            let count = "SELECT COUNT(*) FROM tenants WHERE name = $1";
            let n = |rows: Vec<CellRow>| rows[0][0].int();
            assert_eq!(
                n(db.read_rows(count, &[SqlValue::Text("r1".into())])
                    .await
                    .unwrap()),
                Some(0)
            );
            db.write(|c: &mut sqlx::AnyConnection| {
                Box::pin(async move { crate::store::tenants::create_tenant(c, "r1").await })
            })
            .await
            .unwrap();
            // Read after the writer's answer: the commit is visible at once.
            assert_eq!(
                n(db.read_rows(count, &[SqlValue::Text("r1".into())])
                    .await
                    .unwrap()),
                Some(1)
            );
            if db.engine == crate::store::Engine::Sqlite {
                // The in-process reader is query_only: writes go through the writer alone.
                let e = db
                    .read_rows("DELETE FROM tenants RETURNING id", &[])
                    .await
                    .unwrap_err();
                assert!(matches!(e, StoreError::Read(_)), "{e}");
                assert_eq!(
                    n(db.read_rows(count, &[SqlValue::Text("r1".into())])
                        .await
                        .unwrap()),
                    Some(1)
                );
            }
        }
    }

    #[tokio::test]
    async fn a_missing_parameter_is_an_error_not_a_panic() {
        for db in testing::fresh_dbs().await {
            assert!(db
                .read_rows("SELECT $3", &[SqlValue::Int(1)])
                .await
                .is_err());
        }
    }
}
