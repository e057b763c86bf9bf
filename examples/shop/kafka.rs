//! The shop's events on Kafka: topic `shop-<name>-orders` (3 partitions,
//! each order's events in one), read from the end as it was on connecting.

use std::time::Duration;

use outbox::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use outbox::kafka::rdkafka::message::Message as _;
use outbox::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use outbox::kafka::{KafkaConfig, KafkaDestination};

use super::{decode, Broker, Result};

const PARTITIONS: i32 = 3;

/// Connects to `OUTBOX_KAFKA_BROKERS`, creates the topic if needed and
/// starts the consumer at each partition's current end.
pub async fn connect(name: &str) -> Result<Broker<KafkaDestination>> {
    let brokers = std::env::var("OUTBOX_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let destination = KafkaDestination::new(KafkaConfig {
        brokers: brokers.clone(),
        ..KafkaConfig::default()
    })?;
    let topic = format!("shop-{name}-orders");
    destination
        .create_topics(&[&topic], PARTITIONS, 1)
        .await
        .map_err(|err| {
            format!("Kafka at OUTBOX_KAFKA_BROKERS: {err} (run scripts/services.sh up)")
        })?;
    let consumer_topic = topic.clone();
    // Watermarks are a blocking call.
    let consumer = tokio::task::spawn_blocking(move || -> Result<StreamConsumer> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("shop-{name}", name = consumer_topic))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut partitions = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            let (_, end) =
                consumer.fetch_watermarks(&consumer_topic, partition, Duration::from_secs(10))?;
            partitions.add_partition_offset(&consumer_topic, partition, Offset::Offset(end))?;
        }
        consumer.assign(&partitions)?;
        Ok(consumer)
    })
    .await??;
    let (sender, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let record = match consumer.recv().await {
                Ok(record) => record,
                Err(err) => {
                    eprintln!("consumer: {err}");
                    continue;
                }
            };
            let incoming = match outbox::kafka::incoming(&record) {
                Ok(incoming) => incoming,
                Err(err) => {
                    eprintln!("consumer: {err}");
                    continue;
                }
            };
            let arrival = decode(incoming, record.payload().unwrap_or_default());
            if arrival.is_some_and(|arrival| sender.send(arrival).is_err()) {
                return;
            }
        }
    });
    Ok(Broker {
        destination,
        address: topic,
        arrivals,
    })
}
