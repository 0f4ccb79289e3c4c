//! `deprovd-bench`: seeds N users straight into a fresh database, starts the release `deprovd
//! serve` as a child process and drives it over loopback with a small load generator, one
//! phase per operation an IdP sends at volume:
//!
//! - `lookup`: `GET /scim/v2/Users?filter=userName eq "<random seeded user>"` (Okta and Entra
//!   look a user up before every write); the answer must hold exactly one result;
//! - `patch`: `PATCH /scim/v2/Users/{id}` deactivate/reactivate at random (durable writes);
//! - `create`: `POST /scim/v2/Users` with a new userName;
//! - `deprovision` (issue 3): users holding 3 factors each are deactivated through SCIM at a
//!   paced rate (500/s by default); reports the PATCH latency and, read from the factors table
//!   once converge is done, the time from each SCIM answer to its user's last factor revoked.
//!
//! The tenant runs the bench policy (`BENCH_POLICY`, set with `deprovd policy set` before any
//! user exists): deactivation revokes factors, and the blast-radius guard's thresholds are out
//! of reach, so a benchmark's mass deactivation is executed rather than quarantined.
//!
//! It prints, per phase: requests/s, p50/p99/max latency, errors (any non-2xx, a transport
//! error, or a lookup that did not find its one user), the server's peak RSS (VmHWM) and CPU
//! time, and the load generator's own CPU time (it shares the machine's cores with the server).
//!
//! Not a test and not part of CI: `scripts/bench.sh` runs the matrix and prints a table.
//! The load generator speaks HTTP/1.1 itself over keep-alive connections (`--client raw`, the
//! default: about half the CPU per request of reqwest) or through reqwest (`--client
//! reqwest`), so more of the shared CPU goes to the server being measured.
//!
//! Usage: `cargo build --release --bins && target/release/deprovd-bench --users 100000
//! --engine sqlite --seconds 10 --concurrency 32`

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{AnyConnection, ConnectOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use deprovd::store::{self, Db, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EngineArg {
    Sqlite,
    Postgres,
}

impl EngineArg {
    fn name(self) -> &'static str {
        match self {
            EngineArg::Sqlite => "sqlite",
            EngineArg::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    /// Hand-written HTTP/1.1 over keep-alive TCP connections, one per worker.
    Raw,
    /// reqwest with a connection pool.
    Reqwest,
}

#[derive(Debug, Parser)]
#[command(
    name = "deprovd-bench",
    about = "Seed users, start deprovd serve, and measure SCIM lookups, PATCHes and creates"
)]
struct Args {
    /// Users seeded into the fresh database before the server starts.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    #[arg(long, value_enum, default_value_t = EngineArg::Sqlite)]
    engine: EngineArg,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unmeasured seconds before each phase (connections open, caches warm).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Requests in flight at once (one connection each).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Comma-separated phases: lookup, patch, create, deprovision.
    #[arg(long, default_value = "lookup,patch,create")]
    phases: String,
    #[arg(long, value_enum, default_value_t = ClientKind::Raw)]
    client: ClientKind,
    /// Threads of the load generator's runtime (the server gets the rest of the machine).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// PostgreSQL server; the bench creates (and drops) its own database there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg_url: String,
    /// The `deprovd` binary to start; default: `deprovd` beside this executable.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the SQLite file and server logs go; default: a new directory under /tmp.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Append one JSON object per phase to this file (scripts/bench.sh reads it).
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Keep the work directory and the PostgreSQL database afterwards.
    #[arg(long)]
    keep: bool,
    /// Seed for the random choice of users (runs are repeatable).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// deprovision phase: users seeded apart from --users, with 3 active factors each
    /// (webauthn, sms, push), deactivated once each.
    #[arg(long, default_value_t = 10_000)]
    deprovision_users: usize,
    /// deprovision phase: SCIM deactivations sent per second (paced, not closed-loop).
    #[arg(long, default_value_t = 500)]
    deprovision_rate: u64,
    /// Make the guard's percentage bound apply from the first user (100 % of the tenant, so it
    /// still never trips): every destructive converge then needs the percentage base.
    #[arg(long)]
    percent_guard: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let args = Args::parse();
    let rt = if args.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deprovd-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("deprovd-bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// the whole run

/// A user the seed wrote: its SCIM id and userName.
struct Seeded {
    id: String,
    user_name: String,
}

async fn run(args: Args) -> Result<(), BoxError> {
    let phases: Vec<String> = args
        .phases
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for p in &phases {
        if !["lookup", "patch", "create", "deprovision"].contains(&p.as_str()) {
            return Err(format!("unknown phase {p:?} (lookup, patch, create, deprovision)").into());
        }
    }
    if args.users == 0 && phases.iter().any(|p| p == "lookup" || p == "patch") {
        return Err("lookup and patch need --users of at least 1".into());
    }
    let server_bin = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("deprovd"))
            .ok_or("cannot locate the deprovd binary; pass --server-bin")?,
    };
    if !server_bin.is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --bins)",
            server_bin.display()
        )
        .into());
    }

    let work = WorkDir::new(args.work_dir.clone(), args.keep)?;
    let engine = args.engine.name();

    // 1. a fresh database, migrated by the library itself, with tenant `default`
    let (db_url, pg_db) = match args.engine {
        EngineArg::Sqlite => (
            format!("sqlite://{}", work.path.join("bench.db").display()),
            None,
        ),
        EngineArg::Postgres => {
            let name = format!("deprovd_bench_{}_{}", std::process::id(), args.users);
            pg_admin(&args.pg_url, &format!("CREATE DATABASE \"{name}\"")).await?;
            let url = format!("{}/{}", args.pg_url.trim_end_matches('/'), name);
            (
                url,
                Some(PgDbGuard {
                    admin_url: args.pg_url.clone(),
                    name,
                    keep: args.keep,
                }),
            )
        }
    };
    // PostgreSQL refuses to start without a configured master key (replicas share it);
    // SQLite generates one beside the file.
    let master_key = match args.engine {
        EngineArg::Postgres => Some(random_master_key()),
        EngineArg::Sqlite => None,
    };

    // The bench policy, while the directory is empty (setting it converges every user).
    let policy_file = work.path.join("bench-policy.toml");
    let policy = bench_policy(args.percent_guard);
    std::fs::write(&policy_file, policy)?;
    let with_deprovision = phases.iter().any(|p| p == "deprovision");
    if let Err(e) = cli_policy_set(&server_bin, &db_url, master_key.as_deref(), &policy_file) {
        if with_deprovision {
            return Err(e);
        }
        println!("policy: {e}; going on with the tenant's default policy");
    }

    let dep_n = if with_deprovision {
        args.deprovision_users
    } else {
        0
    };
    let started = Instant::now();
    let seeded = seed(&db_url, args.users, dep_n, args.seed).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    println!(
        "seed: {} users (+{} with 3 factors each) into {engine} in {:.1}s ({:.0} users/s)",
        args.users,
        dep_n,
        seed_secs,
        (args.users + dep_n) as f64 / seed_secs.max(1e-9)
    );
    let tenant_id = seeded.tenant_id;
    let users = seeded.users;
    let dep_users = seeded.dep_users;

    // 2. a SCIM token through the CLI (the documented way)
    let token = cli_token(&server_bin, &db_url, master_key.as_deref(), "scim")?;

    // 3. the server
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = ServerGuard::start(
        &server_bin,
        &db_url,
        master_key.as_deref(),
        addr,
        &work.path,
    )?;
    wait_ready(addr, &server).await?;
    println!(
        "server: pid {} on {addr}, {} client, concurrency {}, {}s per phase",
        server.pid(),
        match args.client {
            ClientKind::Raw => "raw",
            ClientKind::Reqwest => "reqwest",
        },
        args.concurrency,
        args.seconds
    );

    let shared = Arc::new(Shared {
        addr,
        host: format!("127.0.0.1:{port}"),
        token,
        users,
        run_tag: format!("{:x}", rand::random::<u32>()),
        round: std::sync::atomic::AtomicU64::new(0),
    });

    let mut reports = Vec::new();
    for phase in &phases {
        let op = match phase.as_str() {
            "lookup" => Op::Lookup,
            "patch" => Op::Patch,
            "create" => Op::Create,
            "deprovision" => {
                let cpu_server_0 = proc_cpu_seconds(server.pid());
                let cpu_self_0 = proc_cpu_seconds(std::process::id());
                match phase_deprovision_latency(&shared, &args, &db_url, &tenant_id, &dep_users)
                    .await
                {
                    Ok(d) => {
                        let cpu_server = proc_cpu_seconds(server.pid()) - cpu_server_0;
                        let cpu_self = proc_cpu_seconds(std::process::id()) - cpu_self_0;
                        let (hwm, rss) = proc_memory_kib(server.pid());
                        if let Some(e) = &d.scim.first_error {
                            println!("  first error in deprovision: {e}");
                        }
                        let mut scim = Report::new(
                            engine, args.users, "deact", &d.scim, d.seconds, hwm, rss, cpu_server,
                            cpu_self, &args,
                        );
                        // req/s of both rows: deactivations answered per second.
                        scim.rps = d.scim.latencies_us.len() as f64 / d.seconds.max(1e-9);
                        let mut revoked = Report::new(
                            engine, args.users, "revoked", &d.revoked, d.seconds, hwm, rss,
                            cpu_server, cpu_self, &args,
                        );
                        revoked.rps = scim.rps;
                        revoked.errors = d.not_converged;
                        reports.push(scim);
                        reports.push(revoked);
                    }
                    Err(e) => println!("deprovision: failed: {e}"),
                }
                continue;
            }
            _ => continue,
        };
        if args.warmup > 0 {
            drive(
                &shared,
                op,
                &args,
                Duration::from_secs(args.warmup),
                args.seed ^ 0x5eed,
            )
            .await;
        }
        let cpu_server_0 = proc_cpu_seconds(server.pid());
        let cpu_self_0 = proc_cpu_seconds(std::process::id());
        let t0 = Instant::now();
        let outcome = drive(
            &shared,
            op,
            &args,
            Duration::from_secs(args.seconds),
            args.seed,
        )
        .await;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu_server = proc_cpu_seconds(server.pid()) - cpu_server_0;
        let cpu_self = proc_cpu_seconds(std::process::id()) - cpu_self_0;
        let (hwm, rss) = proc_memory_kib(server.pid());
        let report = Report::new(
            engine,
            args.users,
            op.name(),
            &outcome,
            elapsed,
            hwm,
            rss,
            cpu_server,
            cpu_self,
            &args,
        );
        if let Some(e) = &outcome.first_error {
            println!("  first error in {}: {e}", op.name());
        }
        reports.push(report);
    }

    println!();
    println!("{}", Report::header());
    for r in &reports {
        println!("{}", r.row());
    }
    if let Some(path) = &args.json_out {
        let mut text = String::new();
        for r in &reports {
            text.push_str(&r.json());
            text.push('\n');
        }
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(text.as_bytes())?;
    }

    server.stop();
    drop(pg_db);
    drop(work);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// seeding

/// Users per multi-row INSERT (7 parameters each: well under SQLite's and PostgreSQL's limits).
const ROWS_PER_INSERT: usize = 500;
/// Users per transaction.
const ROWS_PER_TX: usize = 10_000;

fn seed_user_name(i: usize) -> String {
    format!("user{i:07}@bench.example")
}

/// What the seed wrote.
struct SeedResult {
    tenant_id: String,
    users: Vec<Seeded>,
    /// The deprovision phase's users, each with 3 active factors.
    dep_users: Vec<Seeded>,
}

/// The deprovision phase's users: `dep0000000@bench.example`, ...
fn dep_user_name(i: usize) -> String {
    format!("dep{i:07}@bench.example")
}

/// Connects (which creates and migrates the database), makes tenant `default`, and inserts
/// `n` users, then `dep_n` users holding 3 factors each, in big transactions.
async fn seed(url: &str, n: usize, dep_n: usize, seed: u64) -> Result<SeedResult, BoxError> {
    let db = Db::connect(url).await?;
    let tenant = store::tenants::ensure_default_tenant(&db).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let now = store::now_ts();
    let mut result = SeedResult {
        tenant_id: tenant.id.clone(),
        users: Vec::with_capacity(n),
        dep_users: Vec::with_capacity(dep_n),
    };
    for (count, with_factors) in [(n, false), (dep_n, true)] {
        let mut start = 0;
        while start < count {
            let end = (start + ROWS_PER_TX).min(count);
            let mut rows = Vec::with_capacity(end - start);
            for i in start..end {
                let id = uuid::Builder::from_random_bytes(rng.gen())
                    .into_uuid()
                    .to_string();
                let user_name = if with_factors {
                    dep_user_name(i)
                } else {
                    seed_user_name(i)
                };
                rows.push(SeedRow::new(&id, &user_name, i));
                let s = Seeded { id, user_name };
                if with_factors {
                    result.dep_users.push(s);
                } else {
                    result.users.push(s);
                }
            }
            let tenant_id = tenant.id.clone();
            let now = now.clone();
            db.write(move |conn: &mut AnyConnection| {
                Box::pin(async move {
                    insert_users(conn, &tenant_id, &now, &rows).await?;
                    if with_factors {
                        insert_factors(conn, &tenant_id, &now, &rows).await?;
                    }
                    Ok::<(), StoreError>(())
                })
            })
            .await?;
            start = end;
        }
    }
    db.pool.close().await;
    Ok(result)
}

/// The factor types each deprovision user holds: records that need no secret.
const DEP_FACTORS: [&str; 3] = ["webauthn", "sms", "push"];

/// Three active factors per user in the built-in store, keyed as `[link] by = "userName"`
/// keys them (the lower-cased userName).
async fn insert_factors(
    conn: &mut AnyConnection,
    tenant_id: &str,
    now: &str,
    rows: &[SeedRow],
) -> Result<(), StoreError> {
    let per_insert = ROWS_PER_INSERT / DEP_FACTORS.len();
    for chunk in rows.chunks(per_insert.max(1)) {
        let n = chunk.len() * DEP_FACTORS.len();
        let sql = factor_insert_sql(n);
        let mut q = sqlx::query(&sql).bind(tenant_id).bind(now);
        for r in chunk {
            for (k, ty) in DEP_FACTORS.iter().enumerate() {
                q = q
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(r.user_name.to_lowercase())
                    .bind(*ty)
                    .bind(format!("bench {ty}"))
                    .bind(format!("cred-{}-{k}", r.id))
                    .bind(format!("pk-{}-{k}", r.id));
            }
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A multi-row INSERT for `rows` factors: `$1` tenant, `$2` timestamp, six per row.
fn factor_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO factors (tenant_id, id, user_key, type, label, status, secret_enc, \
         otp_counter, credential_id, public_key, created, last_used, status_changed) VALUES ",
    );
    for k in 0..rows {
        let b = 3 + k * 6;
        if k > 0 {
            sql.push(',');
        }
        let _ = write!(
            sql,
            "($1, ${}, ${}, ${}, ${}, 'active', NULL, NULL, ${}, ${}, $2, NULL, $2)",
            b,
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5
        );
    }
    sql
}

struct SeedRow {
    id: String,
    user_name: String,
    external_id: String,
    display_name: String,
    resource: String,
}

impl SeedRow {
    fn new(id: &str, user_name: &str, i: usize) -> SeedRow {
        let given = format!("Given{i}");
        let family = format!("Family{}", i % 997);
        let display_name = format!("{given} {family}");
        let external_id = format!("ext-{i:07}");
        // As the directory stores it: without id, meta, groups and password (those live in
        // columns or are computed).
        let resource = serde_json::json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "externalId": external_id,
            "userName": user_name,
            "name": {"givenName": given, "familyName": family, "formatted": display_name},
            "displayName": display_name,
            "emails": [{"value": user_name, "type": "work", "primary": true}],
            "active": true,
        })
        .to_string();
        SeedRow {
            id: id.to_string(),
            user_name: user_name.to_string(),
            external_id,
            display_name,
            resource,
        }
    }
}

async fn insert_users(
    conn: &mut AnyConnection,
    tenant_id: &str,
    now: &str,
    rows: &[SeedRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = insert_sql(chunk.len());
        let mut q = sqlx::query(&sql).bind(tenant_id).bind(now);
        for r in chunk {
            q = q
                .bind(&r.id)
                .bind(&r.user_name)
                .bind(r.user_name.to_lowercase())
                .bind(&r.external_id)
                .bind(&r.display_name)
                .bind(r.display_name.to_lowercase())
                .bind(&r.resource);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A multi-row INSERT for `rows` users: `$1` tenant and `$2` timestamp are shared, then seven
/// parameters per row, numbered densely (PostgreSQL refuses gaps).
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO users (tenant_id, id, user_name, user_name_ci, external_id, \
         display_name, display_name_ci, active, resource, version, created, last_modified) \
         VALUES ",
    );
    for k in 0..rows {
        let b = 3 + k * 7;
        if k > 0 {
            sql.push(',');
        }
        let _ = write!(
            sql,
            "($1, ${}, ${}, ${}, ${}, ${}, ${}, 1, ${}, 1, $2, $2)",
            b,
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6
        );
    }
    sql
}

async fn pg_admin(admin_url: &str, sql: &str) -> Result<(), BoxError> {
    sqlx::any::install_default_drivers();
    let url = format!("{}/postgres", admin_url.trim_end_matches('/'));
    let opts: sqlx::any::AnyConnectOptions = url.parse()?;
    let mut conn = opts.connect().await?;
    sqlx::query(sql).execute(&mut conn).await?;
    Ok(())
}

struct PgDbGuard {
    admin_url: String,
    name: String,
    keep: bool,
}

impl Drop for PgDbGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept PostgreSQL database {}", self.name);
            return;
        }
        // Runs inside the runtime: use the psql client rather than blocking on sqlx here.
        let url = format!("{}/postgres", self.admin_url.trim_end_matches('/'));
        let _ = Command::new("psql")
            .arg(url)
            .args(["-q", "-X", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn random_master_key() -> String {
    use base64::Engine as _;
    let key: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(key)
}

// ---------------------------------------------------------------------------------------------
// the server process

fn server_env(cmd: &mut Command, db_url: &str, master_key: Option<&str>) {
    cmd.env("DEPROVD_DATABASE_URL", db_url)
        .env("DEPROVD_LOG", "json")
        .env_remove("DEPROVD_CONFIG");
    match master_key {
        Some(k) => cmd.env("DEPROVD_MASTER_KEY", k),
        None => cmd.env_remove("DEPROVD_MASTER_KEY"),
    };
}

/// `deprovd token create --tenant default --scope SCOPE --name ...`: the token alone on stdout.
fn cli_token(
    bin: &Path,
    db_url: &str,
    master_key: Option<&str>,
    scope: &str,
) -> Result<String, BoxError> {
    let mut cmd = Command::new(bin);
    cmd.args(["token", "create", "--tenant", "default", "--scope", scope])
        .arg("--name")
        .arg(format!("bench-{scope}-{}", std::process::id()))
        .stdin(Stdio::null());
    server_env(&mut cmd, db_url, master_key);
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "deprovd token create failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !token.starts_with("dpv_") || token.contains(char::is_whitespace) {
        return Err(format!("deprovd token create printed {token:?}, not one token").into());
    }
    Ok(token)
}

/// The tenant policy for benchmarks: deactivation revokes factors and ends sessions, and the
/// guard's bounds are out of reach (a benchmark deactivates thousands of users on purpose).
const BENCH_POLICY: &str = r#"# deprovd-bench: deactivation revokes at once; the guard never trips.
mode = "enforce"

[link]
by = "userName"

[deactivated]
factors = "revoke"
sessions = "revoke"

[deleted]
factors = "revoke"
sessions = "revoke"

[guard]
max_destructive_per_15m = 1000000000
max_destructive_percent_per_15m = 100
percent_applies_above = 1000000000
"#;

/// [`BENCH_POLICY`], with the percentage bound applying from the first user when asked.
fn bench_policy(percent_guard: bool) -> String {
    if percent_guard {
        BENCH_POLICY.replace(
            "percent_applies_above = 1000000000",
            "percent_applies_above = 0",
        )
    } else {
        BENCH_POLICY.to_string()
    }
}

/// `deprovd policy set FILE --tenant default`.
fn cli_policy_set(
    bin: &Path,
    db_url: &str,
    master_key: Option<&str>,
    file: &Path,
) -> Result<(), BoxError> {
    let mut cmd = Command::new(bin);
    cmd.args(["policy", "set"])
        .arg(file)
        .args(["--tenant", "default"])
        .stdin(Stdio::null());
    server_env(&mut cmd, db_url, master_key);
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "deprovd policy set failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

struct ServerGuard {
    child: Option<Child>,
    log: PathBuf,
}

impl ServerGuard {
    fn start(
        bin: &Path,
        db_url: &str,
        master_key: Option<&str>,
        addr: SocketAddr,
        dir: &Path,
    ) -> Result<ServerGuard, BoxError> {
        let log = dir.join("server.log");
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("DEPROVD_LISTEN", addr.to_string())
            .env("DEPROVD_PUBLIC_URL", format!("http://{addr}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        server_env(&mut cmd, db_url, master_key);
        let child = cmd.spawn()?;
        Ok(ServerGuard {
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 10 s.
    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn wait_ready(addr: SocketAddr, server: &ServerGuard) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut server_exited = false;
    while Instant::now() < deadline {
        let mut conn = RawConn::new(addr);
        if let Ok(resp) = conn.send(req.as_bytes()).await {
            if resp.status == 200 {
                return Ok(());
            }
        }
        // The child is not reaped until the guard stops it: /proc/PID stays while it is a
        // zombie, so read its state instead of its existence.
        if matches!(proc_state(server.pid()), None | Some('Z')) {
            server_exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tail = std::fs::read_to_string(&server.log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "server {} ready within 60s; log {}:\n{}",
        if server_exited {
            "exited before it was"
        } else {
            "not"
        },
        server.log.display(),
        tail.join("\n")
    )
    .into())
}

fn free_port() -> Result<u16, BoxError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The state letter of a process (R, S, Z, ...), or None when it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.trim_start().chars().next()
}

/// (user + system) CPU seconds of a process, from /proc/PID/stat (clock ticks of 1/100 s).
fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 1..)) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the whole line, so utime (14) and stime (15) are at 11, 12.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// (VmHWM, VmRSS) in KiB from /proc/PID/status: the peak and current resident set.
fn proc_memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(given: Option<PathBuf>, keep: bool) -> Result<WorkDir, BoxError> {
        match given {
            Some(p) => {
                std::fs::create_dir_all(&p)?;
                Ok(WorkDir {
                    path: p,
                    remove: false,
                })
            }
            None => {
                let p = std::env::temp_dir().join(format!(
                    "deprovd-bench-{}-{:x}",
                    std::process::id(),
                    rand::random::<u32>()
                ));
                std::fs::create_dir_all(&p)?;
                Ok(WorkDir {
                    path: p,
                    remove: !keep,
                })
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            eprintln!("kept {}", self.path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the load generator

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lookup,
    Patch,
    Create,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Patch => "patch",
            Op::Create => "create",
        }
    }
}

struct Shared {
    addr: SocketAddr,
    host: String,
    token: String,
    users: Vec<Seeded>,
    /// Makes created userNames unique across runs on the same database...
    run_tag: String,
    /// ...and across the rounds (warm-up, measured) of one run.
    round: std::sync::atomic::AtomicU64,
}

const PATCH_FALSE: &str = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","path":"active","value":false}]}"#;
const PATCH_TRUE: &str = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","path":"active","value":true}]}"#;

/// One request to send: method, path and query, body.
struct Req {
    method: &'static str,
    path: String,
    body: Option<String>,
}

fn next_request(
    shared: &Shared,
    op: Op,
    rng: &mut StdRng,
    round: u64,
    worker: usize,
    n: u64,
) -> Req {
    match op {
        Op::Lookup => {
            let u = &shared.users[rng.gen_range(0..shared.users.len())];
            let filter = format!("userName eq \"{}\"", u.user_name);
            Req {
                method: "GET",
                path: format!("/scim/v2/Users?filter={}", percent_encode(&filter)),
                body: None,
            }
        }
        Op::Patch => {
            let u = &shared.users[rng.gen_range(0..shared.users.len())];
            Req {
                method: "PATCH",
                path: format!("/scim/v2/Users/{}", u.id),
                body: Some(
                    if rng.gen_bool(0.5) {
                        PATCH_FALSE
                    } else {
                        PATCH_TRUE
                    }
                    .to_string(),
                ),
            }
        }
        Op::Create => {
            let tag = format!("{}-{round}-{worker}-{n}", shared.run_tag);
            let user_name = format!("new-{tag}@bench.example");
            let body = serde_json::json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": user_name,
                "externalId": format!("new-{tag}"),
                "name": {"givenName": "New", "familyName": format!("Hire{n}")},
                "emails": [{"value": user_name, "type": "work", "primary": true}],
                "active": true,
            })
            .to_string();
            Req {
                method: "POST",
                path: "/scim/v2/Users".to_string(),
                body: Some(body),
            }
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Whether an answer is the success this operation expects.
fn judge(op: Op, status: u16, body: &[u8]) -> Result<(), String> {
    let want_ok = match op {
        Op::Lookup | Op::Patch => status == 200,
        Op::Create => status == 201,
    };
    if !(200..300).contains(&status) {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("HTTP {status}: {snippet}"));
    }
    if !want_ok {
        return Err(format!("HTTP {status} where {} expects 200/201", op.name()));
    }
    if op == Op::Lookup && total_results(body) != Some(1) {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("lookup did not find exactly one user: {snippet}"));
    }
    Ok(())
}

/// `totalResults` of a ListResponse, read without parsing the whole body.
fn total_results(body: &[u8]) -> Option<u64> {
    let key = b"\"totalResults\"";
    let pos = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = body.get(pos..)?;
    let rest = &rest[rest.iter().position(|b| !b" \t\r\n:".contains(b))?..];
    let end = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[derive(Default)]
struct Outcome {
    /// Latency of every finished request, in microseconds.
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

async fn drive(shared: &Arc<Shared>, op: Op, args: &Args, dur: Duration, seed: u64) -> Outcome {
    let deadline = Instant::now() + dur;
    let round = shared
        .round
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let reqwest_client = match args.client {
        ClientKind::Reqwest => reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(args.concurrency)
            .timeout(Duration::from_secs(60))
            .build()
            .ok(),
        ClientKind::Raw => None,
    };
    let mut tasks = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let shared = shared.clone();
        let client = reqwest_client.clone();
        let rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(w as u64));
        tasks.push(tokio::spawn(worker(
            shared, op, round, w, rng, deadline, client,
        )));
    }
    let mut total = Outcome::default();
    for t in tasks {
        match t.await {
            Ok(o) => {
                total.latencies_us.extend(o.latencies_us);
                total.errors += o.errors;
                if total.first_error.is_none() {
                    total.first_error = o.first_error;
                }
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert(format!("worker failed: {e}"));
            }
        }
    }
    total
}

async fn worker(
    shared: Arc<Shared>,
    op: Op,
    round: u64,
    w: usize,
    mut rng: StdRng,
    deadline: Instant,
    client: Option<reqwest::Client>,
) -> Outcome {
    let mut out = Outcome {
        latencies_us: Vec::with_capacity(16 * 1024),
        ..Outcome::default()
    };
    let mut conn = RawConn::new(shared.addr);
    let mut head = String::with_capacity(512);
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let req = next_request(&shared, op, &mut rng, round, w, n);
        n += 1;
        let t0 = Instant::now();
        let result = match &client {
            None => {
                head.clear();
                let _ = write!(
                    head,
                    "{} {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
                     Accept: application/scim+json\r\n",
                    req.method, req.path, shared.host, shared.token
                );
                match &req.body {
                    Some(b) => {
                        let _ = write!(
                            head,
                            "Content-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n{b}",
                            b.len()
                        );
                    }
                    None => head.push_str("\r\n"),
                }
                let bytes = head.as_bytes();
                conn.send(bytes).await.map(|r| (r.status, r.body))
            }
            Some(c) => reqwest_send(c, &shared, &req).await,
        };
        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
        out.latencies_us.push(us);
        let verdict = match result {
            Ok((status, body)) => judge(op, status, &body),
            Err(e) => Err(e),
        };
        if let Err(e) = verdict {
            out.errors += 1;
            out.first_error.get_or_insert(e);
        }
    }
    out
}

async fn reqwest_send(
    c: &reqwest::Client,
    shared: &Shared,
    req: &Req,
) -> Result<(u16, Vec<u8>), String> {
    let url = format!("http://{}{}", shared.host, req.path);
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut rb = c
        .request(method, url)
        .bearer_auth(&shared.token)
        .header("Accept", "application/scim+json");
    if let Some(b) = &req.body {
        rb = rb
            .header("Content-Type", "application/scim+json")
            .body(b.clone());
    }
    let resp = rb.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, body.to_vec()))
}

// ---------------------------------------------------------------------------------------------
// a minimal HTTP/1.1 client: one keep-alive connection, Content-Length or chunked bodies

struct RawResp {
    status: u16,
    body: Vec<u8>,
}

/// Why a request failed; `stale` = the reused connection was closed before any answer came
/// (the server dropped an idle keep-alive connection), so sending again is safe.
struct RawErr {
    stale: bool,
    msg: String,
}

impl RawErr {
    fn fatal(msg: impl Into<String>) -> RawErr {
        RawErr {
            stale: false,
            msg: msg.into(),
        }
    }
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 32 * 1024 * 1024;

struct RawConn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl RawConn {
    fn new(addr: SocketAddr) -> RawConn {
        RawConn {
            addr,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn send(&mut self, req: &[u8]) -> Result<RawResp, String> {
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            if self.stream.is_none() {
                let s = TcpStream::connect(self.addr)
                    .await
                    .map_err(|e| format!("connect {}: {e}", self.addr))?;
                let _ = s.set_nodelay(true);
                self.stream = Some(s);
                self.buf.clear();
            }
            match self.exchange(req).await {
                Ok((resp, close)) => {
                    if close {
                        self.stream = None;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    self.stream = None;
                    if !(reused && e.stale) || attempt == 1 {
                        return Err(e.msg);
                    }
                }
            }
        }
        Err("unreachable: retry loop ended".into())
    }

    async fn read_more(&mut self) -> Result<usize, RawErr> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(RawErr::fatal("no connection"));
        };
        self.buf.reserve(16 * 1024);
        stream.read_buf(&mut self.buf).await.map_err(|e| RawErr {
            stale: matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            msg: format!("read: {e}"),
        })
    }

    /// Writes the request and reads one response. Returns it and whether the connection must
    /// be closed afterwards.
    async fn exchange(&mut self, req: &[u8]) -> Result<(RawResp, bool), RawErr> {
        {
            let Some(stream) = self.stream.as_mut() else {
                return Err(RawErr::fatal("no connection"));
            };
            stream.write_all(req).await.map_err(|e| RawErr {
                stale: true,
                msg: format!("write: {e}"),
            })?;
        }
        // head
        let mut got_any = !self.buf.is_empty();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(RawErr::fatal("response head too large"));
            }
            let n = self.read_more().await.map_err(|mut e| {
                e.stale = e.stale && !got_any;
                e
            })?;
            if n == 0 {
                return Err(RawErr {
                    stale: !got_any,
                    msg: "connection closed before a complete response head".into(),
                });
            }
            got_any = true;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| RawErr::fatal("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RawErr::fatal(format!("bad status line {status_line:?}")))?;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut close = status_line.starts_with("HTTP/1.0");
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let no_body = status == 204 || status == 304 || (100..200).contains(&status);
        let body = if no_body {
            self.buf.drain(..head_end);
            Vec::new()
        } else if chunked {
            self.read_chunked(head_end).await?
        } else if let Some(len) = content_length {
            if len > MAX_BODY {
                return Err(RawErr::fatal("response body too large"));
            }
            while self.buf.len() < head_end + len {
                if self.read_more().await? == 0 {
                    return Err(RawErr::fatal("connection closed inside the body"));
                }
            }
            let body = self.buf[head_end..head_end + len].to_vec();
            self.buf.drain(..head_end + len);
            body
        } else {
            // No length: the body runs to the end of the connection.
            close = true;
            while self.read_more().await? > 0 {
                if self.buf.len() > head_end + MAX_BODY {
                    return Err(RawErr::fatal("response body too large"));
                }
            }
            let body = self.buf[head_end..].to_vec();
            self.buf.clear();
            body
        };
        Ok((RawResp { status, body }, close))
    }

    async fn read_chunked(&mut self, start: usize) -> Result<Vec<u8>, RawErr> {
        let mut body = Vec::new();
        let mut pos = start;
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.get(pos..).and_then(|b| find(b, b"\r\n")) {
                    break pos + p;
                }
                if self.read_more().await? == 0 {
                    return Err(RawErr::fatal("connection closed inside a chunk size"));
                }
            };
            let line = std::str::from_utf8(&self.buf[pos..line_end])
                .map_err(|_| RawErr::fatal("bad chunk size"))?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| RawErr::fatal(format!("bad chunk size {size_text:?}")))?;
            pos = line_end + 2;
            if size == 0 {
                // No trailers expected: the final CRLF.
                while self.buf.len() < pos + 2 {
                    if self.read_more().await? == 0 {
                        return Err(RawErr::fatal("connection closed after the last chunk"));
                    }
                }
                self.buf.drain(..pos + 2);
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(RawErr::fatal("response body too large"));
            }
            while self.buf.len() < pos + size + 2 {
                if self.read_more().await? == 0 {
                    return Err(RawErr::fatal("connection closed inside a chunk"));
                }
            }
            body.extend_from_slice(&self.buf[pos..pos + size]);
            pos += size + 2;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// issue 3: deprovisioning latency

/// What the deprovision phase measured.
struct Deprovision {
    /// SCIM PATCH latencies (and errors).
    scim: Outcome,
    /// Per user: from the SCIM answer to the last of its factors revoked.
    revoked: Outcome,
    /// Sending time: deactivations answered / seconds is the achieved rate.
    seconds: f64,
    /// Users whose factors were not all revoked by the deadline.
    not_converged: u64,
}

/// Deactivates every `dep` user once through SCIM PATCH, paced at `--deprovision-rate`, then
/// waits until the factors table shows all their factors revoked (or a deadline), and measures
/// for each user the time from its SCIM answer to its last factor's `status_changed`. Both
/// clocks are this machine's.
async fn phase_deprovision_latency(
    shared: &Arc<Shared>,
    args: &Args,
    db_url: &str,
    tenant_id: &str,
    dep: &[Seeded],
) -> Result<Deprovision, BoxError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if dep.is_empty() {
        return Err("no deprovision users seeded (--deprovision-users 0)".into());
    }
    let rate = args.deprovision_rate.max(1) as f64;
    let targets: Arc<Vec<(String, String)>> = Arc::new(
        dep.iter()
            .map(|u| (u.id.clone(), u.user_name.to_lowercase()))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let shared = shared.clone();
        let targets = targets.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = RawConn::new(shared.addr);
            let mut out = Outcome::default();
            let mut answered: Vec<(usize, chrono::DateTime<chrono::Utc>)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, _)) = targets.get(i) else {
                    break;
                };
                let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let req = format!(
                    "PATCH /scim/v2/Users/{id} HTTP/1.1\r\nHost: {}\r\n\
                     Authorization: Bearer {}\r\nAccept: application/scim+json\r\n\
                     Content-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n{}",
                    shared.host,
                    shared.token,
                    PATCH_FALSE.len(),
                    PATCH_FALSE
                );
                let t = Instant::now();
                let r = conn.send(req.as_bytes()).await;
                let now = chrono::Utc::now();
                out.latencies_us
                    .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                match r.map(|r| judge(Op::Patch, r.status, &r.body)) {
                    Ok(Ok(())) => answered.push((i, now)),
                    Ok(Err(e)) | Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
            (out, answered)
        }));
    }
    let mut scim = Outcome::default();
    let mut answered_at: Vec<Option<chrono::DateTime<chrono::Utc>>> = vec![None; targets.len()];
    for t in tasks {
        let (o, answered) = t.await?;
        scim.latencies_us.extend(o.latencies_us);
        scim.errors += o.errors;
        if scim.first_error.is_none() {
            scim.first_error = o.first_error;
        }
        for (i, at) in answered {
            if let Some(slot) = answered_at.get_mut(i) {
                *slot = Some(at);
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let answered = answered_at.iter().filter(|a| a.is_some()).count();
    println!(
        "deprovision: {answered} of {} deactivations answered in {seconds:.1}s \
         ({:.0}/s, target {rate:.0}/s); waiting for converge",
        targets.len(),
        answered as f64 / seconds.max(1e-9)
    );

    // Wait until no factor of these users is left unrevoked, or the deadline.
    sqlx::any::install_default_drivers();
    let opts: sqlx::any::AnyConnectOptions = db_url.parse()?;
    let mut conn = opts.connect().await?;
    let deadline =
        Instant::now() + Duration::from_secs_f64((targets.len() as f64 / rate * 3.0).max(60.0));
    let pending_sql = "SELECT COUNT(*) FROM factors WHERE tenant_id = $1 \
                       AND user_key LIKE 'dep%' AND status <> 'revoked'";
    loop {
        let pending: i64 = sqlx::query_scalar(pending_sql)
            .bind(tenant_id)
            .fetch_one(&mut conn)
            .await?;
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            println!("deprovision: {pending} factors still not revoked at the deadline");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT user_key, MAX(status_changed) FROM factors WHERE tenant_id = $1 \
         AND user_key LIKE 'dep%' AND status = 'revoked' GROUP BY user_key \
         HAVING COUNT(*) = $2",
    )
    .bind(tenant_id)
    .bind(DEP_FACTORS.len() as i64)
    .fetch_all(&mut conn)
    .await?;
    let done: std::collections::HashMap<String, String> = rows.into_iter().collect();
    let mut revoked = Outcome::default();
    let mut not_converged = 0;
    for (i, (_, key)) in targets.iter().enumerate() {
        let Some(Some(answer)) = answered_at.get(i) else {
            continue;
        };
        match done.get(key).and_then(|t| parse_ts(t)) {
            Some(last) => {
                // Converge may finish before the client has read the answer: that is 0.
                let us = (last - *answer).num_microseconds().unwrap_or(0).max(0);
                revoked.latencies_us.push(us.min(u32::MAX as i64) as u32);
            }
            None => not_converged += 1,
        }
    }
    if not_converged > 0 {
        revoked.first_error = Some(format!("{not_converged} users not fully revoked"));
    }
    // Whether converge kept up with the rate: a backlog shows as latency growing with time.
    let lat = &revoked.latencies_us;
    if lat.len() >= 20 {
        let tenth = lat.len() / 10;
        let median_ms = |xs: &[u32]| {
            let mut v = xs.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1000.0
        };
        println!(
            "deprovision: answer -> last factor revoked, median of the first tenth sent {:.0} ms, \
             of the last tenth {:.0} ms (growing = converge falls behind the rate)",
            median_ms(&lat[..tenth]),
            median_ms(&lat[lat.len() - tenth..])
        );
    }
    Ok(Deprovision {
        scim,
        revoked,
        seconds,
        not_converged,
    })
}

/// A timestamp in the tables' format (`2024-05-01T12:00:00.000000Z`).
fn parse_ts(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

// ---------------------------------------------------------------------------------------------
// reporting

struct Report {
    engine: String,
    users: usize,
    op: String,
    requests: usize,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    server_hwm_mib: f64,
    server_rss_mib: f64,
    server_cpu_s: f64,
    client_cpu_s: f64,
    concurrency: usize,
    client: &'static str,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn new(
        engine: &str,
        users: usize,
        op: &str,
        o: &Outcome,
        seconds: f64,
        hwm_kib: u64,
        rss_kib: u64,
        server_cpu_s: f64,
        client_cpu_s: f64,
        args: &Args,
    ) -> Report {
        let mut lat = o.latencies_us.clone();
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let idx = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[idx] as f64 / 1000.0
        };
        Report {
            engine: engine.to_string(),
            users,
            op: op.to_string(),
            requests: lat.len(),
            seconds,
            rps: lat.len() as f64 / seconds.max(1e-9),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: lat.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
            errors: o.errors,
            server_hwm_mib: hwm_kib as f64 / 1024.0,
            server_rss_mib: rss_kib as f64 / 1024.0,
            server_cpu_s,
            client_cpu_s,
            concurrency: args.concurrency,
            client: match args.client {
                ClientKind::Raw => "raw",
                ClientKind::Reqwest => "reqwest",
            },
        }
    }

    fn header() -> String {
        format!(
            "{:<9} {:>8} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9}",
            "engine",
            "users",
            "op",
            "requests",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "errors",
            "peak MiB",
            "srv cpu s",
            "gen cpu s"
        )
    }

    fn row(&self) -> String {
        format!(
            "{:<9} {:>8} {:<7} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.1} {:>7} {:>9.1} {:>9.1} {:>9.1}",
            self.engine,
            self.users,
            self.op,
            self.requests,
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.errors,
            self.server_hwm_mib,
            self.server_cpu_s,
            self.client_cpu_s
        )
    }

    fn json(&self) -> String {
        serde_json::json!({
            "engine": self.engine,
            "users": self.users,
            "op": self.op,
            "requests": self.requests,
            "seconds": self.seconds,
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "errors": self.errors,
            "server_peak_rss_mib": self.server_hwm_mib,
            "server_rss_mib": self.server_rss_mib,
            "server_cpu_s": self.server_cpu_s,
            "client_cpu_s": self.client_cpu_s,
            "concurrency": self.concurrency,
            "client": self.client,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_every_bound_value_once() {
        // 2 shared + 7 per row: the highest placeholder is 2 + 7 * rows, none above it.
        let sql = insert_sql(3);
        assert!(sql.starts_with("INSERT INTO users"));
        assert!(sql.contains("($1, $3, $4, $5, $6, $7, $8, 1, $9, 1, $2, $2)"));
        assert!(sql.contains("$23, 1, $2, $2)"));
        assert!(!sql.contains("$24"));
        assert_eq!(sql.matches("($1,").count(), 3);
    }

    #[test]
    fn factor_insert_sql_numbers_every_bound_value_once() {
        let sql = factor_insert_sql(2);
        assert!(sql.contains("($1, $3, $4, $5, $6, 'active', NULL, NULL, $7, $8, $2, NULL, $2)"));
        assert!(sql.contains("$14, $2, NULL, $2)"));
        assert!(!sql.contains("$15"));
    }

    #[test]
    fn table_timestamps_parse() {
        let t = parse_ts("2024-05-01T12:00:00.123456Z").unwrap();
        assert_eq!(t.timestamp_subsec_micros(), 123_456);
    }

    #[test]
    fn total_results_is_read_with_or_without_spaces() {
        assert_eq!(total_results(br#"{"totalResults":1,"x":2}"#), Some(1));
        assert_eq!(total_results(br#"{"totalResults" : 12 }"#), Some(12));
        assert_eq!(total_results(br#"{"Resources":[]}"#), None);
    }

    #[test]
    fn judge_counts_wrong_answers_as_errors() {
        assert!(judge(Op::Lookup, 200, br#"{"totalResults":1}"#).is_ok());
        assert!(judge(Op::Lookup, 200, br#"{"totalResults":0}"#).is_err());
        assert!(judge(Op::Patch, 204, b"").is_err());
        assert!(judge(Op::Create, 201, b"{}").is_ok());
        assert!(judge(Op::Create, 409, b"{}").is_err());
    }

    #[test]
    fn both_bench_policies_parse_and_differ_in_the_percentage_floor() {
        let plain = deprovd::policy::parse::parse_policy(&bench_policy(false)).unwrap();
        let percent = deprovd::policy::parse::parse_policy(&bench_policy(true)).unwrap();
        assert_eq!(plain.guard.percent_applies_above, 1_000_000_000);
        assert_eq!(percent.guard.percent_applies_above, 0);
    }

    #[test]
    fn filter_is_percent_encoded() {
        assert_eq!(
            percent_encode("userName eq \"a@b\""),
            "userName%20eq%20%22a%40b%22"
        );
    }

    #[tokio::test]
    async fn raw_client_reads_content_length_and_chunked_answers_on_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            // first request: Content-Length
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .unwrap();
            // second: chunked
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .await
                .unwrap();
            // third: 204, then close
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
        });
        let mut c = RawConn::new(addr);
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let r = c.send(req).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = c.send(req).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"abcde"[..]));
        let r = c.send(req).await.unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert!(c.stream.is_none());
    }
}
