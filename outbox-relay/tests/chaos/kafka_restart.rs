//! Restarting the run's own tansu while the relays run. tansu keeps its log
//! and its producer ids in memory, so a restart loses both; this is how a
//! run restarts it and still checks that nothing the relays were told was
//! stored went missing.

use std::time::Duration;

use outbox_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use outbox_kafka::rdkafka::ClientConfig;

use crate::brokers::{create_kafka_topic, KAFKA_PARTITIONS};
use crate::support::servers::OwnKafka;
use crate::support::{signal, Publishes, RelayProcesses, DEADLINE};

/// Restarts `broker` under relays publishing to `topic`, which `publishes`
/// reads.
///
/// The relays are stopped (SIGSTOP) while the verifier reads the log to
/// its end, so whatever the broker ever acknowledged is in the record.
/// Then the broker restarts empty, the topic is made again, the verifier
/// reads the new log from its start, and the relays go on (SIGCONT), with
/// open claims, dead connections and a producer the broker no longer
/// knows.
pub async fn restart(
    broker: &mut OwnKafka,
    publishes: &mut Publishes,
    relays: &RelayProcesses,
    topic: &str,
) {
    for child in &relays.children {
        signal(child, "STOP");
    }
    let brokers = broker.brokers();
    read_to_the_end(&brokers, topic, publishes).await;
    // tansu also forgets the producer ids it handed out and hands them out
    // again from 1, while the relays' producers from before the restart go
    // on with theirs: two producers under one id, and one's batches taken
    // for duplicates of the other's (acknowledged, never written: 64 of
    // 4,000 messages went missing that way) or failed as out of order. A
    // broker keeping its state never reuses an id, so the new one is made
    // to hand out, first, every id the old one did.
    let highest = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || take_producer_ids(&brokers, 1))
            .await
            .unwrap()
    };
    publishes.stop_reading().await;
    broker.restart().await;
    create_kafka_topic(&brokers, topic).await;
    let reached = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || {
            let mut reached = 0;
            while reached < highest {
                reached = take_producer_ids(&brokers, (highest - reached).min(100) as usize);
            }
            reached
        })
        .await
        .unwrap()
    };
    assert!(
        reached >= highest,
        "producer ids up to {reached} of {highest}"
    );
    publishes.read_kafka_again(&brokers, topic, KAFKA_PARTITIONS);
    for child in &relays.children {
        signal(child, "CONT");
    }
}

/// Waits until `publishes` read `topic` to an end that held still between
/// two looks (what was in flight when the relays stopped is written by
/// then).
async fn read_to_the_end(brokers: &str, topic: &str, publishes: &Publishes) {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut last_end = Vec::new();
    loop {
        let end = kafka_high_watermarks(brokers, topic).await;
        if end == last_end && publishes.read_up_to(&end) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the verifier did not read the topic to its end ({end:?})"
        );
        last_end = end;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The high watermark of each partition of `topic`. tansu 0.6.0 reports
/// the base offset of a partition's last batch, plus one, rather than the
/// offset after its last record.
async fn kafka_high_watermarks(brokers: &str, topic: &str) -> Vec<i64> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("Kafka consumer");
        (0..KAFKA_PARTITIONS)
            .map(|partition| {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, partition, Duration::from_secs(5))
                    .expect("watermarks");
                high
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Notes the producer id librdkafka's statistics report.
#[derive(Default)]
struct ProducerIdSeen(std::sync::Mutex<Option<i64>>);

impl outbox_kafka::rdkafka::ClientContext for ProducerIdSeen {
    fn stats(&self, statistics: outbox_kafka::rdkafka::Statistics) {
        if let Some(id) = statistics.eos.map(|eos| eos.producer_id) {
            if id >= 0 {
                *self.0.lock().unwrap() = Some(id);
            }
        }
    }
}

impl outbox_kafka::rdkafka::producer::ProducerContext for ProducerIdSeen {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &outbox_kafka::rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Starts `count` idempotent producers on `brokers` at once, each taking a
/// producer id and writing nothing (a record would give its id a sequence
/// the broker remembers); returns the highest id they got.
fn take_producer_ids(brokers: &str, count: usize) -> i64 {
    use outbox_kafka::rdkafka::producer::{BaseProducer, Producer};
    let producers: Vec<BaseProducer<ProducerIdSeen>> = (0..count)
        .map(|_| {
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("enable.idempotence", "true")
                .set("statistics.interval.ms", "50")
                .create_with_context(ProducerIdSeen::default())
                .expect("Kafka producer")
        })
        .collect();
    let mut highest = -1;
    for producer in &producers {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            producer.poll(Duration::from_millis(50));
            if let Some(id) = *producer.context().0.lock().unwrap() {
                highest = highest.max(id);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no producer id in librdkafka's statistics"
            );
        }
    }
    highest
}
