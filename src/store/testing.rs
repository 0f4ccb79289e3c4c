//! Fresh, migrated databases for tests (unit tests here and integration tests in `tests/`):
//! always a SQLite file in the temp directory, plus a new PostgreSQL database when
//! `DEPROVD_TEST_PG` names a server (e.g. `postgres://postgres@127.0.0.1:5432`). Each database
//! is removed when the last [`Db`] handle on it is dropped.
//!
//! Not for production code paths; nothing here runs unless a test calls it.

use std::path::PathBuf;

use sqlx::{AnyConnection, ConnectOptions};

use super::{Db, DbOptions};

/// What to remove when a test database's last handle goes away.
pub(crate) enum Cleanup {
    SqliteFile(PathBuf),
    PgDatabase { admin_url: String, name: String },
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::SqliteFile(path) => {
                for p in super::sqlite_side_files(path) {
                    let _ = std::fs::remove_file(p);
                }
            }
            Cleanup::PgDatabase { admin_url, name } => drop_pg_database(admin_url, name),
        }
    }
}

/// Drops a test database, closing whatever is still connected to it. Blocks: callers are
/// `Drop` impls in async code with no way to await, so it runs on a thread of its own.
fn drop_pg_database(admin_url: &str, name: &str) {
    let (admin_url, name) = (admin_url.to_string(), name.to_string());
    let t = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(mut c) = admin_connection(&admin_url).await {
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let _ = super::exec(&mut c, &sql).await;
            }
        });
    });
    let _ = t.join();
}

/// Drops the PostgreSQL database `database_url` names (integration tests, when their app
/// goes away). Does nothing for other URLs.
pub fn drop_test_database(database_url: &str) {
    if !database_url.starts_with("postgres") {
        return;
    }
    let (base, query) = pg_base(database_url);
    let Some(name) = database_url[base.len()..]
        .trim_start_matches('/')
        .split('?')
        .next()
        .filter(|n| !n.is_empty())
    else {
        return;
    };
    drop_pg_database(&format!("{base}/postgres{query}"), name);
}

async fn admin_connection(admin_url: &str) -> Result<AnyConnection, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let opts: sqlx::any::AnyConnectOptions = admin_url.parse()?;
    opts.connect().await
}

/// `postgres://u@h:5432/whatever?x` → (`postgres://u@h:5432`, `?x` or "").
fn pg_base(url: &str) -> (String, String) {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match url[scheme_end..].find('/') {
        Some(i) => &url[..scheme_end + i],
        None => url,
    };
    (base.to_string(), query)
}

/// A fresh migrated SQLite database in a temp file.
pub async fn fresh_sqlite() -> Db {
    let path = std::env::temp_dir().join(format!("deprovd_t_{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}", path.display());
    Db::open(&url, DbOptions::default(), Some(Cleanup::SqliteFile(path)))
        .await
        .expect("fresh SQLite test database")
}

/// A fresh migrated PostgreSQL database on the server at `base_url`.
pub async fn fresh_postgres(base_url: &str) -> Db {
    let (base, query) = pg_base(base_url);
    let admin_url = format!("{base}/postgres{query}");
    let name = format!("deprovd_t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = admin_connection(&admin_url)
        .await
        .expect("connect to the PostgreSQL server");
    super::exec(&mut admin, &format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test database");
    drop(admin);
    let url = format!("{base}/{name}{query}");
    let opts = DbOptions {
        max_connections: Some(5),
    };
    Db::open(&url, opts, Some(Cleanup::PgDatabase { admin_url, name }))
        .await
        .expect("fresh PostgreSQL test database")
}

/// SQLite always; PostgreSQL too when `DEPROVD_TEST_PG` is set.
pub async fn fresh_dbs() -> Vec<Db> {
    let mut v = vec![fresh_sqlite().await];
    if let Ok(base) = std::env::var("DEPROVD_TEST_PG") {
        if !base.trim().is_empty() {
            v.push(fresh_postgres(base.trim()).await);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_base_strips_database_and_keeps_query() {
        assert_eq!(
            pg_base("postgres://postgres@127.0.0.1:5432"),
            ("postgres://postgres@127.0.0.1:5432".into(), String::new())
        );
        assert_eq!(
            pg_base("postgres://p@h:5432/test?sslmode=disable"),
            ("postgres://p@h:5432".into(), "?sslmode=disable".into())
        );
    }
}
