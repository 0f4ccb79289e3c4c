//! Database access shared by every storage module: connecting (SQLite file or PostgreSQL),
//! running the embedded migrations, timestamps in the one text format all tables use, and
//! [`Db::write`], the single entry point for every write in the service.
//!
//! On SQLite, `Db::write` funnels all writes through one writer task that owns a dedicated
//! connection and commits many callers' operations in one transaction (group commit), so
//! concurrent requests share one fsync while each keeps its own all-or-nothing outcome (a
//! SAVEPOINT per operation). On PostgreSQL every write is its own transaction on a pooled
//! connection. Callers see the same contract on both: when `write` returns `Ok`, the change is
//! committed and durable.
//!
//! Not here: any table's SQL other than `schema_migrations` (see `directory/` and each module's
//! own `store.rs`), and tenants/tokens (`store/tenants.rs`, owned by auth).

mod affinity;
pub mod locks;
pub mod migrations;
mod read;
pub mod tenants;
pub mod testing;

pub use read::{bind_args, cell, cells_of, Cell, CellRow, SqlValue};

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot};

/// Which database engine a [`Db`] talks to; the few SQL differences branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The writer task is gone (shutdown); nothing was written.
    #[error("the database writer has stopped")]
    Closed,
    #[error("database configuration: {0}")]
    Config(String),
    /// This write was in a group-commit batch whose transaction could not be committed (or the
    /// operation panicked): nothing of it was written. Safe to retry.
    #[error("write aborted, nothing was written: {0}")]
    Aborted(String),
    /// A read on SQLite's in-process reader failed (see `store::read`).
    #[error("database read error: {0}")]
    Read(String),
    /// `Db::write` was called from inside a write operation; that would deadlock on SQLite.
    #[error("Db::write called inside a write operation (writes must not nest)")]
    Nested,
}

/// Tuning for [`Db::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct DbOptions {
    /// Pool size for reads (and PostgreSQL writes). Default: SQLite 8×cores (8 to 64), PostgreSQL 10; `DEPROVD_DB_MAX_CONNECTIONS` overrides.
    pub max_connections: Option<u32>,
}

/// How many queued writes the SQLite writer folds into one transaction at most.
const MAX_BATCH: usize = 256;
/// Queue depth in front of the SQLite writer; callers wait (backpressure) beyond it.
const WRITE_QUEUE: usize = 4096;

/// A handle on the database: a read pool plus the write path. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub engine: Engine,
    inner: Arc<Inner>,
}

struct Inner {
    /// SQLite only: the queue in front of the writer task.
    writer: Option<mpsc::Sender<Box<dyn WriteJob>>>,
    stats: Arc<WriteStats>,
    /// SQLite only: the file hot-path reads open on their own thread (`store::read`).
    local_reader: Option<read::LocalReader>,
    /// Test databases clean themselves up when the last handle goes away.
    _cleanup: Option<testing::Cleanup>,
}

#[derive(Default)]
struct WriteStats {
    batches: AtomicU64,
    ops: AtomicU64,
}

/// Wake-ups a write asked for, run once its transaction has committed.
type Wakes = Arc<std::sync::Mutex<Vec<fn()>>>;

tokio::task_local! {
    /// Set while a write operation runs: a nested `Db::write` fails fast instead of
    /// deadlocking the SQLite writer (which would wait for itself), and [`after_commit`]
    /// collects its wake-ups here.
    static IN_WRITE: Wakes;
}

/// Runs `wake` once the current write has committed (at once outside a write). Enqueuing code
/// uses it to wake this process's workers: woken before the commit, a worker would find
/// nothing yet and fall back to polling.
pub fn after_commit(wake: fn()) {
    let queued = IN_WRITE.try_with(|w| w.lock().unwrap_or_else(|p| p.into_inner()).push(wake));
    if queued.is_err() {
        wake();
    }
}

/// Runs a committed write's wake-ups, each once.
fn run_wakes(wakes: &Wakes) {
    let mut v = std::mem::take(&mut *wakes.lock().unwrap_or_else(|p| p.into_inner()));
    v.sort_by_key(|f| *f as usize);
    v.dedup_by_key(|f| *f as usize);
    for wake in v {
        wake();
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// Now, UTC, in the fixed text format every table uses (text order is time order).
pub fn now_ts() -> String {
    ts_from(Utc::now())
}

/// `t` in the fixed text format: `2024-05-01T12:00:00.000000Z`.
pub fn ts_from(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Whether `e` is a unique-constraint violation, on either engine through the Any driver.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    if db.is_unique_violation() {
        return true;
    }
    let code = db.code();
    if matches!(code.as_deref(), Some("2067") | Some("1555") | Some("23505")) {
        return true;
    }
    let msg = db.message();
    msg.contains("UNIQUE constraint failed") || msg.contains("duplicate key value")
}

enum Target {
    Sqlite { url: String },
    Postgres { url: String },
}

/// Normalise a database URL: SQLite URLs get `mode=rwc` (create the file if missing).
fn parse_url(url: &str) -> Result<Target, StoreError> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres {
            url: url.to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() || path == ":memory:" || path.contains("mode=memory") {
            return Err(StoreError::Config(
                "an in-memory SQLite database cannot be shared by the writer and the read pool; \
                 use a file (sqlite://deprovd.db)"
                    .into(),
            ));
        }
        let query = match query {
            Some(q) if q.split('&').any(|kv| kv.starts_with("mode=")) => q.to_string(),
            Some(q) if !q.is_empty() => format!("{q}&mode=rwc"),
            _ => "mode=rwc".to_string(),
        };
        return Ok(Target::Sqlite {
            url: format!("sqlite://{path}?{query}"),
        });
    }
    Err(StoreError::Config(format!(
        "unsupported database URL {:?}: use sqlite://PATH or postgres://…",
        url.split('@').next_back().unwrap_or("")
    )))
}

/// The file of a `sqlite://PATH?…` URL (as `parse_url` writes them).
fn sqlite_path(url: &str) -> PathBuf {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    PathBuf::from(path.split('?').next().unwrap_or(path))
}

/// Creates a missing SQLite file readable by its owner only (0600): it holds token hashes and
/// encrypted factor secrets. SQLite gives the -wal and -shm files the database file's mode.
fn create_private_file(url: &str) -> Result<(), StoreError> {
    let path = sqlite_path(url);
    if url.contains("mode=ro") || path.exists() {
        return Ok(());
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    match open.open(&path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Config(format!(
            "cannot create the database file {}: {e}",
            path.display()
        ))),
    }
}

/// `synchronous` for SQLite. FULL (the default) makes every commit durable across power loss;
/// `DEPROVD_SQLITE_SYNCHRONOUS=NORMAL` trades that for speed (a power cut may lose the last
/// commits, which breaks "a 2xx means it will happen"): for benchmarks only.
fn sqlite_synchronous() -> &'static str {
    match std::env::var("DEPROVD_SQLITE_SYNCHRONOUS")
        .ok()
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("NORMAL") => "NORMAL",
        Some("OFF") => "OFF",
        _ => "FULL",
    }
}

/// How long a connection waits for another process's write lock (a CLI verb next to a busy
/// server, or the server behind a long CLI write) before giving up with "database is locked".
const SQLITE_BUSY_TIMEOUT_MS: u32 = 30_000;

/// Reads through a memory map instead of a `pread` per page: at 100k users a lookup's pages are
/// rarely all in each connection's own page cache, and the syscalls were the cost.
const SQLITE_MMAP_BYTES: u64 = 256 * 1024 * 1024;

/// A pooled PostgreSQL connection idle longer than this is pinged before use.
const PG_PING_AFTER_IDLE: Duration = Duration::from_secs(5);

fn sqlite_pragmas(conn: &mut AnyConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    let sql = format!(
        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; \
         PRAGMA foreign_keys = ON; PRAGMA mmap_size = {SQLITE_MMAP_BYTES};",
        sqlite_synchronous()
    );
    Box::pin(async move { exec(conn, &sql).await })
}

fn default_pool_size(engine: Engine) -> u32 {
    // An operator's override (`DEPROVD_DB_MAX_CONNECTIONS`), e.g. to fit a PostgreSQL
    // server's max_connections across replicas.
    if let Some(n) = std::env::var("DEPROVD_DB_MAX_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        return n.clamp(1, 256);
    }
    match engine {
        Engine::Sqlite => {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            // Readers are cheap in WAL mode, and sqlx runs each SQLite connection on its own
            // thread: with few connections requests queue behind thread hand-offs. Measured
            // with deprovd-bench (lookups at 10k users, 2 cores): 6 → ~7k/s, 16–24 → ~11k/s.
            // (SCIM's hot reads no longer use the pool: `store::read`. The engine, the admin
            // API, counts and deep pages still do.)
            (8 * cores).clamp(8, 64) as u32
        }
        Engine::Postgres => 10,
    }
}

impl Db {
    /// Connect, create the SQLite file if missing, and run pending migrations.
    pub async fn connect(url: &str) -> Result<Db, StoreError> {
        Self::connect_with(url, DbOptions::default()).await
    }

    pub async fn connect_with(url: &str, opts: DbOptions) -> Result<Db, StoreError> {
        Self::open(url, opts, None).await
    }

    pub(crate) async fn open(
        url: &str,
        opts: DbOptions,
        cleanup: Option<testing::Cleanup>,
    ) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        let target = parse_url(url)?;
        let stats = Arc::new(WriteStats::default());
        match target {
            Target::Postgres { url } => {
                let size = opts
                    .max_connections
                    .unwrap_or_else(|| default_pool_size(Engine::Postgres));
                let pool = AnyPoolOptions::new()
                    .max_connections(size.max(1))
                    .acquire_timeout(Duration::from_secs(30))
                    // sqlx pings every connection it hands out: a network round trip per
                    // query. A connection in steady use has just proved itself; one that sat
                    // idle (a server restart or failover may have cut it) is still checked.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > PG_PING_AFTER_IDLE {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect(&url)
                    .await?;
                let db = Db {
                    pool,
                    engine: Engine::Postgres,
                    inner: Arc::new(Inner {
                        writer: None,
                        stats,
                        local_reader: None,
                        _cleanup: cleanup,
                    }),
                };
                let mut conn = db.pool.acquire().await?;
                migrations::run(&mut conn, Engine::Postgres).await?;
                Ok(db)
            }
            Target::Sqlite { url } => {
                create_private_file(&url)?;
                let connect_opts = AnyConnectOptions::from_str(&url)?;
                // The writer's own connection, on its own thread: set WAL and migrate before
                // any reader opens the file.
                let (tx, rx) = mpsc::channel(WRITE_QUEUE);
                start_writer(connect_opts.clone(), rx, stats.clone()).await?;
                let size = opts
                    .max_connections
                    .unwrap_or_else(|| default_pool_size(Engine::Sqlite));
                let pool = AnyPoolOptions::new()
                    .max_connections(size.max(1))
                    .acquire_timeout(Duration::from_secs(30))
                    // No ping per acquire: a local file connection cannot hang up, and the
                    // ping was a thread hand-off to the connection's worker on every query.
                    .test_before_acquire(false)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move { sqlite_pragmas(conn).await })
                    })
                    .connect_with(connect_opts)
                    .await?;
                tokio::spawn(checkpointer(pool.clone(), tx.downgrade()));
                Ok(Db {
                    pool,
                    engine: Engine::Sqlite,
                    inner: Arc::new(Inner {
                        writer: Some(tx),
                        stats,
                        local_reader: Some(read::LocalReader::new(sqlite_path(&url))),
                        _cleanup: cleanup,
                    }),
                })
            }
        }
    }

    /// Run `op` in a write transaction and return its result once it is committed.
    ///
    /// `op` gets a connection inside a transaction; everything it does commits together, or
    /// not at all when it returns `Err` (its work is rolled back, other writes are unaffected).
    /// `op` must not begin/commit transactions itself and must never call `Db::write` (that
    /// fails with [`StoreError::Nested`]). On SQLite `op` runs on the writer task, batched with
    /// other callers' operations; keep it short and do no network I/O inside it.
    pub async fn write<T, E, F>(&self, op: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        if IN_WRITE.try_with(|_| ()).is_ok() {
            return Err(E::from(StoreError::Nested));
        }
        match &self.inner.writer {
            Some(queue) => {
                let (tx, rx) = oneshot::channel();
                let job: Box<dyn WriteJob> = Box::new(TypedJob { op, tx });
                if queue.send(job).await.is_err() {
                    return Err(E::from(StoreError::Closed));
                }
                match rx.await {
                    Ok(r) => r,
                    Err(_) => Err(E::from(StoreError::Closed)),
                }
            }
            None => {
                let stats = &self.inner.stats;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.ops.fetch_add(1, Ordering::Relaxed);
                let mut tx = self.pool.begin().await.map_err(|e| E::from(e.into()))?;
                let wakes = Wakes::default();
                let res = IN_WRITE.scope(wakes.clone(), op(&mut tx)).await;
                match res {
                    Ok(v) => {
                        tx.commit().await.map_err(|e| E::from(e.into()))?;
                        run_wakes(&wakes);
                        Ok(v)
                    }
                    Err(e) => {
                        // Dropping the transaction would roll back too; doing it here returns
                        // the connection to the pool clean.
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// (batches committed, operations committed or attempted) since start, for /metrics.
    /// ops/batches is the group-commit factor.
    pub fn write_stats(&self) -> (u64, u64) {
        let s = &self.inner.stats;
        (
            s.batches.load(Ordering::Relaxed),
            s.ops.load(Ordering::Relaxed),
        )
    }

    /// For /readyz: the pool answers and (SQLite) the writer is running.
    pub async fn ping(&self) -> bool {
        if let Some(w) = &self.inner.writer {
            if w.is_closed() {
                return false;
            }
        }
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// (open connections, idle connections) of the read pool.
    pub fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }
}

/// An operation queued for the SQLite writer, with its result channel; type-erased so one
/// queue carries every caller's `T` and `E`.
trait WriteJob: Send {
    fn run<'c>(self: Box<Self>, conn: &'c mut AnyConnection) -> BoxFuture<'c, Ran>;
    /// Answer without running (the batch could not start).
    fn fail(self: Box<Self>, err: StoreError);
}

/// An operation that has run: whether it succeeded, and how to answer its caller once the
/// batch's fate is known (`None` = committed).
struct Ran {
    ok: bool,
    deliver: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

struct TypedJob<F, T, E> {
    op: F,
    tx: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> WriteJob for TypedJob<F, T, E>
where
    F: for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run<'c>(self: Box<Self>, conn: &'c mut AnyConnection) -> BoxFuture<'c, Ran> {
        let TypedJob { op, tx } = *self;
        Box::pin(async move {
            let res = AssertUnwindSafe(async move { op(conn).await })
                .catch_unwind()
                .await;
            let res = match res {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!("a write operation panicked; it was rolled back");
                    Err(E::from(StoreError::Aborted(
                        "the write operation panicked".into(),
                    )))
                }
            };
            let ok = res.is_ok();
            Ran {
                ok,
                deliver: Box::new(move |batch_err| {
                    let out = match batch_err {
                        Some(e) if ok => Err(E::from(e)),
                        _ => res,
                    };
                    let _ = tx.send(out);
                }),
            }
        })
    }

    fn fail(self: Box<Self>, err: StoreError) {
        let _ = self.tx.send(Err(E::from(err)));
    }
}

/// The engine a connection talks to: the few SQL differences inside a transaction branch on it.
pub(crate) fn engine_of(conn: &AnyConnection) -> Engine {
    if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        Engine::Postgres
    } else {
        Engine::Sqlite
    }
}

/// Run raw SQL (no parameters). Boxed so the future is `Send` for any borrow lifetime (the
/// writer task and pool callbacks need that).
pub(crate) fn exec<'c>(
    conn: &'c mut AnyConnection,
    sql: &'c str,
) -> BoxFuture<'c, Result<(), sqlx::Error>> {
    Box::pin(async move { sqlx::Executor::execute(conn, sql).await.map(|_| ()) })
}

/// Starts the SQLite writer on a thread of its own, pinned to one CPU, and waits until its
/// connection is open and migrated.
///
/// Why a pinned thread: sqlx runs each SQLite connection on a worker thread it spawns, and
/// every statement is a hand-off to that thread and back. On small VMs a hand-off to another
/// CPU (waking it from idle) costs more than the statement, and a write makes several.
/// The worker thread is spawned from the pinned thread, so it inherits the pin: writer and
/// worker hand off on one CPU, a plain context switch. Measured with deprovd-bench (PATCH,
/// 10k users, 2 cores): see README "Benchmarks".
async fn start_writer(
    connect_opts: AnyConnectOptions,
    rx: mpsc::Receiver<Box<dyn WriteJob>>,
    stats: Arc<WriteStats>,
) -> Result<(), StoreError> {
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), StoreError>>();
    std::thread::Builder::new()
        .name("deprovd-sqlite-writer".into())
        .spawn(move || {
            affinity::pin_current_thread_to_last_cpu();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(StoreError::Aborted(format!(
                        "cannot start the SQLite writer: {e}"
                    ))));
                    return;
                }
            };
            rt.block_on(async move {
                let setup = async {
                    let mut wconn = connect_opts.connect().await?;
                    sqlite_pragmas(&mut wconn).await?;
                    // Checkpoints run beside the writer (`checkpointer`); this only bounds the
                    // WAL should that fall behind.
                    exec(
                        &mut wconn,
                        &format!("PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}"),
                    )
                    .await?;
                    migrations::run(&mut wconn, Engine::Sqlite).await?;
                    Ok::<_, StoreError>(wconn)
                };
                match setup.await {
                    Ok(wconn) => {
                        let _ = ready_tx.send(Ok(()));
                        writer_loop(wconn, rx, stats).await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| StoreError::Aborted(format!("cannot start the SQLite writer: {e}")))?;
    ready_rx
        .await
        .map_err(|_| StoreError::Aborted("the SQLite writer stopped while starting".into()))?
}

/// The writer's own automatic checkpoint, in pages: a backstop far above what `checkpointer`
/// lets the WAL reach.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// How often `checkpointer` copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies committed WAL pages into the database file from a pool connection, so that the
/// copy and its fsync are not inside one of the writer's commits (SQLite's automatic
/// checkpoint runs in the commit that crosses the threshold, and every write queued behind it
/// waits). A PASSIVE checkpoint never blocks the writer or readers. Stops with the writer.
async fn checkpointer(pool: AnyPool, writer: mpsc::WeakSender<Box<dyn WriteJob>>) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if writer.upgrade().is_none() {
            break;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "WAL checkpoint failed; the next one retries");
        }
    }
}

/// The SQLite writer: takes the first queued operation plus whatever else is already waiting,
/// runs them in one transaction with a savepoint each, commits once, then answers everyone.
async fn writer_loop(
    mut conn: AnyConnection,
    mut rx: mpsc::Receiver<Box<dyn WriteJob>>,
    stats: Arc<WriteStats>,
) {
    let mut pending: VecDeque<Box<dyn WriteJob>> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(j) => pending.push_back(j),
                None => break,
            }
        }
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => pending.push_back(j),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, &mut pending, &stats).await;
    }
    let _ = conn.close().await;
}

async fn run_batch(
    conn: &mut AnyConnection,
    pending: &mut VecDeque<Box<dyn WriteJob>>,
    stats: &WriteStats,
) {
    // The first operation's savepoint opens with the transaction: one round trip fewer.
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE; SAVEPOINT s").await {
        tracing::error!(error = %e, "cannot begin a write transaction");
        // Maybe a transaction was left open by a failure we could not roll back.
        let _ = exec(conn, "ROLLBACK").await;
        let n = pending.len().min(MAX_BATCH);
        for job in pending.drain(..n) {
            job.fail(StoreError::Aborted(format!(
                "cannot begin transaction: {e}"
            )));
        }
        return;
    }
    let mut done: Vec<Ran> = Vec::new();
    let mut broken: Option<String> = None;
    let wakes = Wakes::default();
    // Each operation runs in a savepoint, so a failing one is undone alone. The savepoint of
    // the previous operation is released in the same round trip that opens the next one
    // (statements cross to SQLite's thread one call at a time: fewer calls, more writes/s).
    let mut first = true;
    while done.len() < MAX_BATCH {
        let Some(job) = pending.pop_front() else {
            break;
        };
        let start = if std::mem::take(&mut first) {
            Ok(())
        } else {
            exec(conn, "RELEASE s; SAVEPOINT s").await
        };
        if let Err(e) = start {
            // Nothing of this job ran; fail it so a broken connection cannot loop forever.
            job.fail(StoreError::Aborted(format!("savepoint failed: {e}")));
            broken = Some(e.to_string());
            break;
        }
        let ran = IN_WRITE.scope(wakes.clone(), job.run(conn)).await;
        let undo = if ran.ok {
            Ok(())
        } else {
            exec(conn, "ROLLBACK TO s").await
        };
        done.push(ran);
        if let Err(e) = undo {
            // E.g. SQLite rolled the whole transaction back on its own (disk full, I/O error).
            broken = Some(e.to_string());
            break;
        }
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.ops.fetch_add(done.len() as u64, Ordering::Relaxed);
    let failure = match broken {
        Some(msg) => Some(msg),
        None => match exec(conn, "RELEASE s; COMMIT").await {
            Ok(()) => None,
            Err(e) => Some(format!("commit failed: {e}")),
        },
    };
    match failure {
        None => {
            run_wakes(&wakes);
            for ran in done {
                (ran.deliver)(None);
            }
        }
        Some(msg) => {
            tracing::error!(error = %msg, ops = done.len(), "write batch aborted");
            let _ = exec(conn, "ROLLBACK").await;
            for ran in done {
                (ran.deliver)(Some(StoreError::Aborted(msg.clone())));
            }
        }
    }
}

/// A SQLite database file and the WAL, shared-memory and journal files beside it.
pub(crate) fn sqlite_side_files(path: &std::path::Path) -> Vec<PathBuf> {
    let mut v = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        v.push(PathBuf::from(s));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    #[test]
    fn timestamps_have_fixed_format() {
        let t = DateTime::parse_from_rfc3339("2024-05-01T12:03:04.5+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(ts_from(t), "2024-05-01T10:03:04.500000Z");
        assert_eq!(now_ts().len(), "2024-05-01T10:03:04.500000Z".len());
    }

    #[test]
    fn urls_are_normalised() {
        match parse_url("sqlite://deprovd.db").unwrap() {
            Target::Sqlite { url } => assert_eq!(url, "sqlite://deprovd.db?mode=rwc"),
            _ => panic!(),
        }
        match parse_url("sqlite:/tmp/x.db").unwrap() {
            Target::Sqlite { url } => assert_eq!(url, "sqlite:///tmp/x.db?mode=rwc"),
            _ => panic!(),
        }
        match parse_url("sqlite:///tmp/x.db?mode=ro").unwrap() {
            Target::Sqlite { url } => assert_eq!(url, "sqlite:///tmp/x.db?mode=ro"),
            _ => panic!(),
        }
        assert!(matches!(
            parse_url("postgresql://u@h/db").unwrap(),
            Target::Postgres { .. }
        ));
        assert!(matches!(
            parse_url("sqlite::memory:"),
            Err(StoreError::Config(_))
        ));
        assert!(matches!(parse_url("mysql://x"), Err(StoreError::Config(_))));
    }

    async fn make_table(db: &Db) {
        db.write(|c| {
            Box::pin(async move {
                sqlx::query("CREATE TABLE gc_test (k BIGINT PRIMARY KEY, v TEXT NOT NULL)")
                    .execute(&mut *c)
                    .await?;
                Ok::<_, StoreError>(())
            })
        })
        .await
        .unwrap();
    }

    async fn count(db: &Db) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM gc_test")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get(0)
    }

    /// The writer's own automatic checkpoint is only a backstop far away: committed pages reach
    /// the database file because `checkpointer` copies them there beside the writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_pages_reach_the_database_file_without_the_writer() {
        let db = testing::fresh_sqlite().await;
        make_table(&db).await;
        let file = db.sqlite_file().unwrap().to_path_buf();
        tokio::time::sleep(CHECKPOINT_EVERY * 3).await;
        let before = std::fs::metadata(&file).unwrap().len();
        // About 400 KiB of rows: ~100 new pages, far below the writer's own threshold.
        for i in 0..100i64 {
            db.write(move |c| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO gc_test (k, v) VALUES ($1, $2)")
                        .bind(i)
                        .bind("x".repeat(4000))
                        .execute(&mut *c)
                        .await?;
                    Ok::<_, StoreError>(())
                })
            })
            .await
            .unwrap();
        }
        let mut grown = false;
        for _ in 0..40 {
            tokio::time::sleep(CHECKPOINT_EVERY / 4).await;
            if std::fs::metadata(&file).unwrap().len() >= before + 300 * 1024 {
                grown = true;
                break;
            }
        }
        assert!(
            grown,
            "database file stayed at {} bytes",
            std::fs::metadata(&file).unwrap().len()
        );
        assert_eq!(count(&db).await, 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_durable_and_batched() {
        for db in testing::fresh_dbs().await {
            make_table(&db).await;
            let (b0, o0) = db.write_stats();
            let mut tasks = Vec::new();
            for i in 0..100i64 {
                let db = db.clone();
                tasks.push(tokio::spawn(async move {
                    db.write(move |c| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO gc_test (k, v) VALUES ($1, $2)")
                                .bind(i)
                                .bind(format!("v{i}"))
                                .execute(&mut *c)
                                .await?;
                            Ok::<_, StoreError>(i)
                        })
                    })
                    .await
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                assert_eq!(t.await.unwrap().unwrap(), i as i64);
            }
            assert_eq!(count(&db).await, 100);
            let (b1, o1) = db.write_stats();
            assert_eq!(o1 - o0, 100);
            if db.engine == Engine::Sqlite {
                assert!(
                    b1 - b0 < 100,
                    "expected group commit, got {} batches",
                    b1 - b0
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_op_does_not_undo_its_batch() {
        for db in testing::fresh_dbs().await {
            make_table(&db).await;
            let mut tasks = Vec::new();
            for i in 0..60i64 {
                let db = db.clone();
                tasks.push(tokio::spawn(async move {
                    db.write(move |c| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO gc_test (k, v) VALUES ($1, 'x')")
                                .bind(i)
                                .execute(&mut *c)
                                .await?;
                            if i % 3 == 0 {
                                // Wrote something, then failed: must be undone alone.
                                return Err(StoreError::Config(format!("op {i} fails")));
                            }
                            if i % 3 == 1 {
                                // A constraint error mid-op (duplicate key).
                                sqlx::query("INSERT INTO gc_test (k, v) VALUES ($1, 'dup')")
                                    .bind(i)
                                    .execute(&mut *c)
                                    .await?;
                            }
                            Ok(())
                        })
                    })
                    .await
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let r = t.await.unwrap();
                match i % 3 {
                    0 => assert!(matches!(r, Err(StoreError::Config(_)))),
                    1 => match r {
                        Err(StoreError::Database(e)) => assert!(is_unique_violation(&e), "{e}"),
                        other => panic!("expected unique violation, got {other:?}"),
                    },
                    _ => assert!(r.is_ok()),
                }
            }
            let rows: Vec<i64> = sqlx::query("SELECT k FROM gc_test ORDER BY k")
                .fetch_all(&db.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let expected: Vec<i64> = (0..60).filter(|i| i % 3 == 2).collect();
            assert_eq!(rows, expected);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nested_write_fails_instead_of_deadlocking_and_panics_are_contained() {
        for db in testing::fresh_dbs().await {
            make_table(&db).await;
            let inner = db.clone();
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                db.write(move |_c| {
                    Box::pin(async move {
                        let nested = inner
                            .write(|_c| Box::pin(async { Ok::<_, StoreError>(()) }))
                            .await;
                        assert!(matches!(nested, Err(StoreError::Nested)));
                        Ok::<_, StoreError>(())
                    })
                }),
            )
            .await
            .expect("nested write must not hang");
            assert!(r.is_ok());

            if db.engine == Engine::Sqlite {
                let r = db
                    .write(|c| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO gc_test (k, v) VALUES (1, 'p')")
                                .execute(&mut *c)
                                .await?;
                            if c.ping().await.is_ok() {
                                panic!("boom");
                            }
                            Ok::<_, StoreError>(())
                        })
                    })
                    .await;
                assert!(matches!(r, Err(StoreError::Aborted(_))));
                // The writer survived and the panicking op was rolled back.
                let r = db
                    .write(|c| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO gc_test (k, v) VALUES (2, 'q')")
                                .execute(&mut *c)
                                .await?;
                            Ok::<_, StoreError>(())
                        })
                    })
                    .await;
                assert!(r.is_ok());
                assert_eq!(count(&db).await, 1);
            }
            assert!(db.ping().await);
            let (size, _idle) = db.pool_stats();
            assert!(size >= 1);
        }
    }

    #[tokio::test]
    async fn migrations_are_recorded_and_idempotent() {
        for db in testing::fresh_dbs().await {
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM schema_migrations")
                .fetch_one(&db.pool)
                .await
                .unwrap()
                .get(0);
            assert_eq!(n as usize, migrations::MIGRATIONS.len());
            let mut conn = db.pool.acquire().await.unwrap();
            migrations::run(&mut conn, db.engine).await.unwrap();
            let n2: i64 = sqlx::query("SELECT COUNT(*) FROM schema_migrations")
                .fetch_one(&db.pool)
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, n2);
        }
    }

    #[tokio::test]
    async fn sqlite_file_is_created_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let db = Db::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert!(path.exists());
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(mode.to_lowercase(), "wal");
        let sync: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(fk, 1);
        // A second process-like handle on the same file sees migrations as applied.
        let db2 = Db::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        assert!(db2.ping().await);
    }
}
