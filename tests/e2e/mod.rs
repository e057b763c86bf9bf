//! The broker side of the end-to-end tests, written once: set a destination
//! up, run two relays until the outbox is empty, read back what arrived.
//! Each `<source>_<broker>.rs` test supplies the source.

// Each test binary uses the part for its own broker.
#![allow(dead_code)]

use std::time::Duration;

use outbox::{Destination, Message, RelayConfig, Source};
use outbox_testkit::{eventually, run_relay};
use uuid::Uuid;

/// Runs a relay per source until `waiting()` reports an empty outbox.
pub async fn drain<S, D>(sources: Vec<S>, destination: D, waiting: impl AsyncFn() -> u64)
where
    S: Source<Item = Message>,
    D: Destination<Item = Message> + Clone,
{
    let relays: Vec<_> = sources
        .into_iter()
        .map(|source| run_relay(source, destination.clone(), RelayConfig::default()))
        .collect();
    let drained = eventually(Duration::from_secs(120), || async { waiting().await == 0 }).await;
    for relay in relays {
        relay.stop().await;
    }
    assert!(drained, "the outbox did not drain");
}

/// The sent message with this id.
fn sent(messages: &[Message], id: Uuid) -> &Message {
    messages
        .iter()
        .find(|m| m.id == id)
        .expect("a message we wrote")
}

#[cfg(feature = "nats")]
pub mod nats {
    use outbox::nats::async_nats::jetstream::stream::{self, Stream};
    use outbox::nats::{NatsConfig, NatsDestination, NATS_MSG_ID};
    use outbox::HEADER_EVENT_TYPE;
    use uuid::Uuid;

    use super::sent;

    /// A destination and a fresh stream `name` on subjects `<subject>.>`.
    pub async fn setup(name: &str, subject: &str) -> (NatsDestination, Stream) {
        let destination = NatsDestination::connect(NatsConfig {
            url: std::env::var("OUTBOX_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            ..NatsConfig::default()
        })
        .await
        .expect("NATS reachable at OUTBOX_NATS_URL");
        let context = destination.jetstream().clone();
        let _ = context.delete_stream(name).await;
        let stream = context
            .get_or_create_stream(stream::Config {
                name: name.into(),
                subjects: vec![format!("{subject}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        (destination, stream)
    }

    /// What the stream holds, as (key, id), checking payloads and headers.
    pub async fn read(stream: &mut Stream, messages: &[outbox::Message]) -> Vec<(String, Uuid)> {
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut arrivals = Vec::new();
        for seq in 1..=last {
            let stored = stream.get_raw_message(seq).await.unwrap();
            let id: Uuid = stored
                .headers
                .get(NATS_MSG_ID)
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            let sent = sent(messages, id);
            assert_eq!(stored.payload.as_ref(), sent.payload.as_slice());
            assert_eq!(
                stored.headers.get(HEADER_EVENT_TYPE).unwrap().as_str(),
                "TestEvent"
            );
            assert_eq!(
                stored.headers.get("seq").unwrap().as_str(),
                sent.headers["seq"]
            );
            arrivals.push((sent.ordering_key.clone(), id));
        }
        arrivals
    }
}

#[cfg(feature = "amqp")]
pub mod amqp {
    use std::time::{Duration, Instant};

    use outbox::amqp::lapin::options::{
        BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
    };
    use outbox::amqp::lapin::types::FieldTable;
    use outbox::amqp::{AmqpConfig, AmqpDestination};
    use uuid::Uuid;

    use super::sent;

    /// A destination and a fresh durable `queue` bound to `amq.topic` for
    /// `<routing>.#`.
    pub async fn setup(queue: &str, routing: &str) -> AmqpDestination {
        let destination = AmqpDestination::connect(AmqpConfig {
            url: std::env::var("OUTBOX_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            ..AmqpConfig::default()
        })
        .await
        .expect("RabbitMQ reachable at OUTBOX_AMQP_URL");
        let channel = destination.channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .unwrap();
        let pattern = format!("{routing}.#");
        channel
            .queue_bind(
                queue.into(),
                "amq.topic".into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        destination
    }

    /// What the queue holds, as (key, id), checking payloads and properties.
    pub async fn read(
        destination: &AmqpDestination,
        queue: &str,
        messages: &[outbox::Message],
    ) -> Vec<(String, Uuid)> {
        let channel = destination.channel().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut arrivals = Vec::new();
        while arrivals.len() < messages.len() && Instant::now() < deadline {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap();
            let Some(got) = got else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let properties = &got.delivery.properties;
            let id: Uuid = properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            let sent = sent(messages, id);
            assert_eq!(got.delivery.data, sent.payload);
            assert_eq!(
                properties.kind().as_ref().map(|k| k.as_str()),
                Some("TestEvent")
            );
            assert_eq!(properties.delivery_mode(), &Some(2));
            arrivals.push((sent.ordering_key.clone(), id));
        }
        arrivals
    }
}

#[cfg(feature = "kafka")]
pub mod kafka {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use outbox::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use outbox::kafka::rdkafka::message::{Headers, Message as _};
    use outbox::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use outbox::kafka::{KafkaConfig, KafkaDestination};
    use outbox::{HEADER_EVENT_TYPE, HEADER_MESSAGE_ID};
    use uuid::Uuid;

    use super::sent;

    /// Partitions of the test topic: enough to check that a key stays in one.
    pub const PARTITIONS: i32 = 3;

    fn brokers() -> String {
        std::env::var("OUTBOX_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
    }

    /// A destination and a fresh topic `<prefix>-<uuid>`.
    pub async fn setup(prefix: &str) -> (KafkaDestination, String) {
        let destination = KafkaDestination::new(KafkaConfig {
            brokers: brokers(),
            ..KafkaConfig::default()
        })
        .unwrap();
        let topic = format!("{prefix}-{}", Uuid::now_v7().simple());
        destination
            .create_topics(&[&topic], PARTITIONS, 1)
            .await
            .expect("Kafka-protocol broker reachable at OUTBOX_KAFKA_BROKERS");
        (destination, topic)
    }

    /// What the topic holds, as (key, id), checking payloads, record keys,
    /// headers, and that each key stayed in one partition.
    pub async fn read(topic: &str, messages: &[outbox::Message]) -> Vec<(String, Uuid)> {
        let (topic, messages) = (topic.to_string(), messages.to_vec());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("group.id", format!("outbox-e2e-{}", Uuid::now_v7()))
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut partitions = TopicPartitionList::new();
            for partition in 0..PARTITIONS {
                partitions
                    .add_partition_offset(&topic, partition, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&partitions).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut arrivals = Vec::new();
            let mut partition_of_key: BTreeMap<String, i32> = BTreeMap::new();
            while arrivals.len() < messages.len() && Instant::now() < deadline {
                let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let headers: BTreeMap<String, String> = record
                    .headers()
                    .map(|list| {
                        list.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let id: Uuid = headers[HEADER_MESSAGE_ID].parse().unwrap();
                let sent = sent(&messages, id);
                assert_eq!(record.payload().unwrap(), sent.payload.as_slice());
                assert_eq!(
                    record.key().unwrap(),
                    sent.ordering_key.as_bytes(),
                    "record key is the ordering key"
                );
                assert_eq!(headers[HEADER_EVENT_TYPE], "TestEvent");
                let partition = *partition_of_key
                    .entry(sent.ordering_key.clone())
                    .or_insert(record.partition());
                assert_eq!(
                    partition,
                    record.partition(),
                    "key {} spread over partitions",
                    sent.ordering_key
                );
                arrivals.push((sent.ordering_key.clone(), id));
            }
            arrivals
        })
        .await
        .unwrap()
    }
}
