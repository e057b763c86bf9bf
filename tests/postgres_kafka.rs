//! End to end: business rows and outbox messages committed together in
//! PostgreSQL, relayed by two relays to a Kafka-protocol broker, read back
//! from the topic's partitions: every message, each key in order (one key,
//! one partition), headers intact.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outbox::kafka::{KafkaConfig, KafkaDestination};
use outbox::{RelayConfig, HEADER_EVENT_TYPE, HEADER_MESSAGE_ID};
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages, run_relay};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

mod common;

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_kafka_in_order_with_nothing_lost() {
    let brokers = std::env::var("OUTBOX_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let (outbox, pool) = common::postgres_outbox("to_kafka").await;
    let destination = KafkaDestination::new(KafkaConfig {
        brokers: brokers.clone(),
        ..KafkaConfig::default()
    })
    .unwrap();
    let topic = format!("outbox-e2e-orders-{}", Uuid::now_v7().simple());
    destination
        .create_topics(&[&topic], PARTITIONS)
        .await
        .expect("broker reachable");

    let messages = numbered_messages(&topic, 30, 20);
    common::write_orders(&outbox, &pool, &messages).await;
    let relays = [
        run_relay(
            outbox.source(pool.clone()).await.unwrap(),
            destination.clone(),
            RelayConfig::default(),
        ),
        run_relay(
            outbox.source(pool.clone()).await.unwrap(),
            destination.clone(),
            RelayConfig::default(),
        ),
    ];
    let drained = eventually(Duration::from_secs(60), || async {
        outbox.backlog(&pool).await.unwrap().waiting == 0
    })
    .await;
    for relay in relays {
        relay.stop().await;
    }
    assert!(drained, "the outbox did not drain");

    let expected = messages.clone();
    let arrivals = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
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
        while arrivals.len() < expected.len() && Instant::now() < deadline {
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
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let id: Uuid = headers[HEADER_MESSAGE_ID].parse().unwrap();
            let sent = expected
                .iter()
                .find(|m| m.id == id)
                .expect("a message we wrote");
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
    .unwrap();
    let duplicates = assert_order_per_key(&messages, &arrivals);
    assert_eq!(duplicates, 0);
}
