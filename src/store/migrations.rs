//! The embedded schema migrations and their runner. Each entry names one numbered file that
//! exists for both engines under `migrations/sqlite/` and `migrations/postgres/`; pending ones
//! are applied in order, each in its own transaction, and recorded in `schema_migrations`.
//!
//! Several processes may start at once (replicas on PostgreSQL, CLI and server on SQLite): on
//! PostgreSQL an advisory lock serialises them; on SQLite `BEGIN IMMEDIATE` does, and the
//! applied set is re-read inside the lock.
//!
//! To add a migration: append an entry to [`MIGRATIONS`] (this list is shared, append only).

use std::collections::HashSet;

use sqlx::{AnyConnection, Row};

use super::{exec, now_ts, Engine, StoreError};

/// (version, name, SQLite SQL, PostgreSQL SQL), in version order.
pub const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "directory",
        include_str!("../../migrations/sqlite/0001_directory.sql"),
        include_str!("../../migrations/postgres/0001_directory.sql"),
    ),
    (
        2,
        "factors",
        include_str!("../../migrations/sqlite/0002_factors.sql"),
        include_str!("../../migrations/postgres/0002_factors.sql"),
    ),
    (
        3,
        "policy",
        include_str!("../../migrations/sqlite/0003_policy.sql"),
        include_str!("../../migrations/postgres/0003_policy.sql"),
    ),
    (
        4,
        "audit",
        include_str!("../../migrations/sqlite/0004_audit.sql"),
        include_str!("../../migrations/postgres/0004_audit.sql"),
    ),
    (
        5,
        "jobs",
        include_str!("../../migrations/sqlite/0005_jobs.sql"),
        include_str!("../../migrations/postgres/0005_jobs.sql"),
    ),
    (
        6,
        "offboarding",
        include_str!("../../migrations/sqlite/0006_offboarding.sql"),
        include_str!("../../migrations/postgres/0006_offboarding.sql"),
    ),
    (
        7,
        "engine",
        include_str!("../../migrations/sqlite/0007_engine.sql"),
        include_str!("../../migrations/postgres/0007_engine.sql"),
    ),
    (
        8,
        "guard_count_index",
        include_str!("../../migrations/sqlite/0008_guard_count_index.sql"),
        include_str!("../../migrations/postgres/0008_guard_count_index.sql"),
    ),
    (
        10,
        "webhooks",
        include_str!("../../migrations/sqlite/0010_webhooks.sql"),
        include_str!("../../migrations/postgres/0010_webhooks.sql"),
    ),
    (
        11,
        "member_index",
        include_str!("../../migrations/sqlite/0011_member_index.sql"),
        include_str!("../../migrations/postgres/0011_member_index.sql"),
    ),
    (
        12,
        "audit_pending",
        include_str!("../../migrations/sqlite/0012_audit_pending.sql"),
        include_str!("../../migrations/postgres/0012_audit_pending.sql"),
    ),
    (
        13,
        "guard_tally",
        include_str!("../../migrations/sqlite/0013_guard_tally.sql"),
        include_str!("../../migrations/postgres/0013_guard_tally.sql"),
    ),
    (
        14,
        "guard_base",
        include_str!("../../migrations/sqlite/0014_guard_base.sql"),
        include_str!("../../migrations/postgres/0014_guard_base.sql"),
    ),
];

/// Key of the PostgreSQL advisory lock held while migrating ("deprovd" in ASCII).
const PG_MIGRATION_LOCK: i64 = 0x0064_6570_726f_7664;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied TEXT NOT NULL)";

/// Apply every pending migration.
pub async fn run(conn: &mut AnyConnection, engine: Engine) -> Result<(), StoreError> {
    match engine {
        Engine::Postgres => {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
            let res = run_locked(conn, engine).await;
            let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut *conn)
                .await;
            res?;
            unlock?;
            Ok(())
        }
        Engine::Sqlite => run_locked(conn, engine).await,
    }
}

async fn run_locked(conn: &mut AnyConnection, engine: Engine) -> Result<(), StoreError> {
    check_order()?;
    exec(conn, CREATE_TABLE).await?;
    for &(version, name, sqlite_sql, pg_sql) in MIGRATIONS {
        let begin = match engine {
            Engine::Sqlite => "BEGIN IMMEDIATE",
            Engine::Postgres => "BEGIN",
        };
        exec(conn, begin).await?;
        let res = apply_one(conn, engine, version, name, sqlite_sql, pg_sql).await;
        match res {
            Ok(()) => exec(conn, "COMMIT").await?,
            Err(e) => {
                let _ = exec(conn, "ROLLBACK").await;
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn apply_one(
    conn: &mut AnyConnection,
    engine: Engine,
    version: i64,
    name: &str,
    sqlite_sql: &str,
    pg_sql: &str,
) -> Result<(), StoreError> {
    // Re-read inside the transaction: another process may have applied it meanwhile.
    let applied: HashSet<i64> = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
    if applied.contains(&version) {
        return Ok(());
    }
    let sql = match engine {
        Engine::Sqlite => sqlite_sql,
        Engine::Postgres => pg_sql,
    };
    exec(conn, sql)
        .await
        .map_err(|e| StoreError::Config(format!("migration {version:04}_{name} failed: {e}")))?;
    sqlx::query("INSERT INTO schema_migrations (version, name, applied) VALUES ($1, $2, $3)")
        .bind(version)
        .bind(name)
        .bind(now_ts())
        .execute(&mut *conn)
        .await?;
    tracing::info!(version, name, "applied migration");
    Ok(())
}

fn check_order() -> Result<(), StoreError> {
    let ordered = MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0);
    if ordered {
        Ok(())
    } else {
        Err(StoreError::Config(
            "migrations list is not in strictly increasing version order".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_list_is_ordered_and_named_alike() {
        assert!(check_order().is_ok());
        for (v, name, s, p) in MIGRATIONS {
            assert!(*v > 0);
            assert!(!name.is_empty());
            assert!(!s.trim().is_empty() && !p.trim().is_empty());
        }
    }
}
