//! outbox-kafka against a real Kafka-protocol broker (`OUTBOX_KAFKA_BROKERS`,
//! default `127.0.0.1:9092`; `scripts/services.sh up` starts tansu). Every
//! test owns its topics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outbox_core::{Message, HEADER_EVENT_TYPE, HEADER_MESSAGE_ID};
use outbox_kafka::{KafkaConfig, KafkaDestination};
use outbox_testkit::{DestinationHarness, Received};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

fn brokers() -> String {
    std::env::var("OUTBOX_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

fn destination() -> KafkaDestination {
    KafkaDestination::new(KafkaConfig {
        brokers: brokers(),
        ..KafkaConfig::default()
    })
    .expect("producer")
}

/// Reads partition 0 of `topic` from the start, without a consumer group,
/// until `count` records arrived or `timeout` passed.
fn read_topic(topic: &str, count: usize, timeout: Duration) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("outbox-test-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&partitions).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    while received.len() < count && Instant::now() < deadline {
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(record) = polled else { continue };
        let mut headers = BTreeMap::new();
        if let Some(list) = record.headers() {
            for header in list.iter() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
                headers.insert(header.key.to_string(), value);
            }
        }
        let id = headers
            .get(HEADER_MESSAGE_ID)
            .expect("message id header")
            .parse()
            .expect("uuid");
        received.push(Received {
            id,
            payload: record.payload().unwrap_or_default().to_vec(),
            event_type: headers.get(HEADER_EVENT_TYPE).cloned(),
            headers,
        });
    }
    received
}

struct KafkaTopic {
    topic: String,
}

impl DestinationHarness for KafkaTopic {
    type Destination = KafkaDestination;

    async fn destination(&self) -> KafkaDestination {
        destination()
    }

    fn address(&self) -> String {
        self.topic.clone()
    }

    async fn received(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || read_topic(&topic, count, timeout))
            .await
            .expect("reader")
    }

    fn refused_message(&self) -> Option<Message> {
        // Over the producer's message.max.bytes (1,000,000 by default).
        Some(
            Message::builder(self.topic.clone(), "too-large")
                .payload(vec![b'x'; 1_100_000])
                .build()
                .unwrap(),
        )
    }
}

async fn kafka_topic(scenario: &'static str) -> KafkaTopic {
    let topic = format!("outbox-test-{scenario}-{}", Uuid::now_v7().simple());
    destination()
        .create_topics(&[&topic], 1)
        .await
        .expect("Kafka-protocol broker reachable at OUTBOX_KAFKA_BROKERS");
    KafkaTopic { topic }
}

mod conformance {
    use super::*;
    outbox_testkit::destination_conformance!(kafka_topic);
}

#[test]
fn a_property_librdkafka_refuses_is_named_at_start_up() {
    let mut config = KafkaConfig {
        brokers: brokers(),
        ..KafkaConfig::default()
    };
    config
        .properties
        .insert("enable.idempotence.please".into(), "true".into());
    let err = KafkaDestination::new(config).unwrap_err();
    assert!(
        err.to_string()
            .contains("properties.enable.idempotence.please"),
        "{err}"
    );
    assert!(!err.is_temporary());
}
