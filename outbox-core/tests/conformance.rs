//! The conformance suite on the in-memory pair.

use std::time::Duration;

use outbox_core::memory::{MemoryDestination, MemorySource};
use outbox_core::{Message, OnDeadLetter, Source};
use outbox_testkit::{Boxed, DestinationHarness, Received, SourceHarness};
use uuid::Uuid;

struct MemoryTable(MemorySource);

impl SourceHarness for MemoryTable {
    type Source = MemorySource;

    async fn relay(&self, lease: Duration) -> MemorySource {
        self.0.another_relay(lease)
    }

    async fn parking_relay(&self, lease: Duration) -> MemorySource {
        self.0
            .another_relay(lease)
            .on_dead_letter(OnDeadLetter::Park)
    }

    async fn budgeted_relay(&self, lease: Duration, batch_bytes: usize) -> MemorySource {
        self.0.another_relay(lease).batch_bytes(batch_bytes)
    }

    async fn enqueue(&self, messages: Vec<Message>) {
        self.0.enqueue(messages);
    }

    async fn dead_letters(&self) -> Vec<(Uuid, String)> {
        self.0
            .dead_letters()
            .into_iter()
            .map(|dead| (dead.message.id, dead.error))
            .collect()
    }

    async fn waiting(&self) -> u64 {
        self.0.backlog().await.unwrap().unwrap().waiting
    }
}

async fn memory_table(_scenario: &'static str) -> MemoryTable {
    MemoryTable(MemorySource::default())
}

mod source {
    use super::*;
    outbox_testkit::source_conformance!(memory_table);
}

async fn boxed_memory_table(scenario: &'static str) -> Boxed<MemoryTable> {
    Boxed(memory_table(scenario).await)
}

/// The suite through `BoxSource`, which must forward every call.
mod boxed_source {
    use super::*;
    outbox_testkit::source_conformance!(boxed_memory_table);
}

struct MemoryBroker {
    destination: MemoryDestination,
    refused: Message,
}

impl DestinationHarness for MemoryBroker {
    type Destination = MemoryDestination;

    async fn destination(&self) -> MemoryDestination {
        self.destination.clone()
    }

    fn address(&self) -> String {
        "memory".to_string()
    }

    async fn received(&self, count: usize, timeout: Duration) -> Vec<Received> {
        self.destination.wait_for(count, timeout).await;
        self.destination
            .sent()
            .into_iter()
            .map(|sent| Received {
                id: sent.message.id,
                payload: sent.message.payload,
                headers: sent.message.headers,
                event_type: sent.message.event_type,
                ordering_key: Some(sent.message.ordering_key),
            })
            .collect()
    }

    fn refused_message(&self) -> Option<Message> {
        Some(self.refused.clone())
    }
}

async fn memory_broker(_scenario: &'static str) -> MemoryBroker {
    let destination = MemoryDestination::new();
    let refused = Message::builder("memory", "refused").build().unwrap();
    destination.fail_permanently(refused.id);
    MemoryBroker {
        destination,
        refused,
    }
}

mod destination {
    use super::*;
    outbox_testkit::destination_conformance!(memory_broker);
}

async fn boxed_memory_broker(scenario: &'static str) -> Boxed<MemoryBroker> {
    Boxed(memory_broker(scenario).await)
}

/// The suite through `BoxDestination`, which must forward every call.
mod boxed_destination {
    use super::*;
    outbox_testkit::destination_conformance!(boxed_memory_broker);
}
