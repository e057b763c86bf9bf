//! Scenarios every Destination passes, fed by the in-memory source.

use std::time::Duration;

use outbox_core::memory::MemorySource;
use outbox_core::{
    CloudEvents, CloudEventsBinding, Incoming, Message, RelayConfig, CLOUD_EVENTS_JSON,
    HEADER_CORRELATION_ID, HEADER_EVENT_VERSION, HEADER_TENANT, HEADER_TRACEPARENT,
};

use crate::verify::{assert_order_per_key, eventually, numbered_messages, run_relay};
use crate::{DestinationHarness, Received};

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

/// The `source` attribute the CloudEvents scenarios publish with.
const CLOUD_EVENTS_SOURCE: &str = "/outbox/tests";

/// Sends `messages` through a destination publishing CloudEvents as
/// `cloud_events` says; what arrived, with the binding, or `None` when the
/// destination has no CloudEvents.
async fn through_cloud_events<H: DestinationHarness>(
    harness: &H,
    cloud_events: CloudEvents,
    messages: &[Message],
) -> Option<(Vec<Received>, CloudEventsBinding)> {
    let Some((destination, binding)) = harness.cloud_events_destination(cloud_events).await else {
        eprintln!("this destination has no CloudEvents; scenario skipped");
        return None;
    };
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue(messages.to_vec());
    let relay = run_relay(source.clone(), destination, config());
    let received = harness.received(messages.len(), DEADLINE).await;
    relay.stop().await;
    let arrivals: Vec<_> = received
        .iter()
        .map(|got| (got.ordering_key.clone().unwrap_or_default(), got.id))
        .collect();
    assert_order_per_key(messages, &arrivals);
    Some((received, binding))
}

/// In binary mode each message arrives with its payload as written and
/// the CloudEvents attributes as headers named by the protocol's binding
/// (`ce_`, `cloudEvents:`, `ce-`), beside the outbox's own headers.
pub async fn publishes_cloud_events_in_binary_mode<H: DestinationHarness>(harness: &H) {
    let messages = numbered_messages(&harness.address(), 3, 4);
    let cloud_events = CloudEvents::binary(CLOUD_EVENTS_SOURCE);
    let Some((received, binding)) = through_cloud_events(harness, cloud_events, &messages).await
    else {
        return;
    };
    let prefix = binding.prefix();
    for got in &received {
        let sent = messages.iter().find(|m| m.id == got.id).expect("sent");
        assert_eq!(got.payload, sent.payload, "payload of {}", got.id);
        let attribute = |name: &str| got.headers.get(&format!("{prefix}{name}")).cloned();
        let id = sent.id.to_string();
        for (name, expected) in [
            ("specversion", "1.0"),
            ("id", id.as_str()),
            ("source", CLOUD_EVENTS_SOURCE),
            ("type", "TestEvent"),
            ("subject", sent.ordering_key.as_str()),
        ] {
            assert_eq!(
                attribute(name).as_deref(),
                Some(expected),
                "{prefix}{name} of {} among {:?}",
                got.id,
                got.headers
            );
        }
        let time = attribute("time").expect("a time attribute");
        let time = chrono::DateTime::parse_from_rfc3339(&time).expect("time in RFC 3339");
        assert_eq!(
            time.timestamp_micros(),
            sent.created_at.timestamp_micros(),
            "time of {}",
            got.id
        );
        assert_eq!(got.event_type.as_deref(), Some("TestEvent"));
    }
}

/// In structured mode each message arrives as one JSON CloudEvent with the
/// content type `application/cloudevents+json`, the payload its `data`
/// (JSON) or `data_base64` (anything else), and the outbox's own headers
/// still beside it, so an [`Incoming`] reads it as before.
pub async fn publishes_cloud_events_in_structured_mode<H: DestinationHarness>(harness: &H) {
    let mut messages = numbered_messages(&harness.address(), 3, 4);
    for message in messages.iter_mut().step_by(2) {
        message.payload = format!("{{\"seq\":{}}}", message.headers["seq"]).into_bytes();
        message
            .headers
            .insert("content-type".into(), "application/json".into());
    }
    let cloud_events = CloudEvents::structured(CLOUD_EVENTS_SOURCE);
    let Some((received, _)) = through_cloud_events(harness, cloud_events, &messages).await else {
        return;
    };
    for got in &received {
        let sent = messages.iter().find(|m| m.id == got.id).expect("sent");
        assert_eq!(
            got.headers.get("content-type").map(String::as_str),
            Some(CLOUD_EVENTS_JSON),
            "content type of {}",
            got.id
        );
        let event: serde_json::Value =
            serde_json::from_slice(&got.payload).expect("a JSON CloudEvent");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], sent.id.to_string());
        assert_eq!(event["source"], CLOUD_EVENTS_SOURCE);
        assert_eq!(event["type"], "TestEvent");
        assert_eq!(event["subject"], sent.ordering_key);
        match sent.headers.get("content-type") {
            Some(_) => {
                let data: serde_json::Value = serde_json::from_slice(&sent.payload).unwrap();
                assert_eq!(event["data"], data, "data of {}", got.id);
                assert_eq!(event["datacontenttype"], "application/json");
            }
            None => {
                use base64::Engine;
                let data = event["data_base64"].as_str().expect("data_base64");
                let data = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap();
                assert_eq!(data, sent.payload, "data of {}", got.id);
            }
        }
        assert_eq!(
            got.ordering_key.as_deref(),
            Some(sent.ordering_key.as_str())
        );
    }
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
