//! The table mode's rows, deleted once read: in the background, many
//! transactions' rows in one statement, and never after the slot was
//! confirmed past them (a relay stopped in between reads them again from
//! the log, and its delete of them is then a no-op).
//!
//! The log can carry a transaction before other sessions see it:
//! PostgreSQL flushes the commit record, waits for synchronous standbys,
//! and only then makes the transaction visible, while logical decoding
//! sends whatever is flushed. A delete in between finds none of its rows.
//! So a delete that finds fewer rows than it was given counts as done
//! only once every transaction it covers is visible (the rows missing
//! then were deleted already, by a relay that read them before); until
//! then its rows wait, and the slot stays below them.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::shared::Shared;
use super::table::OutboxTable;

/// Most rows one delete takes.
const MOST_ROWS: usize = 10_000;

/// How long rows whose transaction is not visible yet wait before the
/// next try: the window is usually microseconds, with a synchronous
/// standby its round trip.
const NOT_YET_VISIBLE_PAUSE: Duration = Duration::from_millis(20);

/// Rows read from the log and not yet deleted (part of the shared
/// [`State`](super::shared::State)).
#[derive(Default)]
pub(crate) struct Sweep {
    /// Ids waiting for the next delete.
    waiting: Vec<Uuid>,
    /// The transactions (top-level ids) that inserted `waiting`.
    waiting_xids: Vec<u32>,
    /// The commit position of the first transaction among `waiting`.
    waiting_from: Option<u64>,
    /// The commit position of the first transaction of the delete under
    /// way.
    deleting_from: Option<u64>,
}

impl Sweep {
    /// The rows `ids` of the transaction `xid` whose commit record starts
    /// at `commit`, read from the log.
    pub(crate) fn add(&mut self, commit: u64, xid: u32, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        self.waiting_from.get_or_insert(commit);
        self.waiting.extend(ids);
        self.waiting_xids.push(xid);
    }

    /// The furthest the slot may be confirmed now: up to the commit record
    /// of the first transaction with a row not yet deleted (PostgreSQL
    /// skips, when it decodes again, the transactions whose commit record
    /// starts before the confirmed position), or anywhere when none is.
    pub(crate) fn limit(&self) -> u64 {
        self.waiting_from
            .into_iter()
            .chain(self.deleting_from)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn take(&mut self) -> Batch {
        let batch = if self.waiting.len() > MOST_ROWS {
            // The rest keeps its place: its first transaction is not known
            // apart, so the limit stays where it was until all are gone,
            // and both parts wait for every transaction to be visible.
            let rest = self.waiting.split_off(MOST_ROWS);
            Batch {
                ids: std::mem::replace(&mut self.waiting, rest),
                xids: self.waiting_xids.clone(),
            }
        } else {
            self.deleting_from = self.waiting_from.take();
            Batch {
                ids: std::mem::take(&mut self.waiting),
                xids: std::mem::take(&mut self.waiting_xids),
            }
        };
        if !batch.ids.is_empty() && self.deleting_from.is_none() {
            self.deleting_from = self.waiting_from;
        }
        batch
    }

    fn deleted(&mut self) {
        self.deleting_from = None;
    }

    /// The delete of `batch` failed or waits for its transactions to be
    /// visible: its rows wait again, in their place.
    fn failed(&mut self, batch: Batch) {
        self.waiting_from = self
            .waiting_from
            .into_iter()
            .chain(self.deleting_from)
            .min();
        self.deleting_from = None;
        self.waiting.extend(batch.ids);
        self.waiting_xids.extend(batch.xids);
        self.waiting_xids.sort_unstable();
        self.waiting_xids.dedup();
    }
}

/// The rows one delete takes, and the transactions that inserted them.
struct Batch {
    ids: Vec<Uuid>,
    xids: Vec<u32>,
}

/// How a sweep of every row added so far ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Swept {
    /// Every row is gone.
    All,
    /// A transaction read from the log is not visible yet: its rows (and
    /// the rest) wait for the next sweep.
    NotYetVisible,
}

/// Deletes the rows the reader read, one delete at a time.
pub(crate) struct Sweeper {
    table: OutboxTable,
    pool: PgPool,
    shared: Arc<Shared>,
    /// Woken when rows were added.
    due: Notify,
    /// Held through a delete: one at a time, so once it is taken nothing
    /// is being deleted.
    turn: Mutex<()>,
}

impl Sweeper {
    pub(crate) fn new(table: OutboxTable, pool: PgPool, shared: Arc<Shared>) -> Self {
        Self {
            table,
            pool,
            shared,
            due: Notify::new(),
            turn: Mutex::new(()),
        }
    }

    /// The table read.
    pub(crate) fn table(&self) -> &OutboxTable {
        &self.table
    }

    /// Rows were added: the background task deletes them soon.
    pub(crate) fn wake(&self) {
        self.due.notify_one();
    }

    /// Deletes in the background until `stop`; a failed delete is tried
    /// again, and one whose transactions are not visible yet soon (the
    /// slot stays confirmed below its rows meanwhile).
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut failed_before = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.due.notified() => {}
            }
            let pause = match self.all().await {
                Ok(Swept::All) => {
                    failed_before = false;
                    continue;
                }
                Ok(Swept::NotYetVisible) => NOT_YET_VISIBLE_PAUSE,
                Err(err) => {
                    if !failed_before {
                        tracing::warn!("deleting rows read from the log: {err}");
                    }
                    failed_before = true;
                    Duration::from_millis(500)
                }
            };
            self.due.notify_one();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Deletes every row added so far whose transaction is visible.
    pub(crate) async fn all(&self) -> Result<Swept, sqlx::Error> {
        let _turn = self.turn.lock().await;
        loop {
            let batch = self.shared.state.lock().await.sweep.take();
            if batch.ids.is_empty() {
                return Ok(Swept::All);
            }
            let deleted = self.delete(&batch).await;
            let mut state = self.shared.state.lock().await;
            match deleted {
                Ok(Swept::All) => state.sweep.deleted(),
                other => {
                    state.sweep.failed(batch);
                    return other;
                }
            }
        }
    }

    /// Deletes `batch`: done when every row was there, or else once its
    /// transactions are visible (checked before a second delete, whose
    /// snapshot then sees every row still in the table).
    async fn delete(&self, batch: &Batch) -> Result<Swept, sqlx::Error> {
        let deleted = self.table.delete(&self.pool, &batch.ids).await?;
        if deleted == batch.ids.len() as u64 {
            return Ok(Swept::All);
        }
        if !self.table.visible(&self.pool, &batch.xids).await? {
            return Ok(Swept::NotYetVisible);
        }
        self.table.delete(&self.pool, &batch.ids).await?;
        Ok(Swept::All)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_stays_below_the_first_row_not_deleted() {
        let mut sweep = Sweep::default();
        assert_eq!(sweep.limit(), u64::MAX);
        sweep.add(100, 7, vec![Uuid::now_v7()]);
        sweep.add(200, 8, vec![Uuid::now_v7(), Uuid::now_v7()]);
        sweep.add(250, 9, Vec::new());
        assert_eq!(sweep.limit(), 100);
        let first = sweep.take();
        assert_eq!((first.ids.len(), first.xids.clone()), (3, vec![7, 8]));
        assert_eq!(sweep.limit(), 100, "deleting");
        sweep.add(300, 10, vec![Uuid::now_v7()]);
        sweep.failed(first);
        assert_eq!(sweep.limit(), 100, "a failed delete keeps its place");
        let again = sweep.take();
        assert_eq!((again.ids.len(), again.xids), (4, vec![7, 8, 10]));
        sweep.deleted();
        assert_eq!(sweep.limit(), u64::MAX);
    }

    #[test]
    fn a_delete_takes_at_most_its_share_and_the_rest_holds_the_limit() {
        let mut sweep = Sweep::default();
        sweep.add(10, 3, (0..MOST_ROWS + 5).map(|_| Uuid::now_v7()).collect());
        assert_eq!(sweep.take().ids.len(), MOST_ROWS);
        sweep.deleted();
        assert_eq!(sweep.limit(), 10, "five rows of the transaction remain");
        let rest = sweep.take();
        assert_eq!((rest.ids.len(), rest.xids), (5, vec![3]));
        sweep.deleted();
        assert_eq!(sweep.limit(), u64::MAX);
    }
}
