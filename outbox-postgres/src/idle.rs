//! A relay's place on the idle list, `<table>_idle` (see
//! `0003_idle_relays.sql`): writers NOTIFY only while a relay is listed
//! there, since PostgreSQL commits notifying transactions one at a time.
//!
//! A relay lists itself once two claims in a row, [`LOOK_AGAIN_AFTER`]
//! apart, found nothing, and takes itself off after a claim with work or
//! after a claim a notification woke it for. So writers notify only when
//! the outbox was quiet for a moment, about once per such pause, and not at
//! all while relays keep finding work: under load a relay finds it by
//! looking again. A failed listing is logged and changes nothing else:
//! writers that do not notify leave the relay to its poll interval.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::sql::Statements;
use crate::wake::Wake;

/// After a claim found nothing, how soon the relay looks again before it
/// lists itself.
const LOOK_AGAIN_AFTER: Duration = Duration::from_millis(5);

/// One relay's wake-ups and listing.
pub(crate) struct IdleListing {
    wake: Wake,
    pool: PgPool,
    relay: Uuid,
    list: String,
    unlist: String,
    /// A listing older than this (twice the lease) belongs to a relay
    /// gone without a word, and the next relay to list drops it.
    stale_after: Duration,
    listed: AtomicBool,
    empty_in_a_row: AtomicU32,
    /// The last claim found this relay a standby (`leader_only`): it
    /// waits for the leader's lock, not for writers.
    standby: AtomicBool,
}

impl IdleListing {
    pub fn new(wake: Wake, pool: PgPool, relay: Uuid, sql: &Statements, lease: Duration) -> Self {
        Self {
            wake,
            pool,
            relay,
            list: sql.announce_idle.clone(),
            unlist: sql.announce_busy.clone(),
            stale_after: lease * 2,
            listed: AtomicBool::new(false),
            empty_in_a_row: AtomicU32::new(0),
            standby: AtomicBool::new(false),
        }
    }

    /// After a claim as leader (or with no leader), `empty` or not.
    pub async fn claimed(&self, empty: bool) {
        self.standby.store(false, Ordering::Relaxed);
        let in_a_row = if empty {
            self.empty_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.empty_in_a_row.store(0, Ordering::Relaxed);
            0
        };
        // Taken after every claim: a notification counts for the claim
        // right after it only.
        let woken = self.wake.take_woken();
        self.set(empty && !woken && in_a_row >= 2).await;
    }

    /// After a claim that found this relay a standby.
    pub async fn standing_by(&self) {
        self.standby.store(true, Ordering::Relaxed);
        self.empty_in_a_row.store(0, Ordering::Relaxed);
        self.set(false).await;
    }

    /// Resolves when new work may have arrived: a notification once
    /// listed, [`LOOK_AGAIN_AFTER`] before (so the relay looks again and
    /// lists itself), never for a standby.
    pub async fn wait_for_work(&self) {
        if self.listed.load(Ordering::Relaxed) {
            self.wake.notified().await;
        } else if self.standby.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        } else {
            tokio::time::sleep(LOOK_AGAIN_AFTER).await;
        }
    }

    async fn set(&self, idle: bool) {
        let result = if idle {
            // Run on every empty poll while idle: `since` shows the relay
            // is alive. Counted as listed even if it fails, so the relay
            // waits for its poll rather than looking again every 5 ms.
            self.listed.store(true, Ordering::Relaxed);
            sqlx::query(&self.list)
                .bind(self.relay)
                .bind(self.stale_after.as_secs_f64())
                .execute(&self.pool)
                .await
        } else if self.listed.swap(false, Ordering::Relaxed) {
            let unlisted = sqlx::query(&self.unlist)
                .bind(self.relay)
                .execute(&self.pool)
                .await;
            if unlisted.is_err() {
                self.listed.store(true, Ordering::Relaxed);
            }
            unlisted
        } else {
            return;
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, idle, "could not list the relay as idle or busy");
        }
    }
}

/// A relay going away takes itself off the list, or writers would go on
/// notifying for nobody until another relay drops the listing as stale.
/// Best effort: in a task, when a runtime is there.
impl Drop for IdleListing {
    fn drop(&mut self) {
        if !self.listed.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pool, unlist, relay) = (self.pool.clone(), self.unlist.clone(), self.relay);
        runtime.spawn(async move {
            let _ = sqlx::query(&unlist).bind(relay).execute(&pool).await;
        });
    }
}
