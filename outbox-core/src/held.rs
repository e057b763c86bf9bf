//! Batches a database source holds in open transactions: the claim's
//! transaction is the lease, reports run on it, and the last report of a
//! batch commits it. This is the bookkeeping such sources share; running the
//! statements and committing stay with each adapter. (The report loop too:
//! taking it here as an async closure over `&mut T` does not compile inside
//! the `Send` futures `Source` returns, with rustc 1.95's "implementation of
//! `AsyncFnMut` is not general enough".)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::Error;

/// One claimed batch: its open transaction and the ids not yet reported.
pub struct HeldBatch<T> {
    /// The claim's transaction; `None` once committed or lost.
    pub tx: tokio::sync::Mutex<Option<T>>,
    unreported: Mutex<HashSet<Uuid>>,
    size: usize,
    claimed_at: Instant,
}

impl<T> HeldBatch<T> {
    /// Marks `ids` reported; true when no item of the batch is left, so the
    /// caller commits.
    pub fn reported(&self, ids: &HashSet<Uuid>) -> bool {
        let mut unreported = lock(&self.unreported);
        unreported.retain(|id| !ids.contains(id));
        unreported.is_empty()
    }

    /// How many items are not reported yet.
    pub fn unreported(&self) -> usize {
        lock(&self.unreported).len()
    }

    /// The error a report returns when this batch's transaction failed
    /// (`cause`) and was rolled back: every item of the batch, reported or
    /// not, will be claimed again. Permanent, as reporting again cannot
    /// bring the transaction back; the relay counts it as a source error.
    pub fn lost(&self, cause: Error) -> Error {
        Error::permanent(format!(
            "lost the transaction (the lease) of a batch of {} messages; they will be claimed again",
            self.size
        ))
        .with_source(cause)
    }
}

/// Every batch a source holds, found by message id.
pub struct HeldBatches<T> {
    open: Mutex<HashMap<Uuid, Arc<HeldBatch<T>>>>,
}

impl<T> Default for HeldBatches<T> {
    fn default() -> Self {
        Self {
            open: Mutex::default(),
        }
    }
}

impl<T> HeldBatches<T> {
    /// Holds `tx` as the batch of `ids`, claimed now.
    pub fn hold(&self, ids: impl IntoIterator<Item = Uuid>, tx: T) {
        let ids: HashSet<Uuid> = ids.into_iter().collect();
        let batch = Arc::new(HeldBatch {
            tx: tokio::sync::Mutex::new(Some(tx)),
            size: ids.len(),
            unreported: Mutex::new(ids.clone()),
            claimed_at: Instant::now(),
        });
        let mut open = lock(&self.open);
        for id in ids {
            open.insert(id, batch.clone());
        }
    }

    /// The batches holding `ids`, each with the ids of `ids` it holds. Ids
    /// no batch holds (forgotten, or never claimed here) are left out: their
    /// report is fenced.
    pub fn by_batch(&self, ids: &[Uuid]) -> Vec<(Arc<HeldBatch<T>>, HashSet<Uuid>)> {
        let open = lock(&self.open);
        let mut batches: Vec<(Arc<HeldBatch<T>>, HashSet<Uuid>)> = Vec::new();
        for id in ids {
            let Some(batch) = open.get(id) else { continue };
            match batches.iter_mut().find(|(b, _)| Arc::ptr_eq(b, batch)) {
                Some((_, mine)) => {
                    mine.insert(*id);
                }
                None => batches.push((batch.clone(), HashSet::from([*id]))),
            }
        }
        batches
    }

    /// Closes a report on `batch` whose `outcome` is known: the commit's,
    /// or a failed statement's. Drops `tx` if still open (a rollback) and
    /// forgets the batch; a failure becomes the error of a lost batch
    /// ([`HeldBatch::lost`]).
    pub fn settle(
        &self,
        batch: &Arc<HeldBatch<T>>,
        tx: &mut Option<T>,
        outcome: Result<(), Error>,
    ) -> Result<(), Error> {
        tx.take();
        self.forget(batch);
        outcome.map_err(|err| batch.lost(err))
    }

    /// Forgets `batch` (committed or lost).
    pub fn forget(&self, batch: &Arc<HeldBatch<T>>) {
        lock(&self.open).retain(|_, open| !Arc::ptr_eq(open, batch));
    }

    /// Forgets batches claimed longer than `lease` ago: the database has
    /// ended their transactions (a relay that never reports some items, say).
    pub fn forget_expired(&self, lease: Duration) {
        lock(&self.open).retain(|_, batch| batch.claimed_at.elapsed() < lease);
    }
}

fn lock<V>(mutex: &Mutex<V>) -> MutexGuard<'_, V> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_done_when_its_last_id_is_reported() {
        let held = HeldBatches::default();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        held.hold([a, b], "first");
        held.hold([c], "second");
        let batches = held.by_batch(&[a, c, Uuid::now_v7()]);
        assert_eq!(batches.len(), 2, "the unknown id belongs to no batch");
        let (first, mine) = &batches[0];
        assert_eq!(mine, &HashSet::from([a]));
        assert!(!first.reported(mine), "b is still out");
        assert_eq!(first.unreported(), 1);
        assert!(first.reported(&HashSet::from([b])));
        held.forget(first);
        assert!(held.by_batch(&[a, b]).is_empty());
        assert_eq!(held.by_batch(&[c]).len(), 1);
    }

    #[test]
    fn a_lost_batch_names_its_size_and_cause() {
        let held = HeldBatches::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        held.hold([a, b], ());
        let (batch, _) = held.by_batch(&[a]).pop().expect("held");
        let err = batch.lost(Error::temporary("1213 Deadlock found"));
        assert!(!err.is_temporary(), "reporting again cannot help");
        let report = err.report();
        assert!(report.contains("a batch of 2 messages"), "{report}");
        assert!(report.ends_with(": 1213 Deadlock found"), "{report}");
    }

    #[test]
    fn expired_batches_are_forgotten() {
        let held = HeldBatches::default();
        let id = Uuid::now_v7();
        held.hold([id], ());
        held.forget_expired(Duration::from_secs(60));
        assert_eq!(held.by_batch(&[id]).len(), 1);
        held.forget_expired(Duration::ZERO);
        assert!(held.by_batch(&[id]).is_empty());
    }
}
