//! Transaction-scoped named locks, for the few places where two replicas must not both act
//! (printing first-run tokens, electing the nightly leader). PostgreSQL uses an advisory lock
//! released at commit; SQLite needs nothing because one writer holds the database.

use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use super::Engine;

/// Takes the lock named `name` until the current transaction ends.
pub async fn xact_lock(
    conn: &mut AnyConnection,
    engine: Engine,
    name: &str,
) -> Result<(), sqlx::Error> {
    if engine == Engine::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(name))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// A stable 64-bit key for a lock name.
fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("deprovd:{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}
