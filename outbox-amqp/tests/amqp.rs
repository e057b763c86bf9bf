//! outbox-amqp against a real RabbitMQ (`OUTBOX_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Every test owns its queue; the
//! test that cuts connections cuts only its own.

use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use outbox_amqp::{AmqpConfig, AmqpDestination};
use outbox_core::memory::{MemoryDeadLetter, MemorySource};
use outbox_core::{
    Backoff, CloudEvents, CloudEventsBinding, Message, RelayConfig, HEADER_MESSAGE_ID,
};
use outbox_testkit::{
    assert_order_per_key, assert_recovered, eventually, numbered_messages, run_relay,
    DestinationHarness, Received,
};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("OUTBOX_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

fn config(name: &str) -> AmqpConfig {
    AmqpConfig {
        url: url(),
        connection_name: name.to_string(),
        ..AmqpConfig::default()
    }
}

/// A durable queue of the test's own, emptied.
async fn fresh_queue(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .expect("purge queue");
}

/// Reads the queue until `count` distinct messages arrived (duplicates
/// included in the result) and the queue is empty, or `timeout` passed.
async fn drain(channel: &Channel, queue: &str, count: usize, timeout: Duration) -> Vec<Received> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut distinct = std::collections::HashSet::new();
    while Instant::now() < deadline {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        let Some(message) = got else {
            if distinct.len() >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let properties = &message.delivery.properties;
        let incoming = outbox_amqp::incoming(&message.delivery).expect("an outbox message");
        let id = properties
            .message_id()
            .as_ref()
            .expect("message_id")
            .as_str()
            .parse()
            .expect("uuid");
        assert_eq!(id, incoming.id, "message_id and the outbox header differ");
        assert_eq!(properties.delivery_mode(), &Some(2), "not persistent");
        distinct.insert(id);
        received.push(Received {
            id,
            payload: message.delivery.data.clone(),
            event_type: properties.kind().as_ref().map(|k| k.as_str().to_string()),
            ordering_key: incoming.ordering_key,
            headers: incoming.headers,
        });
    }
    received
}

struct AmqpQueue {
    queue: String,
    reader: AmqpDestination,
}

impl DestinationHarness for AmqpQueue {
    type Destination = AmqpDestination;

    async fn destination(&self) -> AmqpDestination {
        AmqpDestination::connect(config("outbox-test"))
            .await
            .expect("connect")
    }

    async fn cloud_events_destination(
        &self,
        cloud_events: CloudEvents,
    ) -> Option<(AmqpDestination, CloudEventsBinding)> {
        let config = AmqpConfig {
            cloud_events: Some(cloud_events),
            ..config("outbox-test")
        };
        let destination = AmqpDestination::connect(config).await.expect("connect");
        Some((destination, CloudEventsBinding::Amqp))
    }

    fn address(&self) -> String {
        self.queue.clone()
    }

    async fn received(&self, count: usize, timeout: Duration) -> Vec<Received> {
        drain(
            &self.reader.channel().await.unwrap(),
            &self.queue,
            count,
            timeout,
        )
        .await
    }

    fn refused_message(&self) -> Option<Message> {
        // amq.direct exists; nothing is bound for this key, so it is unroutable.
        Some(
            Message::builder(format!("amq.direct/unbound-{}", Uuid::now_v7()), "refused")
                .build()
                .unwrap(),
        )
    }

    /// Names over an AMQP short string's 255 bytes, on which lapin panics.
    fn unfit_messages(&self) -> Vec<(&'static str, Message)> {
        let long = "x".repeat(256);
        let queue = self.address();
        [
            (
                "the routing key",
                Message::builder(long.clone(), "routing-key"),
            ),
            (
                "the exchange",
                Message::builder(format!("{long}/{queue}"), "exchange"),
            ),
            (
                "the event type",
                Message::builder(queue.clone(), "event-type").event_type(long.clone()),
            ),
            (
                "the header name",
                Message::builder(queue.clone(), "header-name").header(long.clone(), "v"),
            ),
            (
                "the content-type header",
                Message::builder(queue, "content-type").header("content-type", long),
            ),
        ]
        .into_iter()
        .map(|(expected, builder)| (expected, builder.build().unwrap()))
        .collect()
    }
}

async fn amqp_queue(scenario: &'static str) -> AmqpQueue {
    let reader = AmqpDestination::connect(config("outbox-test-reader"))
        .await
        .expect("RabbitMQ reachable at OUTBOX_AMQP_URL");
    let queue = format!("outbox-test.{scenario}");
    fresh_queue(&reader.channel().await.unwrap(), &queue).await;
    AmqpQueue { queue, reader }
}

mod conformance {
    use super::*;
    outbox_testkit::destination_conformance!(amqp_queue);
}

#[tokio::test]
async fn wrong_credentials_fail_at_start_up_without_showing_the_password() {
    let err = AmqpDestination::connect(AmqpConfig {
        url: "amqp://guest:not-the-password@127.0.0.1:5672/%2f"
            .replace("127.0.0.1:5672", host_port().as_str()),
        ..AmqpConfig::default()
    })
    .await
    .unwrap_err();
    assert!(
        !err.report().contains("not-the-password"),
        "{}",
        err.report()
    );
}

fn host_port() -> String {
    let url = url();
    let after = url.split_once('@').map_or(url.as_str(), |(_, h)| h);
    after
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:5672")
        .to_string()
}

/// `rabbitmqctl`, for the node of `OUTBOX_RABBITMQ_NODE` if set.
fn rabbitmqctl() -> Command {
    let mut command = Command::new("rabbitmqctl");
    if let Ok(node) = std::env::var("OUTBOX_RABBITMQ_NODE") {
        if !node.is_empty() {
            command.args(["-n", node.as_str()]);
        }
    }
    command
}

/// Closes, through rabbitmqctl, every connection whose name is `name`.
fn close_connections(name: &str) -> usize {
    let listing = rabbitmqctl()
        .args([
            "-q",
            "list_connections",
            "pid",
            "client_properties",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let mut closed = 0;
    for line in listing.lines().filter(|line| line.contains(name)) {
        let pid = line.split_whitespace().next().unwrap_or_default();
        let status = rabbitmqctl()
            .args(["-q", "close_connection", pid, "outbox test closes it"])
            .status()
            .expect("rabbitmqctl runs");
        closed += usize::from(status.success());
    }
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reconnects_after_its_connection_is_closed_and_nothing_is_lost() {
    let harness = amqp_queue("forced_close").await;
    let name = format!("outbox-test-close-{}", Uuid::now_v7());
    let destination = AmqpDestination::connect(config(&name)).await.unwrap();
    let messages = numbered_messages(&harness.queue, 20, 500);
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue(messages.clone());
    let relay_config = RelayConfig {
        batch_size: 50,
        // Slow enough (two keys at a time, one confirm each) for rabbitmqctl
        // to find and close the connection mid-stream.
        max_concurrent_keys: 2,
        max_attempts: 1000,
        send_timeout: Duration::from_secs(5),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            ..Backoff::default()
        },
        ..RelayConfig::default()
    };
    let relay = run_relay(source.clone(), destination, relay_config);
    let stats = relay.stats.clone();
    assert!(
        eventually(DEADLINE, || async {
            stats.snapshot().counts.published >= 200
        })
        .await
    );
    let mut closed = 0;
    for _ in 0..2 {
        closed += close_connections(&name);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let published_at_close = stats.snapshot().counts.published;
    let drained = eventually(DEADLINE, || async { source.waiting() == 0 }).await;
    relay.stop().await;
    assert!(closed >= 1, "no connection named {name} was found to close");
    assert_recovered(&source, drained, published_at_close, messages.len());
    let received = harness.received(messages.len(), DEADLINE).await;
    let arrivals: Vec<(String, Uuid)> = received
        .iter()
        .map(|r| {
            let key = messages
                .iter()
                .find(|m| m.id == r.id)
                .unwrap()
                .ordering_key
                .clone();
            assert_eq!(r.headers.get(HEADER_MESSAGE_ID), Some(&r.id.to_string()));
            (key, r.id)
        })
        .collect();
    let duplicates = assert_order_per_key(&messages, &arrivals);
    println!(
        "forced close: {closed} connection(s) closed after {published_at_close} published; {} retried, {duplicates} duplicates",
        stats.snapshot().counts.retried
    );
}

/// Runs `refused` among 200 messages of 20 other keys, in the same batches,
/// and returns the dead letters of `refused` once each has one. RabbitMQ
/// refuses such a publish by closing the channel, which fails the confirms
/// of the others waiting on it too; checks that each other message still
/// arrives, in order per key, with no dead letter and no retry.
async fn refused_among_others(
    scenario: &'static str,
    refused: &[Message],
) -> Vec<MemoryDeadLetter> {
    let harness = amqp_queue(scenario).await;
    let messages = numbered_messages(&harness.queue, 20, 10);
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue(messages[..100].iter().cloned());
    source.enqueue(refused.iter().cloned());
    source.enqueue(messages[100..].iter().cloned());
    let relay_config = RelayConfig {
        batch_size: 100,
        send_timeout: Duration::from_secs(20),
        poll_interval_max: Duration::from_millis(50),
        ..RelayConfig::default()
    };
    let relay = run_relay(source.clone(), harness.destination().await, relay_config);
    let stats = relay.stats.clone();
    let received = harness.received(messages.len(), DEADLINE).await;
    let all_dead = eventually(DEADLINE, || async {
        source.dead_letters().len() >= refused.len()
    })
    .await;
    relay.stop().await;

    assert!(
        all_dead,
        "not every refused message was dead-lettered within {DEADLINE:?}; dead letters: {:?}, \
         still waiting in the outbox: {} (0: taken as stored)",
        source.dead_letters(),
        source.waiting()
    );
    let (letters, others): (Vec<_>, Vec<_>) = source
        .dead_letters()
        .into_iter()
        .partition(|letter| refused.iter().any(|m| m.id == letter.message.id));
    assert!(
        others.is_empty(),
        "{} messages of other keys were dead-lettered, the first with: {}",
        others.len(),
        others[0].error
    );
    let arrivals: Vec<(String, Uuid)> = received
        .iter()
        .map(|r| {
            let sent = messages.iter().find(|m| m.id == r.id).expect("known id");
            (sent.ordering_key.clone(), r.id)
        })
        .collect();
    assert_order_per_key(&messages, &arrivals);
    assert_eq!(
        stats.snapshot().counts.retried,
        0,
        "other keys' messages were retried after the channel closed"
    );
    for letter in &letters {
        assert_eq!(letter.message.attempts, 1, "retried: {}", letter.error);
    }
    letters
}

/// Messages to an exchange that does not exist (RabbitMQ: 404 NOT_FOUND)
/// are dead-lettered at once with the broker's reason naming the exchange;
/// the other keys flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_an_exchange_that_does_not_exist_are_dead_lettered_and_others_flow() {
    let exchange = format!("outbox-test-missing-{}", Uuid::now_v7().simple());
    let missing: Vec<Message> = (0..5)
        .map(|n| {
            Message::builder(
                format!("{exchange}/outbox-test.missing_exchange"),
                format!("gone-{n}"),
            )
            .build()
            .unwrap()
        })
        .collect();
    let letters = refused_among_others("missing_exchange", &missing).await;
    assert_eq!(letters.len(), missing.len(), "{letters:?}");
    for letter in &letters {
        assert!(
            letter.error.replace('-', "_").contains("NOT_FOUND")
                && letter.error.contains(&exchange),
            "the reason does not name the missing exchange: {}",
            letter.error
        );
    }
}

/// A payload one byte over the node's `max_message_size` (RabbitMQ: 406
/// PRECONDITION_FAILED) is dead-lettered at once with the broker's reason;
/// the other keys flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_brokers_size_limit_is_dead_lettered_and_others_flow() {
    let limit = max_message_size();
    let queue = "outbox-test.too_large";
    let too_large = Message::builder(queue, "too-large")
        .payload(vec![b'x'; limit + 1])
        .build()
        .unwrap();
    let letters = refused_among_others("too_large", &[too_large]).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].error.contains(&format!("{}", limit + 1))
            && letters[0].error.contains("larger than"),
        "the reason does not give the size: {}",
        letters[0].error
    );
}

/// The node's `max_message_size` (RabbitMQ's default, 128 MiB, if unset).
fn max_message_size() -> usize {
    let output = rabbitmqctl()
        .args(["eval", "application:get_env(rabbit, max_message_size)."])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().strip_prefix("{ok,") {
        Some(rest) => rest.trim_end_matches('}').parse().unwrap_or_else(|_| {
            panic!("rabbitmqctl printed an unexpected max_message_size: {text}")
        }),
        None => 128 << 20,
    }
}

/// Unroutable messages (no queue bound for their routing key) among others
/// of the same batches: RabbitMQ returns each (`mandatory`) before its
/// confirm. Each is dead-lettered at once as unroutable, and no other
/// message is taken for one. lapin 4.12 hands a returned message to the
/// next confirm it completes, which need not be the returned message's: it
/// failed in about one run of four (a routed message dead-lettered as
/// unroutable, so an unroutable one counted as sent) before the shared
/// channel's confirms were read by one task that tells each return's owner
/// by its message id (`confirms.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_among_others_are_dead_lettered_and_only_they() {
    let unroutable: Vec<Message> = (0..50)
        .map(|n| {
            Message::builder(
                format!("amq.direct/unbound-{}", Uuid::now_v7().simple()),
                format!("unroutable-{n}"),
            )
            .build()
            .unwrap()
        })
        .collect();
    let letters = refused_among_others("unroutable", &unroutable).await;
    assert_eq!(letters.len(), unroutable.len(), "{letters:?}");
    for letter in &letters {
        assert!(letter.error.contains("unroutable"), "{}", letter.error);
    }
}
