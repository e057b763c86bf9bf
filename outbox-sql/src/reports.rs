//! Reports on batches held in open transactions: the loop PostgreSQL and
//! MySQL share, each running its own statements and commit.

use std::collections::HashSet;
use std::future::Future;

use outbox_core::{ClaimId, Error, Failure, Message};
use uuid::Uuid;

use crate::HeldBatches;

/// What a report asks of a batch's rows.
pub enum Report<'a> {
    /// Published: remove them from the delivery path.
    Ack,
    /// Failed, to be tried again after each failure's `retry_after`.
    Retry(&'a [Failure<Message>]),
    /// Failed for good: keep them for an operator.
    DeadLetter(&'a [Failure<Message>]),
    /// Not attempted: leave the rows as they are (the commit frees them).
    Release,
}

/// A source whose lease is the claim's transaction: reports run on it and
/// the batch's last report commits it. The source says how to run a
/// report's statements and how to commit; the bookkeeping is here.
pub trait TransactionReports: Sync {
    /// A claim's open transaction.
    type Tx: Send + Sync;

    /// The batches this source holds.
    fn held(&self) -> &HeldBatches<Self::Tx>;

    /// Runs `report`'s statements on `tx` for the batch's items in `mine`.
    fn run_report(
        &self,
        tx: &mut Self::Tx,
        mine: &HashSet<Uuid>,
        report: &Report<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Commits `tx`.
    fn commit(tx: Self::Tx) -> impl Future<Output = Result<(), Error>> + Send;

    /// Runs `report` for `ids` on `claim`'s transaction, and commits it once
    /// every item of the batch is reported. A batch whose transaction fails
    /// is dropped, which rolls it back: its rows will be claimed again, and
    /// the error returned says so (the relay counts it as a source error).
    /// A claim no longer held changes nothing and says so.
    fn report(
        &self,
        claim: ClaimId,
        ids: &[Uuid],
        report: Report<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            let held = self.held();
            let batch = held.get(claim)?;
            let mine: HashSet<Uuid> = ids.iter().copied().collect();
            let mut tx = batch.tx.lock().await;
            let Some(open_tx) = tx.as_mut() else {
                return Err(held.closed(claim));
            };
            let outcome = match self.run_report(open_tx, &mine, &report).await {
                Ok(()) if !batch.reported(&mine) => return Ok(()),
                Ok(()) => Self::commit(tx.take().expect("open")).await,
                Err(err) => Err(err),
            };
            held.settle(&batch, &mut tx, outcome)
        }
    }

    /// [`Source::ack`](outbox_core::Source::ack) on the claim's transaction.
    fn ack_batch(
        &self,
        claim: ClaimId,
        items: &[Message],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let ids: Vec<Uuid> = items.iter().map(|m| m.id).collect();
        async move { self.report(claim, &ids, Report::Ack).await }
    }

    /// [`Source::retry`](outbox_core::Source::retry) on the claim's
    /// transaction.
    fn retry_batch(
        &self,
        claim: ClaimId,
        failures: &[Failure<Message>],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let ids: Vec<Uuid> = failures.iter().map(|f| f.item.id).collect();
        async move { self.report(claim, &ids, Report::Retry(failures)).await }
    }

    /// [`Source::dead_letter`](outbox_core::Source::dead_letter) on the
    /// claim's transaction.
    fn dead_letter_batch(
        &self,
        claim: ClaimId,
        failures: &[Failure<Message>],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let ids: Vec<Uuid> = failures.iter().map(|f| f.item.id).collect();
        async move { self.report(claim, &ids, Report::DeadLetter(failures)).await }
    }

    /// [`Source::release`](outbox_core::Source::release) on the claim's
    /// transaction.
    fn release_batch(
        &self,
        claim: ClaimId,
        items: &[Message],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let ids: Vec<Uuid> = items.iter().map(|m| m.id).collect();
        async move { self.report(claim, &ids, Report::Release).await }
    }
}
