//! The chainer: links committed `audit_pending` entries into their tenants' chains
//! (PostgreSQL; on SQLite entries are linked as they are appended).
//!
//! Every process runs one. It wakes when a write of this process that appended entries has
//! committed, waits a moment so one transaction links what arrived meanwhile, and otherwise
//! looks once a second (another replica's entries, or entries left by a crash). Several
//! chainers are safe: each batch holds the chain head's row lock. Nothing waits for it: audit
//! reads link what is pending before they read.

use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::store::{Db, Engine};

static NUDGE: Notify = Notify::const_new();

/// How long a woken chainer lets entries gather before linking them: bounds its transactions
/// to about a hundred a second however many writes commit.
const GATHER: Duration = Duration::from_millis(10);

/// The look for entries nobody woke us for.
const POLL: Duration = Duration::from_secs(1);

/// Called after a transaction that appended pending entries has committed.
pub(crate) fn nudge() {
    // notify_one keeps a permit when the chainer is busy: a wake-up is never lost.
    NUDGE.notify_one();
}

/// Starts this process's chainer (returns a finished task on SQLite).
pub fn spawn(db: Db) -> JoinHandle<()> {
    tokio::spawn(async move {
        if db.engine == Engine::Sqlite {
            return;
        }
        loop {
            tokio::select! {
                _ = NUDGE.notified() => tokio::time::sleep(GATHER).await,
                _ = tokio::time::sleep(POLL) => {}
            }
            if let Err(e) = super::store::link_pending(&db, None).await {
                // Entries stay pending (durable); the next round links them.
                tracing::warn!(error = %e, "cannot link pending audit entries");
                tokio::time::sleep(POLL).await;
            }
        }
    })
}
