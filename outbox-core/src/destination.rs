//! Where messages go: a broker.

use std::future::Future;

use crate::{BoxDestination, Error, Item};

/// A broker the relay publishes to.
pub trait Destination: Send + Sync + 'static {
    /// What this destination publishes.
    type Item: Item;

    /// Publishes one item and resolves once the broker acknowledged it.
    /// The error says whether retrying can help.
    fn send(&self, item: &Self::Item) -> impl Future<Output = Result<(), Error>> + Send;

    /// Publishes items of **one ordering key**, in order, and returns one
    /// result per item.
    ///
    /// The default sends one at a time and stops at the first failure, so a
    /// later item is never published before an earlier one of its key that
    /// failed. Override it to pipeline when the broker itself keeps order on
    /// failure (Kafka's idempotent producer does, within a partition): an
    /// `Ok` for an item means every earlier item of the slice was stored
    /// before it. Items after the first failure may carry any result; the
    /// relay sends them again later.
    fn send_ordered(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Vec<Result<(), Error>>> + Send {
        async move {
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                let result = self.send(item).await;
                let failed = result.is_err();
                results.push(result);
                if failed {
                    break;
                }
            }
            while results.len() < items.len() {
                results.push(Err(Error::temporary(
                    "not sent: an earlier message of its key failed",
                )));
            }
            results
        }
    }

    /// The broker's name in OpenTelemetry's messaging conventions
    /// (`kafka`, `rabbitmq`, `nats`), the `messaging.system` of the relay's
    /// publish spans.
    fn messaging_system(&self) -> &'static str {
        "custom"
    }

    /// Waits for what is still buffered to be acknowledged; called once on
    /// shutdown. The default has nothing to flush.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// This destination behind one type, [`BoxDestination`], for code that
    /// picks its broker at run time.
    fn boxed(self) -> BoxDestination<Self::Item>
    where
        Self: Sized,
    {
        BoxDestination::new(self)
    }
}
