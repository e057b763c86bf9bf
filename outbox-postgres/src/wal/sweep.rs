//! The table mode's rows, deleted once read: in the background, many
//! transactions' rows in one statement, and never after the slot was
//! confirmed past them (a relay stopped in between reads them again from
//! the log, and its delete of them is then a no-op).

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

/// Rows read from the log and not yet deleted (part of the shared
/// [`State`](super::shared::State)).
#[derive(Default)]
pub(crate) struct Sweep {
    /// Ids waiting for the next delete.
    waiting: Vec<Uuid>,
    /// The commit position of the first transaction among `waiting`.
    waiting_from: Option<u64>,
    /// The commit position of the first transaction of the delete under
    /// way.
    deleting_from: Option<u64>,
}

impl Sweep {
    /// The rows `ids` of the transaction whose commit record starts at
    /// `commit`, read from the log.
    pub(crate) fn add(&mut self, commit: u64, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        self.waiting_from.get_or_insert(commit);
        self.waiting.extend(ids);
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

    fn take(&mut self) -> Vec<Uuid> {
        let ids: Vec<Uuid> = if self.waiting.len() > MOST_ROWS {
            // The rest keeps its place: its first transaction is not known
            // apart, so the limit stays where it was until all are gone.
            let rest = self.waiting.split_off(MOST_ROWS);
            std::mem::replace(&mut self.waiting, rest)
        } else {
            self.deleting_from = self.waiting_from.take();
            std::mem::take(&mut self.waiting)
        };
        if !ids.is_empty() && self.deleting_from.is_none() {
            self.deleting_from = self.waiting_from;
        }
        ids
    }

    fn deleted(&mut self) {
        self.deleting_from = None;
    }

    fn failed(&mut self, ids: Vec<Uuid>) {
        self.waiting_from = self
            .waiting_from
            .into_iter()
            .chain(self.deleting_from)
            .min();
        self.deleting_from = None;
        self.waiting.extend(ids);
    }
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
    /// again (the slot stays confirmed below its rows meanwhile).
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut failed_before = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.due.notified() => {}
            }
            match self.all().await {
                Ok(()) => failed_before = false,
                Err(err) => {
                    if !failed_before {
                        tracing::warn!("deleting rows read from the log: {err}");
                    }
                    failed_before = true;
                    self.due.notify_one();
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Deletes every row added so far.
    pub(crate) async fn all(&self) -> Result<(), sqlx::Error> {
        let _turn = self.turn.lock().await;
        loop {
            let ids = self.shared.state.lock().await.sweep.take();
            if ids.is_empty() {
                return Ok(());
            }
            let deleted = self.table.delete(&self.pool, &ids).await;
            let mut state = self.shared.state.lock().await;
            match deleted {
                Ok(()) => state.sweep.deleted(),
                Err(err) => {
                    state.sweep.failed(ids);
                    return Err(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_stays_below_the_first_row_not_deleted() {
        let mut sweep = Sweep::default();
        assert_eq!(sweep.limit(), u64::MAX);
        sweep.add(100, vec![Uuid::now_v7()]);
        sweep.add(200, vec![Uuid::now_v7(), Uuid::now_v7()]);
        sweep.add(250, Vec::new());
        assert_eq!(sweep.limit(), 100);
        let first = sweep.take();
        assert_eq!(first.len(), 3);
        assert_eq!(sweep.limit(), 100, "deleting");
        sweep.add(300, vec![Uuid::now_v7()]);
        sweep.failed(first);
        assert_eq!(sweep.limit(), 100, "a failed delete keeps its place");
        assert_eq!(sweep.take().len(), 4);
        sweep.deleted();
        assert_eq!(sweep.limit(), u64::MAX);
    }

    #[test]
    fn a_delete_takes_at_most_its_share_and_the_rest_holds_the_limit() {
        let mut sweep = Sweep::default();
        sweep.add(10, (0..MOST_ROWS + 5).map(|_| Uuid::now_v7()).collect());
        assert_eq!(sweep.take().len(), MOST_ROWS);
        sweep.deleted();
        assert_eq!(sweep.limit(), 10, "five rows of the transaction remain");
        assert_eq!(sweep.take().len(), 5);
        sweep.deleted();
        assert_eq!(sweep.limit(), u64::MAX);
    }
}
