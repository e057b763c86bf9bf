//! Scenarios every Destination passes, fed by the in-memory source.

use std::time::Duration;

use outbox_core::memory::MemorySource;
use outbox_core::{
    Incoming, RelayConfig, HEADER_CORRELATION_ID, HEADER_EVENT_VERSION, HEADER_TENANT,
    HEADER_TRACEPARENT,
};

use crate::verify::{assert_order_per_key, eventually, numbered_messages, run_relay};
use crate::DestinationHarness;

const DEADLINE: Duration = Duration::from_secs(30);

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 100,
        send_timeout: Duration::from_secs(5),
        poll_interval_max: Duration::from_millis(50),
        ..RelayConfig::default()
    }
}

/// A W3C trace context, as a writer's span would leave it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// 200 messages over 10 keys reach the broker, each key in order, with id,
/// payload, user headers and event type intact.
pub async fn delivers_in_order_with_metadata<H: DestinationHarness>(harness: &H) {
    let mut messages = numbered_messages(&harness.address(), 10, 20);
    for message in &mut messages {
        message
            .headers
            .insert(HEADER_EVENT_VERSION.to_string(), "3".to_string());
        message
            .headers
            .insert(HEADER_TRACEPARENT.to_string(), TRACEPARENT.to_string());
        message.headers.insert(
            HEADER_CORRELATION_ID.to_string(),
            message.ordering_key.clone(),
        );
        message
            .headers
            .insert(HEADER_TENANT.to_string(), "tenant-7".to_string());
    }
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue(messages.clone());
    let relay = run_relay(source.clone(), harness.destination().await, config());
    let received = harness.received(messages.len(), DEADLINE).await;
    relay.stop().await;

    let by_id: std::collections::HashMap<_, _> = messages.iter().map(|m| (m.id, m)).collect();
    let mut arrivals = Vec::new();
    for got in &received {
        let sent = by_id
            .get(&got.id)
            .unwrap_or_else(|| panic!("received unknown id {}", got.id));
        assert_eq!(got.payload, sent.payload, "payload of {}", got.id);
        assert_eq!(
            got.headers.get("seq"),
            sent.headers.get("seq"),
            "header of {}",
            got.id
        );
        assert_eq!(
            got.headers.get(HEADER_EVENT_VERSION).map(String::as_str),
            Some("3")
        );
        assert_eq!(got.event_type.as_deref(), Some("TestEvent"));
        assert_eq!(
            got.ordering_key.as_deref(),
            Some(sent.ordering_key.as_str()),
            "ordering key of {}",
            got.id
        );
        assert_eq!(
            got.headers.get(HEADER_TRACEPARENT).map(String::as_str),
            Some(TRACEPARENT),
            "trace context of {}",
            got.id
        );
        let incoming = Incoming {
            id: got.id,
            ordering_key: got.ordering_key.clone(),
            event_type: got.event_type.clone(),
            sequence: None,
            headers: got.headers.clone(),
        };
        assert_eq!(
            (
                incoming.correlation_id(),
                incoming.tenant(),
                incoming.event_version()
            ),
            (Some(sent.ordering_key.as_str()), Some("tenant-7"), Some(3)),
            "metadata of {}",
            got.id
        );
        arrivals.push((sent.ordering_key.clone(), got.id));
    }
    assert_order_per_key(&messages, &arrivals);
    assert_eq!(source.waiting(), 0, "delivered messages left in the outbox");
}

/// A message the broker refuses for good is dead-lettered with the broker's
/// reason at its first attempt while the other keys flow.
pub async fn refused_message_is_dead_lettered<H: DestinationHarness>(harness: &H) {
    let Some(refused) = harness.refused_message() else {
        eprintln!("this broker cannot be made to refuse a message; scenario skipped");
        return;
    };
    let messages = numbered_messages(&harness.address(), 5, 4);
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue([refused.clone()]);
    source.enqueue(messages.clone());
    let relay = run_relay(source.clone(), harness.destination().await, config());
    let received = harness.received(messages.len(), DEADLINE).await;
    let dead = eventually(DEADLINE, || async { !source.dead_letters().is_empty() }).await;
    relay.stop().await;
    assert!(dead, "the refused message was not dead-lettered");
    let letters = source.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message.id, refused.id);
    assert_eq!(
        letters[0].message.attempts, 1,
        "a permanent refusal is not retried"
    );
    assert!(!letters[0].error.is_empty());
    assert_eq!(
        received.len(),
        messages.len(),
        "other messages were held back"
    );
    assert!(received.iter().all(|r| r.id != refused.id));
}

/// Messages the broker's protocol cannot carry are dead-lettered at their
/// first attempt with an error naming what is wrong, none of them is
/// published, and the other keys flow.
pub async fn unfit_messages_are_dead_lettered<H: DestinationHarness>(harness: &H) {
    let unfit = harness.unfit_messages();
    if unfit.is_empty() {
        eprintln!("this broker carries every message the outbox can hold; scenario skipped");
        return;
    }
    let messages = numbered_messages(&harness.address(), 5, 4);
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue(unfit.iter().map(|(_, message)| message.clone()));
    source.enqueue(messages.clone());
    let relay = run_relay(source.clone(), harness.destination().await, config());
    let received = harness.received(messages.len(), DEADLINE).await;
    let all_dead = eventually(DEADLINE, || async {
        source.dead_letters().len() >= unfit.len()
    })
    .await;
    relay.stop().await;
    assert!(all_dead, "unfit messages were not all dead-lettered");
    let letters = source.dead_letters();
    for (expected, message) in &unfit {
        let letter = letters
            .iter()
            .find(|letter| letter.message.id == message.id)
            .unwrap_or_else(|| panic!("no dead letter for the message with {expected}"));
        assert_eq!(letter.message.attempts, 1, "{expected}: retried");
        assert!(
            letter.error.contains(expected) && letter.error.contains(&message.id.to_string()),
            "{expected}: {}",
            letter.error
        );
    }
    assert_eq!(
        received.len(),
        messages.len(),
        "other messages were held back, or an unfit one was published"
    );
    assert!(received
        .iter()
        .all(|got| unfit.iter().all(|(_, message)| message.id != got.id)));
}
