//! Scenarios every SQL outbox table passes, whatever its database: the
//! writer's atomicity, relays sharing one table, and the operator's calls
//! ([`outbox_sql::Operator`]). Each database's test file implements
//! [`TableHarness`] and expands [`table_conformance!`](crate::table_conformance).

use std::future::Future;
use std::time::{Duration, Instant};

use outbox_core::memory::MemoryDestination;
use outbox_core::{
    Event, Failure, Message, Metadata, OnDeadLetter, RelayConfig, Source, HEADER_CAUSATION_ID,
    HEADER_CORRELATION_ID, HEADER_EVENT_VERSION, HEADER_TENANT, HEADER_USER,
};
use outbox_sql::{AckMode, Operator};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    arrivals, assert_order_per_key, eventually, fast_relay_config, numbered_messages, run_relay,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// What a scenario asks of its fresh table; everything else is the
/// database's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableSetup {
    /// Delete delivered rows, or mark them done.
    pub ack_mode: AckMode,
    /// Whether a dead letter holds back the later messages of its key.
    pub on_dead_letter: OnDeadLetter,
}

impl TableSetup {
    /// Delivered rows are marked done and kept for `cleanup`.
    pub const MARK_DONE: Self = Self {
        ack_mode: AckMode::MarkDone,
        on_dead_letter: OnDeadLetter::Continue,
    };

    /// A dead letter parks its key until an operator requeues it.
    pub const PARKING: Self = Self {
        ack_mode: AckMode::Delete,
        on_dead_letter: OnDeadLetter::Park,
    };
}

/// A table name for a scenario, short enough for any database's identifier
/// limit: `tbl_` and the first letter of each word of the scenario's name.
pub fn table_name(scenario: &str) -> String {
    let initials: String = scenario
        .split('_')
        .filter_map(|word| word.chars().next())
        .collect();
    format!("tbl_{initials}")
}

/// One outbox table of a real database.
pub trait TableHarness: Send + Sync {
    /// The table's handle, as an operator (and a relay) sees it.
    fn operator(&self) -> &dyn Operator;

    /// Begins a transaction, enqueues `messages` in it with the writer's
    /// `enqueue_many`, and commits it when `commit` (waking relays the way
    /// the database's writers do), rolls it back otherwise.
    fn write(&self, messages: Vec<Message>, commit: bool) -> impl Future<Output = ()> + Send;

    /// Rows in the outbox table: waiting, delivered but kept, or dead.
    fn rows(&self) -> impl Future<Output = u64> + Send;

    /// Writes `event` to `orders` with the writer's `enqueue_event_with`
    /// in a transaction of its own, commits it, and returns the message.
    fn write_event(
        &self,
        event: &OrderPlaced,
        metadata: &Metadata,
    ) -> impl Future<Output = Message> + Send;
}

/// The typed event of [`a_typed_event_is_written_with_its_metadata`].
#[derive(Debug, Clone, Serialize)]
pub struct OrderPlaced {
    /// The order, the aggregate.
    pub order_id: u64,
    /// Its total.
    pub total_cents: u64,
}

impl Event for OrderPlaced {
    fn event_type(&self) -> &str {
        "OrderPlaced"
    }

    fn aggregate_id(&self) -> String {
        format!("order-{}", self.order_id)
    }

    fn version(&self) -> u32 {
        2
    }
}

async fn nothing_waits(table: &impl TableHarness) -> bool {
    eventually(DEADLINE, || async {
        table.operator().backlog().await.unwrap().waiting == 0
    })
    .await
}

/// A message enqueued in a transaction that rolls back never exists; one in
/// a transaction that commits exists with its business row and is delivered.
pub async fn a_rolled_back_message_never_exists_and_a_committed_one_is_delivered(
    table: &impl TableHarness,
) {
    let lost = Message::builder("orders", "order-1")
        .payload("lost")
        .build()
        .unwrap();
    let kept = Message::builder("orders", "order-2")
        .payload("kept")
        .build()
        .unwrap();
    table.write(vec![lost], false).await;
    table.write(vec![kept.clone()], true).await;
    assert_eq!(table.rows().await, 1, "outbox rows");

    let destination = MemoryDestination::new();
    let source = table.operator().relay_source().await.unwrap();
    let relay = run_relay(source, destination.clone(), fast_relay_config());
    assert!(
        destination.wait_for(1, DEADLINE).await,
        "the committed message was not delivered"
    );
    assert!(nothing_waits(table).await, "the delivered row still waits");
    relay.stop().await;
    let sent: Vec<Uuid> = destination.sent().iter().map(|s| s.message.id).collect();
    assert_eq!(
        sent,
        vec![kept.id],
        "only the committed message may be published"
    );
}

/// A typed event written with `enqueue_event_with` is delivered as JSON
/// with its type, version and every piece of metadata.
pub async fn a_typed_event_is_written_with_its_metadata(table: &impl TableHarness) {
    let event = OrderPlaced {
        order_id: 7,
        total_cents: 1250,
    };
    let metadata = Metadata {
        correlation_id: Some("checkout-17".into()),
        causation_id: Some("request-3".into()),
        tenant: Some("acme".into()),
        user: Some("u-42".into()),
        partition_key: Some("region-eu".into()),
    };
    let written = table.write_event(&event, &metadata).await;
    let destination = MemoryDestination::new();
    let source = table.operator().relay_source().await.unwrap();
    let relay = run_relay(source, destination.clone(), fast_relay_config());
    let delivered = destination.wait_for(1, DEADLINE).await;
    relay.stop().await;
    assert!(delivered, "the event was not delivered");
    let sent = destination.sent().remove(0).message;
    assert_eq!(sent.id, written.id);
    assert_eq!(sent.ordering_key, "order-7");
    assert_eq!(sent.event_type.as_deref(), Some("OrderPlaced"));
    assert_eq!(sent.partition_key.as_deref(), Some("region-eu"));
    let payload: serde_json::Value = serde_json::from_slice(&sent.payload).unwrap();
    assert_eq!(payload["total_cents"], 1250);
    for (header, expected) in [
        (HEADER_CORRELATION_ID, "checkout-17"),
        (HEADER_CAUSATION_ID, "request-3"),
        (HEADER_TENANT, "acme"),
        (HEADER_USER, "u-42"),
        (HEADER_EVENT_VERSION, "2"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(
            sent.headers.get(header).map(String::as_str),
            Some(expected),
            "{header} among {:?}",
            sent.headers
        );
    }
}

/// Four relays drain one table of 20,000 messages over 500 keys together:
/// every message arrives, each key in order, and the work is shared.
pub async fn four_relays_keep_each_key_in_order_and_lose_nothing(table: &impl TableHarness) {
    let messages = numbered_messages("orders", 500, 40);
    for chunk in messages.chunks(1000) {
        table.write(chunk.to_vec(), true).await;
    }
    let destination = MemoryDestination::new();
    let config = RelayConfig {
        batch_size: 200,
        ..fast_relay_config()
    };
    let mut relays = Vec::new();
    for _ in 0..4 {
        let source = table.operator().relay_source().await.unwrap();
        relays.push(run_relay(source, destination.clone(), config.clone()));
    }
    let started = Instant::now();
    // Every key has a message in flight most of the time, so most of each
    // claim's candidates stay behind: slow databases need the long deadline.
    assert!(
        destination
            .wait_for_distinct(messages.len(), Duration::from_secs(240))
            .await,
        "{} of {} arrived",
        destination.distinct_count(),
        messages.len()
    );
    let elapsed = started.elapsed();
    let per_relay: Vec<u64> = relays
        .iter()
        .map(|r| r.stats.snapshot().counts.published)
        .collect();
    for relay in relays {
        relay.stop().await;
    }
    let duplicates = assert_order_per_key(&messages, &arrivals(&destination));
    println!(
        "4 relays: {} messages over 500 keys in {elapsed:?}, per relay {per_relay:?}, \
         {duplicates} duplicates",
        messages.len()
    );
    assert!(
        per_relay.iter().filter(|&&n| n > 0).count() >= 2,
        "the relays did not share the work: {per_relay:?}"
    );
    assert!(
        nothing_waits(table).await,
        "rows still wait after the drain"
    );
}

fn refused(item: &Message, attempts: u32) -> Failure<Message> {
    Failure {
        item: item.clone(),
        error: "refused by the broker".into(),
        attempts,
        retry_after: Duration::ZERO,
    }
}

/// The operator's calls on a mark-done table: the backlog counts, dead
/// letters are listed with their reason and attempts, `requeue` and
/// `requeue_all` put them back with attempts reset, `cleanup` removes only
/// delivered rows old enough, in batches, and `migrate` and `prune` can run
/// again at any time.
pub async fn operators_requeue_dead_letters_and_clean_up_delivered_rows(table: &impl TableHarness) {
    let operator = table.operator();
    let messages = numbered_messages("orders", 3, 2);
    table.write(messages.clone(), true).await;
    let backlog = operator.backlog().await.unwrap();
    assert_eq!((backlog.waiting, backlog.dead_letters), (6, 0));

    let source = operator.relay_source().await.unwrap();
    let claimed = source.claim(100).await.unwrap();
    assert_eq!(claimed.len(), 6);
    let (dead, delivered) = claimed.split_at(1);
    let dead = dead[0].clone();
    source
        .dead_letter(claimed.id(), &[refused(&dead, 1)])
        .await
        .unwrap();
    source.ack(claimed.id(), delivered).await.unwrap();
    let backlog = operator.backlog().await.unwrap();
    assert_eq!((backlog.waiting, backlog.dead_letters), (0, 1));
    let letters = operator.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, dead.id);
    assert_eq!(letters[0].error, "refused by the broker");
    assert_eq!(letters[0].message.as_ref().map(|m| m.id), Some(dead.id));
    assert_eq!(letters[0].attempts, 1);

    assert_eq!(operator.requeue(&[dead.id]).await.unwrap(), 1);
    assert_eq!(operator.count_dead_letters().await.unwrap(), 0);
    let again = source.claim(100).await.unwrap();
    let ids: Vec<Uuid> = again.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![dead.id], "the requeued message is claimed again");
    assert_eq!(again[0].attempts, 0, "requeue resets attempts");
    source
        .dead_letter(again.id(), &[refused(&again[0], 3)])
        .await
        .unwrap();
    assert_eq!(operator.count_dead_letters().await.unwrap(), 1);
    assert_eq!(operator.requeue_all().await.unwrap(), 1);
    let last = source.claim(100).await.unwrap();
    assert_eq!(last.iter().map(|m| m.id).collect::<Vec<_>>(), vec![dead.id]);
    source.ack(last.id(), &last).await.unwrap();
    let backlog = operator.backlog().await.unwrap();
    assert_eq!((backlog.waiting, backlog.dead_letters), (0, 0));

    assert_eq!(table.rows().await, 6, "mark-done keeps delivered rows");
    assert_eq!(
        operator
            .cleanup(Duration::from_secs(3600), 2)
            .await
            .unwrap(),
        0,
        "nothing is old enough yet"
    );
    assert_eq!(operator.cleanup(Duration::ZERO, 2).await.unwrap(), 6);
    assert_eq!(table.rows().await, 0);
    operator.prune(1000).await.unwrap();
    operator.migrate().await.unwrap();
    assert_eq!(operator.backlog().await.unwrap().waiting, 0);
}

/// `waiting` lists what waits in the order it was written, with a failed
/// attempt's error and next attempt, and leaves out what was delivered or
/// dead-lettered.
pub async fn operators_list_the_messages_waiting_oldest_first(table: &impl TableHarness) {
    let operator = table.operator();
    let messages = numbered_messages("orders", 3, 2);
    table.write(messages.clone(), true).await;
    let listed = operator.waiting(4).await.unwrap();
    let ids: Vec<Uuid> = listed.iter().map(|w| w.id).collect();
    let written: Vec<Uuid> = messages[..4].iter().map(|m| m.id).collect();
    assert_eq!(ids, written, "the oldest four, in the order written");
    assert_eq!(
        listed[1].message.as_ref().map(|m| &m.ordering_key),
        Some(&messages[1].ordering_key)
    );
    assert!(listed
        .iter()
        .all(|w| w.attempts == 0 && w.last_error.is_none()));

    let source = operator.relay_source().await.unwrap();
    let claimed = source.claim(100).await.unwrap();
    assert_eq!(claimed.len(), 6);
    let (failed, dead, delivered) = (&claimed[0], &claimed[1], &claimed[2..]);
    let retry = Failure {
        item: failed.clone(),
        error: "broker timed out".into(),
        attempts: 1,
        retry_after: Duration::from_secs(600),
    };
    source.retry(claimed.id(), &[retry]).await.unwrap();
    source
        .dead_letter(claimed.id(), &[refused(dead, 1)])
        .await
        .unwrap();
    source.ack(claimed.id(), delivered).await.unwrap();
    let listed = operator.waiting(100).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, failed.id);
    assert_eq!(listed[0].attempts, 1);
    assert_eq!(listed[0].last_error.as_deref(), Some("broker timed out"));
    let next: std::time::SystemTime = listed[0].next_attempt_at.into();
    let due_in = next
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        due_in > Duration::from_secs(300),
        "next attempt after the backoff, not {due_in:?} from now"
    );
}

/// With dead letters parking their keys, a message the broker refuses holds
/// back the rest of its key while other keys flow; once requeued it is
/// delivered and its key resumes in order.
pub async fn a_requeued_dead_letter_is_delivered_and_a_parked_key_resumes_in_order(
    table: &impl TableHarness,
) {
    let operator = table.operator();
    let messages = numbered_messages("orders", 2, 3);
    let destination = MemoryDestination::new();
    destination.fail_permanently(messages[0].id);
    table.write(messages.clone(), true).await;
    let source = operator.relay_source().await.unwrap();
    let relay = run_relay(source, destination.clone(), fast_relay_config());
    assert!(
        destination.wait_for(3, DEADLINE).await,
        "key-1 did not flow"
    );
    assert!(
        eventually(DEADLINE, || async {
            operator.count_dead_letters().await.unwrap() == 1
        })
        .await,
        "the refused message was not dead-lettered"
    );
    // Absence cannot be awaited: give the relay a few polls in which it
    // must not send the parked key's later messages.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        destination.sent_count(),
        3,
        "a parked key's later messages went out"
    );
    assert_eq!(operator.backlog().await.unwrap().waiting, 2);
    destination.heal();
    assert_eq!(operator.requeue(&[messages[0].id]).await.unwrap(), 1);
    assert!(
        destination.wait_for(6, DEADLINE).await,
        "the parked key did not resume"
    );
    relay.stop().await;
    assert_order_per_key(&messages, &arrivals(&destination));
    assert_eq!(operator.count_dead_letters().await.unwrap(), 0);
    assert!(nothing_waits(table).await);
}
