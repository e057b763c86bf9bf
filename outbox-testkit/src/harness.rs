//! What an adapter's tests provide to the suite.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use outbox_core::{CloudEvents, CloudEventsBinding, Destination, Message, Source};
use uuid::Uuid;

/// Access to one outbox table (or equivalent) of a real database.
pub trait SourceHarness: Send + Sync {
    /// The source under test.
    type Source: Source<Item = Message>;

    /// A source on this harness's table acting as a new relay (its own
    /// identity and leases), with claims holding for `lease`.
    fn relay(&self, lease: Duration) -> impl Future<Output = Self::Source> + Send;

    /// The same as [`relay`](Self::relay), with dead letters parking their
    /// keys ([`OnDeadLetter::Park`](outbox_core::OnDeadLetter::Park)).
    fn parking_relay(&self, lease: Duration) -> impl Future<Output = Self::Source> + Send;

    /// The same as [`relay`](Self::relay), with claims of at most
    /// `batch_bytes` payload bytes (the source's `batch_bytes` setting).
    fn budgeted_relay(
        &self,
        lease: Duration,
        batch_bytes: usize,
    ) -> impl Future<Output = Self::Source> + Send;

    /// Commits `messages` to the table, in this order, as an application would.
    fn enqueue(&self, messages: Vec<Message>) -> impl Future<Output = ()> + Send;

    /// Commits a row for `key` that cannot be read as a message (headers
    /// that are not a JSON object, as a careless hand-written insert would
    /// leave), and returns its id; `None` for a source that cannot hold one.
    fn enqueue_malformed(&self, key: &str) -> impl Future<Output = Option<Uuid>> + Send {
        let _ = key;
        async { None }
    }

    /// The dead letters: id and stored error.
    fn dead_letters(&self) -> impl Future<Output = Vec<(Uuid, String)>> + Send;

    /// Messages waiting for delivery, dead letters excluded.
    fn waiting(&self) -> impl Future<Output = u64> + Send;

    /// Whether a relay's claims end with the relay itself: true for a source
    /// whose lease is a database transaction (dropping the source rolls it
    /// back, as a crashed process's connection would), false (the default)
    /// for one whose lease is written into the rows and lasts its full term.
    fn claims_end_with_the_relay(&self) -> bool {
        false
    }

    /// Whether a claim takes the rows of one lane of keys before the rest
    /// (the PostgreSQL source with `lanes`): claims then come in an order
    /// other than enqueue order across keys, each key still in its order.
    /// False by default.
    fn claims_take_lanes(&self) -> bool {
        false
    }
}

/// Writers' transactions of a real database, left open, for the scenario
/// that checks two writers of one key commit one after the other.
pub trait OpenWrites: Clone + Send + Sync + 'static {
    /// A transaction holding enqueued messages, not yet committed.
    type Open: Send + 'static;

    /// Begins a transaction and enqueues `messages` in it (the writer's
    /// `enqueue_many`, which takes one message or several), leaving it open.
    fn begin_and_enqueue(&self, messages: Vec<Message>) -> impl Future<Output = Self::Open> + Send;

    /// Commits a transaction [`begin_and_enqueue`](Self::begin_and_enqueue) left open.
    fn commit(&self, open: Self::Open) -> impl Future<Output = ()> + Send;

    /// The ids of `key`'s rows in the table, in `seq` order.
    fn ids_in_order(&self, key: &str) -> impl Future<Output = Vec<Uuid>> + Send;

    /// How many of this table's writers wait for a key's lock now.
    fn writers_waiting(&self) -> impl Future<Output = usize> + Send;
}

/// A message as a consumer read it back from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The message id as the broker carried it.
    pub id: Uuid,
    /// The body.
    pub payload: Vec<u8>,
    /// Headers, including those the destination adds.
    pub headers: BTreeMap<String, String>,
    /// The event type, from the broker's native field or header.
    pub event_type: Option<String>,
    /// The ordering key, as the consumer reads it.
    pub ordering_key: Option<String>,
}

/// Access to one topic, queue or subject of a real broker.
pub trait DestinationHarness: Send + Sync {
    /// The destination under test.
    type Destination: Destination<Item = Message>;

    /// A destination connected to the broker.
    fn destination(&self) -> impl Future<Output = Self::Destination> + Send;

    /// What to put in `Message::destination` to reach this harness's
    /// topic, queue or subject.
    fn address(&self) -> String;

    /// Reads from the broker until `count` messages arrived or `timeout`
    /// passed, in arrival order.
    fn received(
        &self,
        count: usize,
        timeout: Duration,
    ) -> impl Future<Output = Vec<Received>> + Send;

    /// A message this broker refuses for good (too large, unroutable), or
    /// `None` if it cannot be made to refuse one.
    fn refused_message(&self) -> Option<Message>;

    /// A destination connected to the broker that publishes CloudEvents as
    /// `cloud_events` says, with the binding it follows; `None` (the
    /// default) for a destination without CloudEvents.
    fn cloud_events_destination(
        &self,
        cloud_events: CloudEvents,
    ) -> impl Future<Output = Option<(Self::Destination, CloudEventsBinding)>> + Send {
        let _ = cloud_events;
        async { None }
    }

    /// Messages this broker's protocol cannot carry at all (a header name
    /// or a routing key it does not allow), each with a text its error must
    /// contain and a key of its own. None by default.
    fn unfit_messages(&self) -> Vec<(&'static str, Message)> {
        Vec::new()
    }
}
