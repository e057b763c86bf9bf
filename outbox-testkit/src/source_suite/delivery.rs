//! Scenarios of delivery itself: everything arrives once, in order per key,
//! intact, within the byte budget; failures are retried or dead-lettered.

use std::time::Instant;

use outbox_core::memory::MemoryDestination;
use outbox_core::{Message, RelayConfig, Source, HEADER_SEQUENCE};

use super::{config, DEADLINE, LEASE};
use crate::arrivals;
use crate::verify::{assert_order_per_key, eventually, numbered_messages, run_relay};
use crate::SourceHarness;

/// 600 messages over 20 keys: all arrive, each key in enqueue order, and the
/// table ends empty.
pub async fn order_per_key_and_nothing_lost<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 20, 30);
    harness.enqueue(messages.clone()).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config());
    assert!(
        destination
            .wait_for_distinct(messages.len(), DEADLINE)
            .await,
        "only {} of {} messages arrived",
        destination.distinct_count(),
        messages.len()
    );
    relay.stop().await;
    let duplicates = assert_order_per_key(&messages, &arrivals(&destination));
    assert_eq!(
        duplicates, 0,
        "no failure happened, so no duplicate may arrive"
    );
    assert!(
        eventually(DEADLINE, || async { harness.waiting().await == 0 }).await,
        "delivered messages are still waiting in the outbox"
    );
}

/// Every field of a message comes out of the table as it went in, for a
/// message alone in its transaction and for messages written together (an
/// adapter may write the two with different statements).
pub async fn every_field_survives<H: SourceHarness>(harness: &H) {
    let full = |key: &str| {
        Message::builder("events.fields", key)
            .payload(vec![0, 159, 146, 150, 255, b'{'])
            .header("trace-id", "4bf92f3577b34da6")
            .header("tenant", "Zürich \"east\"")
            .partition_key(format!("{key}/partition"))
            .event_type("FieldsChecked")
            .build()
            .expect("message")
    };
    let bare = Message::builder("events.fields", "bare")
        .payload("x")
        .build()
        .expect("message");
    let alone = full("alone");
    let together = vec![full("together"), bare];
    harness.enqueue(vec![alone.clone()]).await;
    harness.enqueue(together.clone()).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config());
    assert!(
        destination.wait_for_distinct(3, DEADLINE).await,
        "messages did not arrive"
    );
    relay.stop().await;
    let sent = destination.sent();
    for expected in std::iter::once(&alone).chain(&together) {
        let mut got = sent
            .iter()
            .find(|s| s.message.id == expected.id)
            .map(|s| s.message.clone())
            .expect("every message arrived");
        let drift = (got.created_at - expected.created_at).abs();
        assert!(
            drift.num_microseconds() < Some(1_000),
            "created_at of {} came back {drift} off",
            expected.ordering_key
        );
        got.created_at = expected.created_at;
        // A SQL source adds each row's place among its key's messages.
        if let Some(sequence) = got.headers.remove(HEADER_SEQUENCE) {
            assert!(
                sequence.parse::<i64>().is_ok(),
                "{HEADER_SEQUENCE}: {sequence:?}"
            );
        }
        assert_eq!(&got, expected, "a field changed in the table");
    }
}

/// A message failing twice is retried with backoff, then delivered, and the
/// later messages of its key wait for it.
pub async fn retry_then_success<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 1, 3);
    let destination = MemoryDestination::new();
    destination.fail_times(messages[0].id, 2);
    harness.enqueue(messages.clone()).await;
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config());
    assert!(
        destination.wait_for(3, DEADLINE).await,
        "messages did not arrive"
    );
    relay.stop().await;
    assert_order_per_key(&messages, &arrivals(&destination));
    assert_eq!(destination.attempts(messages[0].id), 3);
    let first = &destination.sent()[0];
    assert_eq!(first.message.id, messages[0].id);
    assert_eq!(
        first.message.attempts, 2,
        "the source kept the failed attempts"
    );
}

/// A permanent failure is dead-lettered at once; a message failing every
/// attempt is dead-lettered after `max_attempts`; both keep their reason and
/// other messages are delivered.
pub async fn poison_is_dead_lettered<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 4, 3);
    let refused = messages[0].id;
    let exhausted = messages[1].id;
    let destination = MemoryDestination::new();
    destination.fail_permanently(refused);
    destination.fail_always(exhausted);
    harness.enqueue(messages.clone()).await;
    let config = RelayConfig {
        max_attempts: 3,
        ..config()
    };
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config);
    assert!(
        destination.wait_for(messages.len() - 2, DEADLINE).await,
        "healthy messages did not arrive"
    );
    let settled = eventually(DEADLINE, || async {
        harness.dead_letters().await.len() == 2
    })
    .await;
    relay.stop().await;
    assert!(settled, "dead letters: {:?}", harness.dead_letters().await);
    let dead = harness.dead_letters().await;
    let reason = |id| dead.iter().find(|(d, _)| *d == id).map(|(_, e)| e.clone());
    assert!(reason(refused).unwrap().contains("permanent"), "{dead:?}");
    assert!(
        reason(exhausted)
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{dead:?}"
    );
    assert_eq!(
        destination.attempts(refused),
        1,
        "a permanent error is not retried"
    );
    assert_eq!(destination.attempts(exhausted), 3);
    assert_eq!(harness.waiting().await, 0);
}

/// A destination's error of 100 KiB is stored cut short with the dead
/// letter: recording it never fails the report (a bounded column would
/// refuse it and lose the batch, again and again).
pub async fn a_long_error_is_stored_cut_short<H: SourceHarness>(harness: &H) {
    let messages = numbered_messages("events", 1, 2);
    harness.enqueue(messages.clone()).await;
    let destination = MemoryDestination::new();
    let reason = format!("refused: {}", "é".repeat(50 * 1024));
    destination.fail_permanently_with(messages[0].id, reason);
    let relay = run_relay(harness.relay(LEASE).await, destination.clone(), config());
    let stored = eventually(DEADLINE, || async {
        !harness.dead_letters().await.is_empty()
    })
    .await;
    let next_arrived = destination.wait_for(1, DEADLINE).await;
    relay.stop().await;
    assert!(
        stored,
        "the dead letter with a long error was never recorded"
    );
    assert!(next_arrived, "the key's next message never arrived");
    let dead = harness.dead_letters().await;
    let (id, error) = &dead[0];
    assert_eq!(*id, messages[0].id);
    assert!(error.starts_with("refused: éé"), "{error:.80}");
    assert!(
        error.len() <= outbox_core::MAX_ERROR_BYTES,
        "stored error of {} bytes",
        error.len()
    );
}

/// Claims stay within the source's byte budget: a claim stops before the
/// row that would take it past the budget, a row larger than the budget
/// comes alone, and everything arrives, each key in order.
pub async fn a_claim_stays_within_its_byte_budget<H: SourceHarness>(harness: &H) {
    const MIB: usize = 1 << 20;
    let budget = 5 * MIB / 2;
    let sized = |key: &str, size: usize, fill: u8| {
        Message::builder("events", key)
            .payload(vec![fill; size])
            .build()
            .unwrap()
    };
    let messages = vec![
        sized("big-a", MIB, b'1'),
        sized("big-a", MIB, b'2'),
        sized("big-b", 3 * MIB, b'3'),
        sized("big-a", MIB, b'4'),
        sized("big-b", 1024, b'5'),
        sized("big-a", MIB, b'6'),
    ];
    harness.enqueue(messages.clone()).await;
    let relay = harness.budgeted_relay(LEASE, budget).await;
    let mut claims = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while claims.iter().map(Vec::len).sum::<usize>() < messages.len() {
        assert!(Instant::now() < deadline, "claimed only {claims:?}");
        let claim = relay.claim(500).await.expect("claim");
        let bytes: usize = claim.iter().map(|m| m.payload.len()).sum();
        assert!(
            bytes <= budget || claim.len() == 1,
            "a claim of {} rows holds {bytes} payload bytes, over its budget of {budget}",
            claim.len()
        );
        for message in claim.iter() {
            let sent = messages.iter().find(|m| m.id == message.id).expect("known");
            assert_eq!(message.payload, sent.payload, "a payload came back changed");
        }
        if !claim.is_empty() {
            claims.push(
                claim
                    .iter()
                    .map(|m| m.payload[0] - b'0')
                    .collect::<Vec<u8>>(),
            );
            relay.ack(claim.id(), &claim).await.expect("ack");
        }
    }
    if harness.claims_take_lanes() {
        // Each key in its order, the large row alone.
        let order = |key: &[u8]| -> Vec<u8> {
            claims
                .iter()
                .flatten()
                .copied()
                .filter(|m| key.contains(m))
                .collect()
        };
        assert_eq!(order(&[1, 2, 4, 6]), vec![1, 2, 4, 6], "{claims:?}");
        assert_eq!(order(&[3, 5]), vec![3, 5], "{claims:?}");
        assert!(
            claims.contains(&vec![3]),
            "the large row not alone: {claims:?}"
        );
    } else {
        assert_eq!(
            claims,
            vec![vec![1, 2], vec![3], vec![4, 5, 6]],
            "claims in enqueue order, each cut before its budget, the large row alone"
        );
    }
    assert_eq!(harness.waiting().await, 0);
}
