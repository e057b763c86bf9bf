//! Any harness, with its source or destination behind `BoxSource` or
//! `BoxDestination`: the suite run through the dyn-compatible mirrors checks
//! that they forward every call.

use std::time::Duration;

use outbox_core::{BoxDestination, BoxSource, Destination, Message, Source};
use uuid::Uuid;

use crate::{DestinationHarness, Received, SourceHarness};

/// `H` with what it hands out boxed.
pub struct Boxed<H>(pub H);

impl<H: SourceHarness> SourceHarness for Boxed<H> {
    type Source = BoxSource<Message>;

    async fn relay(&self, lease: Duration) -> BoxSource<Message> {
        self.0.relay(lease).await.boxed()
    }

    async fn parking_relay(&self, lease: Duration) -> BoxSource<Message> {
        self.0.parking_relay(lease).await.boxed()
    }

    async fn budgeted_relay(&self, lease: Duration, batch_bytes: usize) -> BoxSource<Message> {
        self.0.budgeted_relay(lease, batch_bytes).await.boxed()
    }

    async fn enqueue(&self, messages: Vec<Message>) {
        self.0.enqueue(messages).await
    }

    async fn enqueue_malformed(&self, key: &str) -> Option<Uuid> {
        self.0.enqueue_malformed(key).await
    }

    async fn dead_letters(&self) -> Vec<(Uuid, String)> {
        self.0.dead_letters().await
    }

    async fn waiting(&self) -> u64 {
        self.0.waiting().await
    }

    fn claims_end_with_the_relay(&self) -> bool {
        self.0.claims_end_with_the_relay()
    }
}

impl<H: DestinationHarness> DestinationHarness for Boxed<H> {
    type Destination = BoxDestination<Message>;

    async fn destination(&self) -> BoxDestination<Message> {
        self.0.destination().await.boxed()
    }

    fn address(&self) -> String {
        self.0.address()
    }

    async fn received(&self, count: usize, timeout: Duration) -> Vec<Received> {
        self.0.received(count, timeout).await
    }

    fn refused_message(&self) -> Option<Message> {
        self.0.refused_message()
    }

    fn unfit_messages(&self) -> Vec<(&'static str, Message)> {
        self.0.unfit_messages()
    }
}
