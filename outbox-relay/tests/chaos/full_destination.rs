//! A destination filled until it refuses, then drained: a JetStream work
//! queue and a RabbitMQ queue that hold at most `CAPACITY` messages and
//! refuse new ones when full. The relay must retry what is refused (no
//! dead letters within its attempts), keep each key's order, and deliver
//! everything once a consumer makes room. The Kafka-protocol broker of the
//! tests (tansu) has no quota to refuse with, so for Kafka the full part is
//! the producer's own queue.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use outbox_amqp::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use outbox_amqp::lapin::types::{AMQPValue, FieldTable, ShortString};
use outbox_amqp::{AmqpConfig, AmqpDestination};
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages};

use crate::brokers::{kafka_topic, KAFKA_PARTITIONS};
use crate::support::*;

const CAPACITY: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_until_drained_and_nothing_is_lost() {
    let subject = "relay-chaos-full";
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"));
    let _ = js.delete_stream("RELAY_CHAOS_FULL").await;
    let stream = js
        .create_stream(stream::Config {
            name: "RELAY_CHAOS_FULL".into(),
            subjects: vec![format!("{subject}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            max_messages: CAPACITY as i64,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    fill_then_drain(
        "nats",
        &format!("kind = \"nats\"\nurl = \"{}\"", nats_url()),
        &format!("{subject}.orders"),
        "maximum messages",
        async || stream.clone().info().await.unwrap().state.messages,
        async || Publishes::pull(&stream).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_until_drained_and_nothing_is_lost() {
    let queue = format!("relay_chaos_full_{}", uuid::Uuid::now_v7().simple());
    let channel = AmqpDestination::connect(AmqpConfig {
        url: amqp_url(),
        connection_name: "outbox-chaos-full".into(),
        ..AmqpConfig::default()
    })
    .await
    .expect("RabbitMQ reachable")
    .channel()
    .await
    .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(CAPACITY as i64),
    );
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let declare = |passive| QueueDeclareOptions {
        passive,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), declare(false), arguments)
        .await
        .unwrap();
    let held = async || {
        channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                declare(true),
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count() as u64
    };
    fill_then_drain(
        "amqp",
        &format!("kind = \"amqp\"\nurl = \"{}\"", amqp_url()),
        &queue,
        "nack",
        held,
        async || Publishes::amqp(&queue).await,
    )
    .await;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// librdkafka's queue held to 50 messages (`queue.buffering.max.messages`)
/// while 20 keys send 10 messages each at once: a send waits for room as
/// the broker acknowledges, so nothing fails, nothing is retried and every
/// message arrives in order. (Counted as failures, the refusals were
/// retried 45 – 55 times and the 1,000 messages took 8 – 11 s instead of
/// 1.3 – 1.7; with room for 10, 157 of them had arrived after two
/// minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_is_waited_out_and_nothing_is_lost() {
    let topic = kafka_topic("full").await;
    let received = Publishes::kafka(&topic, KAFKA_PARTITIONS);
    let table_name = "chaos_full_kafka";
    let (outbox, pool) = table(table_name).await;
    let messages = numbered_messages(&topic, 20, 50);
    commit(&outbox, &pool, &messages).await;

    let port = spare_port();
    let config = settings_with(
        &postgres_source(table_name),
        // A delivery timeout of 16 s lets a send wait up to 2 s for room,
        // which a loaded machine may need.
        &format!(
            "kind = \"kafka\"\nbrokers = \"{}\"\ntimeout_ms = 16000\n\
             [destination.properties]\n\"queue.buffering.max.messages\" = 50",
            kafka_brokers()
        ),
        table_name,
        port,
        "batch_size = 200\nsend_timeout = 20000",
    );
    let child = relay(&config, &["run"]).spawn().unwrap();
    let all = eventually(DEADLINE, || async { received.has_all(&messages) }).await;
    let drained = eventually(DEADLINE, || async {
        outbox.backlog().await.unwrap().waiting == 0
    })
    .await;
    let retried = metric(port, "outbox_retried_total").await;
    let published = metric(port, "outbox_published_total").await;
    sigterm(&child);
    let (code, text) = finish(child, Duration::from_secs(30)).await;
    assert!(
        all && drained,
        "not everything arrived: {} arrivals of {} messages:\n{text}",
        received.count(),
        messages.len()
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        published,
        Some(messages.len() as f64),
        "the relay's count:\n{text}"
    );
    assert_eq!(
        retried,
        Some(0.0),
        "a full queue is waited out, not retried:\n{text}"
    );
    let duplicates = assert_order_per_key(&messages, &received.keyed(&messages));
    assert_eq!(outbox.count_dead_letters().await.unwrap(), 0);
    println!(
        "full producer queue kafka: {} messages through room for 50, none retried; \
         {duplicates} duplicates; in order per key",
        messages.len()
    );
}

/// Commits 1,000 messages over 20 keys for `destination`, runs a relay
/// until the destination holds `CAPACITY` (`held`) and has refused at least
/// 20 sends, checks nothing was dead-lettered or dropped, then starts the
/// consumer (`drain`) and checks everything arrives in order per key.
async fn fill_then_drain(
    name: &str,
    destination_settings: &str,
    destination: &str,
    refusal: &str,
    held: impl AsyncFn() -> u64,
    drain: impl AsyncFnOnce() -> Publishes,
) {
    let table_name = format!("chaos_full_{name}");
    let (outbox, pool) = table(&table_name).await;
    let messages = numbered_messages(destination, 20, 50);
    commit(&outbox, &pool, &messages).await;

    let port = spare_port();
    let config = settings_with(
        &postgres_source(&table_name),
        destination_settings,
        &table_name,
        port,
        "batch_size = 100\nsend_timeout = 1000\nmax_attempts = 1000\n\
         [relay.backoff]\ninitial = 100\nmax = 500",
    );
    let child = relay(&config, &["run"]).spawn().unwrap();

    // Full: the destination holds its capacity and refuses the rest.
    let refused = eventually(DEADLINE, || async {
        metric(port, "outbox_retried_total").await.unwrap_or(0.0) >= 20.0
    })
    .await;
    let held = held().await;
    let backlog = outbox.backlog().await.unwrap();
    assert!(
        refused,
        "{name}: the full destination never refused the relay"
    );
    assert_eq!(held, CAPACITY as u64, "{name}: the destination is full");
    assert!(
        backlog.waiting >= (messages.len() - CAPACITY) as u64,
        "{name}: refused messages wait in the outbox: {backlog:?}"
    );
    assert_eq!(
        backlog.dead_letters, 0,
        "{name}: a refusal is not a dead letter"
    );

    // Drain: a consumer takes messages off, making room.
    let received = drain().await;
    let all = eventually(DEADLINE, || async { received.has_all(&messages) }).await;
    let drained = eventually(DEADLINE, || async {
        outbox.backlog().await.unwrap().waiting == 0
    })
    .await;
    let retried = metric(port, "outbox_retried_total").await.unwrap_or(0.0);
    let left = outbox.backlog().await.unwrap();
    let published = metric(port, "outbox_published_total").await;
    sigterm(&child);
    let (code, text) = finish(child, Duration::from_secs(30)).await;
    assert!(
        all && drained,
        "{name}: not everything arrived: {} arrivals of {} messages, the relay published \
         {published:?}, outbox {left:?}:\n{text}",
        received.count(),
        messages.len()
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(refusal),
        "{name}: the refusal's reason ({refusal}) is logged:\n{text}"
    );
    let duplicates = assert_order_per_key(&messages, &received.keyed(&messages));
    assert_eq!(outbox.count_dead_letters().await.unwrap(), 0);
    println!(
        "full destination {name}: {} messages through room for {CAPACITY}; {retried} refusals \
         retried; {duplicates} duplicates; in order per key",
        messages.len()
    );
}
