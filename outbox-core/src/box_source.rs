//! A [`Source`] whose type is chosen at run time.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::{Backlog, Claim, ClaimId, Error, Failure, Item, Source};

/// Any [`Source`] of `I`, behind one type: for a service or a binary that
/// picks its database from configuration and hands the relay whichever it
/// built.
///
/// [`Source`] returns `impl Future`, which keeps the relay free of boxing but
/// makes `dyn Source` impossible; this is its dyn-compatible mirror, built
/// with [`Source::boxed`] or [`BoxSource::new`]. Each call costs one boxed
/// future, once per claim or report, not per message.
pub struct BoxSource<I: Item> {
    inner: Box<dyn DynSource<I>>,
}

impl<I: Item> BoxSource<I> {
    /// Boxes `source`.
    pub fn new<S: Source<Item = I>>(source: S) -> Self {
        Self {
            inner: Box::new(source),
        }
    }
}

impl<I: Item> std::fmt::Debug for BoxSource<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxSource")
            .field("lease", &self.inner.lease())
            .finish_non_exhaustive()
    }
}

/// [`Source`] with boxed futures, so it can be a trait object.
trait DynSource<I>: Send + Sync + 'static {
    fn claim(&self, limit: usize) -> BoxFuture<'_, Result<Claim<I>, Error>>;
    fn ack<'a>(&'a self, claim: ClaimId, items: &'a [I]) -> BoxFuture<'a, Result<(), Error>>;
    fn retry<'a>(
        &'a self,
        claim: ClaimId,
        failures: &'a [Failure<I>],
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn dead_letter<'a>(
        &'a self,
        claim: ClaimId,
        failures: &'a [Failure<I>],
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn release<'a>(&'a self, claim: ClaimId, items: &'a [I]) -> BoxFuture<'a, Result<(), Error>>;
    fn lease(&self) -> Duration;
    fn wait_for_work(&self) -> BoxFuture<'_, ()>;
    fn checkpoint(&self) -> BoxFuture<'_, ()>;
    fn backlog(&self) -> BoxFuture<'_, Result<Option<Backlog>, Error>>;
}

impl<S: Source> DynSource<S::Item> for S {
    fn claim(&self, limit: usize) -> BoxFuture<'_, Result<Claim<S::Item>, Error>> {
        Box::pin(Source::claim(self, limit))
    }

    fn ack<'a>(&'a self, claim: ClaimId, items: &'a [S::Item]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Source::ack(self, claim, items))
    }

    fn retry<'a>(
        &'a self,
        claim: ClaimId,
        failures: &'a [Failure<S::Item>],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Source::retry(self, claim, failures))
    }

    fn dead_letter<'a>(
        &'a self,
        claim: ClaimId,
        failures: &'a [Failure<S::Item>],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Source::dead_letter(self, claim, failures))
    }

    fn release<'a>(
        &'a self,
        claim: ClaimId,
        items: &'a [S::Item],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Source::release(self, claim, items))
    }

    fn lease(&self) -> Duration {
        Source::lease(self)
    }

    fn wait_for_work(&self) -> BoxFuture<'_, ()> {
        Box::pin(Source::wait_for_work(self))
    }

    fn checkpoint(&self) -> BoxFuture<'_, ()> {
        Box::pin(Source::checkpoint(self))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Option<Backlog>, Error>> {
        Box::pin(Source::backlog(self))
    }
}

impl<I: Item> Source for BoxSource<I> {
    type Item = I;

    async fn claim(&self, limit: usize) -> Result<Claim<I>, Error> {
        self.inner.claim(limit).await
    }

    async fn ack(&self, claim: ClaimId, items: &[I]) -> Result<(), Error> {
        self.inner.ack(claim, items).await
    }

    async fn retry(&self, claim: ClaimId, failures: &[Failure<I>]) -> Result<(), Error> {
        self.inner.retry(claim, failures).await
    }

    async fn dead_letter(&self, claim: ClaimId, failures: &[Failure<I>]) -> Result<(), Error> {
        self.inner.dead_letter(claim, failures).await
    }

    async fn release(&self, claim: ClaimId, items: &[I]) -> Result<(), Error> {
        self.inner.release(claim, items).await
    }

    fn lease(&self) -> Duration {
        self.inner.lease()
    }

    async fn wait_for_work(&self) {
        self.inner.wait_for_work().await
    }

    async fn checkpoint(&self) {
        self.inner.checkpoint().await
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        self.inner.backlog().await
    }

    fn boxed(self) -> BoxSource<I> {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::memory::MemorySource;
    use crate::{Message, Source};

    #[tokio::test]
    async fn lease_backlog_and_wake_ups_reach_the_boxed_source() {
        let memory = MemorySource::new(Duration::from_millis(1_234));
        let boxed = memory.another_relay(Duration::from_millis(1_234)).boxed();
        assert_eq!(boxed.lease(), Duration::from_millis(1_234));

        // A wake-up reaches only a waiter already waiting: enqueue until one
        // does, within a deadline.
        let woken = tokio::time::timeout(Duration::from_secs(5), async {
            let wait = boxed.wait_for_work();
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {
                        memory.enqueue([Message::builder("t", "k").build().unwrap()]);
                    }
                }
            }
        })
        .await;
        assert!(woken.is_ok(), "the boxed source never woke up on new work");
        let backlog = boxed.backlog().await.unwrap().expect("memory counts");
        assert_eq!(backlog.waiting, memory.waiting() as u64);
        assert!(backlog.waiting > 0);
    }
}
