//! A [`Destination`] whose type is chosen at run time.

use futures_util::future::BoxFuture;

use crate::{Destination, Error, Item};

/// Any [`Destination`] of `I`, behind one type: for a service or a binary
/// that picks its broker from configuration.
///
/// The dyn-compatible mirror of [`Destination`], built with
/// [`Destination::boxed`] or [`BoxDestination::new`]. It forwards
/// [`Destination::send_ordered`] as well, so a destination that pipelines a
/// key's messages (Kafka) keeps doing so behind the box.
pub struct BoxDestination<I: Item> {
    inner: Box<dyn DynDestination<I>>,
}

impl<I: Item> BoxDestination<I> {
    /// Boxes `destination`.
    pub fn new<D: Destination<Item = I>>(destination: D) -> Self {
        Self {
            inner: Box::new(destination),
        }
    }
}

impl<I: Item> std::fmt::Debug for BoxDestination<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxDestination").finish_non_exhaustive()
    }
}

/// [`Destination`] with boxed futures, so it can be a trait object.
trait DynDestination<I>: Send + Sync + 'static {
    fn send<'a>(&'a self, item: &'a I) -> BoxFuture<'a, Result<(), Error>>;
    fn send_ordered<'a>(&'a self, items: &'a [I]) -> BoxFuture<'a, Vec<Result<(), Error>>>;
    fn flush(&self) -> BoxFuture<'_, Result<(), Error>>;
    fn messaging_system(&self) -> &'static str;
}

impl<D: Destination> DynDestination<D::Item> for D {
    fn send<'a>(&'a self, item: &'a D::Item) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Destination::send(self, item))
    }

    fn send_ordered<'a>(&'a self, items: &'a [D::Item]) -> BoxFuture<'a, Vec<Result<(), Error>>> {
        Box::pin(Destination::send_ordered(self, items))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Destination::flush(self))
    }

    fn messaging_system(&self) -> &'static str {
        Destination::messaging_system(self)
    }
}

impl<I: Item> Destination for BoxDestination<I> {
    type Item = I;

    async fn send(&self, item: &I) -> Result<(), Error> {
        self.inner.send(item).await
    }

    async fn send_ordered(&self, items: &[I]) -> Vec<Result<(), Error>> {
        self.inner.send_ordered(items).await
    }

    async fn flush(&self) -> Result<(), Error> {
        self.inner.flush().await
    }

    fn messaging_system(&self) -> &'static str {
        self.inner.messaging_system()
    }

    fn boxed(self) -> BoxDestination<I> {
        self
    }
}

#[cfg(test)]
mod tests {
    use crate::{Destination, Error, Message};

    /// Refuses single sends, pipelines keys, and fails to flush: what the
    /// box forwards shows in each answer.
    struct Pipelining;

    impl Destination for Pipelining {
        type Item = Message;

        async fn send(&self, _item: &Message) -> Result<(), Error> {
            Err(Error::permanent("single send"))
        }

        async fn send_ordered(&self, items: &[Message]) -> Vec<Result<(), Error>> {
            items.iter().map(|_| Ok(())).collect()
        }

        async fn flush(&self) -> Result<(), Error> {
            Err(Error::temporary("flushed"))
        }
    }

    #[tokio::test]
    async fn send_ordered_and_flush_reach_the_boxed_destination() {
        let boxed = Pipelining.boxed();
        let items = vec![Message::builder("t", "k").build().unwrap(); 3];
        let results = boxed.send_ordered(&items).await;
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let sent = boxed.send(&items[0]).await.unwrap_err();
        assert!(sent.to_string().contains("single send"), "{sent}");
        let flushed = boxed.flush().await.unwrap_err();
        assert!(flushed.to_string().contains("flushed"), "{flushed}");
    }
}
