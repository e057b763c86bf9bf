//! Batches a database source holds in open transactions: the claim's
//! transaction is the lease, reports run on it, and the last report of a
//! batch commits it. This is the bookkeeping such sources share; the report
//! loop on it is `TransactionReports` (a trait, since an async closure over
//! `&mut T` does not compile inside the `Send` futures `Source` returns,
//! with rustc 1.95's "implementation of `AsyncFnMut` is not general
//! enough"), and running the statements and committing stay with each
//! adapter.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use outbox_core::{ClaimId, Error};

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

/// Every batch a source holds, found by its claim's identity: a report of
/// a claim that was lost finds nothing, even when the same rows have been
/// claimed again since (finding batches by message id ran a lost claim's
/// reports on the newer claim's transaction, which could commit it early).
pub struct HeldBatches<T> {
    open: Mutex<HashMap<ClaimId, Arc<HeldBatch<T>>>>,
}

impl<T> Default for HeldBatches<T> {
    fn default() -> Self {
        Self {
            open: Mutex::default(),
        }
    }
}

impl<T> HeldBatches<T> {
    /// Holds `tx` as `claim`'s batch of `ids`, claimed now.
    pub fn hold(&self, claim: ClaimId, ids: impl IntoIterator<Item = Uuid>, tx: T) {
        let ids: HashSet<Uuid> = ids.into_iter().collect();
        let batch = Arc::new(HeldBatch {
            tx: tokio::sync::Mutex::new(Some(tx)),
            size: ids.len(),
            unreported: Mutex::new(ids),
            claimed_at: Instant::now(),
        });
        lock(&self.open).insert(claim, batch);
    }

    /// `claim`'s batch, or the error of a report that changes nothing: the
    /// claim was lost (its transaction ended or failed) or is over.
    pub fn get(&self, claim: ClaimId) -> Result<Arc<HeldBatch<T>>, Error> {
        lock(&self.open)
            .get(&claim)
            .cloned()
            .ok_or_else(|| not_held(claim))
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

    /// The error of a report on a batch whose transaction another report
    /// has already closed.
    pub fn closed(&self, claim: ClaimId) -> Error {
        not_held(claim)
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

fn not_held(claim: ClaimId) -> Error {
    Error::permanent(format!(
        "claim {claim} is no longer held (its lease ended or its transaction failed): \
         the report changes nothing"
    ))
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
        let (first_claim, second_claim) = (ClaimId::new(), ClaimId::new());
        held.hold(first_claim, [a, b], "first");
        held.hold(second_claim, [c], "second");
        let first = held.get(first_claim).expect("held");
        assert!(!first.reported(&HashSet::from([a])), "b is still out");
        assert_eq!(first.unreported(), 1);
        assert!(first.reported(&HashSet::from([b])));
        held.forget(&first);
        assert!(held.get(first_claim).is_err());
        assert!(held.get(second_claim).is_ok());
    }

    #[test]
    fn a_claim_of_the_same_rows_again_is_another_batch() {
        let held = HeldBatches::default();
        let id = Uuid::now_v7();
        let (lost, newer) = (ClaimId::new(), ClaimId::new());
        held.hold(lost, [id], "lost");
        held.hold(newer, [id], "newer");
        let lost = held.get(lost).expect("held");
        held.forget(&lost);
        let newer = held.get(newer).expect("the newer claim is still held");
        assert_eq!(*newer.tx.try_lock().expect("free"), Some("newer"));
    }

    #[test]
    fn a_report_for_an_unknown_claim_says_it_changes_nothing() {
        let held: HeldBatches<()> = HeldBatches::default();
        let err = held.get(ClaimId::new()).err().expect("not held");
        assert!(!err.is_temporary());
        assert!(err.to_string().contains("changes nothing"), "{err}");
    }

    #[test]
    fn a_lost_batch_names_its_size_and_cause() {
        let held = HeldBatches::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let claim = ClaimId::new();
        held.hold(claim, [a, b], ());
        let batch = held.get(claim).expect("held");
        let err = batch.lost(Error::temporary("1213 Deadlock found"));
        assert!(!err.is_temporary(), "reporting again cannot help");
        let report = err.report();
        assert!(report.contains("a batch of 2 messages"), "{report}");
        assert!(report.ends_with(": 1213 Deadlock found"), "{report}");
    }

    #[test]
    fn expired_batches_are_forgotten() {
        let held = HeldBatches::default();
        let claim = ClaimId::new();
        held.hold(claim, [Uuid::now_v7()], ());
        held.forget_expired(Duration::from_secs(60));
        assert!(held.get(claim).is_ok());
        held.forget_expired(Duration::ZERO);
        assert!(held.get(claim).is_err());
    }
}
