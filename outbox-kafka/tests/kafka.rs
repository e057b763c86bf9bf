//! outbox-kafka against a real Kafka-protocol broker (`OUTBOX_KAFKA_BROKERS`,
//! default `127.0.0.1:9092`; `scripts/services.sh up` starts tansu). Every
//! test owns its topics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outbox_core::{CloudEvents, CloudEventsBinding, Message};
use outbox_kafka::{KafkaConfig, KafkaDestination};
use outbox_testkit::{DestinationHarness, Received};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
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
fn read_topic(brokers: &str, topic: &str, count: usize, timeout: Duration) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
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
        let incoming = outbox_kafka::incoming(&record).expect("an outbox message");
        received.push(Received {
            id: incoming.id,
            payload: record.payload().unwrap_or_default().to_vec(),
            event_type: incoming.event_type,
            ordering_key: incoming.ordering_key,
            headers: incoming.headers,
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

    async fn cloud_events_destination(
        &self,
        cloud_events: CloudEvents,
    ) -> Option<(KafkaDestination, CloudEventsBinding)> {
        let config = KafkaConfig {
            brokers: brokers(),
            cloud_events: Some(cloud_events),
            ..KafkaConfig::default()
        };
        let destination = KafkaDestination::new(config).expect("producer");
        Some((destination, CloudEventsBinding::Kafka))
    }

    fn address(&self) -> String {
        self.topic.clone()
    }

    async fn received(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || read_topic(&brokers(), &topic, count, timeout))
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

    /// Topic names Kafka does not allow (a NUL byte made librdkafka refuse
    /// the record with an error the relay took for temporary).
    fn unfit_messages(&self) -> Vec<(&'static str, Message)> {
        let illegal = "is not a legal Kafka topic name";
        [
            ("space", format!("{} events", self.topic)),
            ("nul", format!("{}\0events", self.topic)),
            ("long", "t".repeat(250)),
            ("dot", ".".to_string()),
        ]
        .into_iter()
        .map(|(key, topic)| (illegal, Message::builder(topic, key).build().unwrap()))
        .collect()
    }
}

async fn kafka_topic(scenario: &'static str) -> KafkaTopic {
    let topic = format!("outbox-test-{scenario}-{}", Uuid::now_v7().simple());
    destination()
        .create_topics(&[&topic], 1, 1)
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

/// A destination with this `delivery_timeout` whose producer does not
/// create the topics it is asked for, so a message to a missing topic
/// waits in its queue unacknowledged.
fn destination_that_creates_no_topic(delivery_timeout: Duration) -> KafkaDestination {
    let mut config = KafkaConfig {
        brokers: brokers(),
        delivery_timeout,
        ..KafkaConfig::default()
    };
    config
        .properties
        .insert("allow.auto.create.topics".into(), "false".into());
    KafkaDestination::new(config).unwrap()
}

/// librdkafka fails a message that waited `message.timeout.ms` in its queue
/// and goes on with the later ones of its partition (its INTRODUCTION.md,
/// "Message timeout considerations"), so a key's later message could be
/// stored without the earlier one. The destination keeps librdkafka's
/// timeout infinite and its own deadline instead: a send fails at
/// `delivery_timeout`, and the producer is replaced, its queue discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_fail_at_the_destinations_deadline_never_at_librdkafkas() {
    use outbox_core::Destination;
    use rdkafka::producer::FutureRecord;

    // A topic that does not exist yet, and that asking for it does not create.
    let topic = format!("outbox-test-deadline-{}", Uuid::now_v7().simple());
    let timeout = Duration::from_secs(1);
    let destination = destination_that_creates_no_topic(timeout);

    let record = FutureRecord::to(&topic).key("raw").payload(&b"raw"[..]);
    let delivery = destination.producer().send_result(record).unwrap();
    let waited = tokio::time::timeout(4 * timeout, delivery).await;
    assert!(
        waited.is_err(),
        "librdkafka failed a message on its own: {waited:?}"
    );

    let message = |key: &str| Message::builder(topic.clone(), key).build().unwrap();
    let early = [message("key"), message("key")];
    let started = Instant::now();
    let results = destination.send_ordered(&early).await;
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout * 3,
        "took {took:?} for a delivery_timeout of {timeout:?}"
    );
    assert!(results.iter().all(Result::is_err), "{results:?}");
    let first = results[0].as_ref().unwrap_err();
    assert!(first.is_temporary(), "{first}");
    assert!(first.to_string().contains("delivery_timeout"), "{first}");

    // The replaced producer's queue is gone: once the topic exists, only
    // what was sent after holds there.
    destination.create_topics(&[&topic], 1, 1).await.unwrap();
    let late = message("key");
    let sent = destination.send_ordered(std::slice::from_ref(&late)).await;
    assert!(sent[0].is_ok(), "{sent:?}");
    let (brokers, name) = (brokers(), topic.clone());
    let stored: Vec<Uuid> =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &name, 4, Duration::from_secs(5)))
            .await
            .unwrap()
            .into_iter()
            .map(|got| got.id)
            .collect();
    assert_eq!(
        stored,
        vec![late.id],
        "the topic holds what the old producer queued"
    );
}

/// Kafka keeps order only within a partition. A key whose earlier message
/// goes to a topic that does not answer and whose later one goes to
/// another topic: the later one must not be stored while the earlier one
/// failed, or the relay's retry would store the earlier one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_message_to_another_topic_waits_for_the_earlier_ones() {
    use outbox_core::Destination;

    // The first topic does not exist, and asking for it does not create it.
    let missing = format!("outbox-test-missing-{}", Uuid::now_v7().simple());
    let other = kafka_topic("other-topic").await.topic;
    let timeout = Duration::from_secs(1);
    let destination = destination_that_creates_no_topic(timeout);

    let earlier = Message::builder(missing, "order-1").build().unwrap();
    let later = Message::builder(other.clone(), "order-1").build().unwrap();
    let results = destination.send_ordered(&[earlier, later]).await;
    assert!(results.iter().all(Result::is_err), "{results:?}");

    let brokers = brokers();
    let stored = tokio::task::spawn_blocking(move || read_topic(&brokers, &other, 1, 3 * timeout))
        .await
        .unwrap();
    assert!(
        stored.is_empty(),
        "the later message was stored while the earlier one failed"
    );
}

/// A tansu of the test's own on a spare port (memory storage: a restart
/// loses what it held, as a broker restored from nothing would).
struct OwnBroker {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut broker = OwnBroker { port, child: None };
        broker.restart();
        broker
    }

    fn restart(&mut self) {
        let bin = outbox_testkit::tansu_bin();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = std::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run {bin} (run scripts/services.sh up, or set OUTBOX_TANSU_BIN): {err}"
                )
            });
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    async fn wait_until_up(&self) {
        let up = outbox_testkit::eventually(Duration::from_secs(20), || async {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        })
        .await;
        assert!(up, "own tansu did not start on {}", self.port);
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The destination under test, noting which messages it reported as
/// acknowledged once `restarted` is set (by then the old broker is dead, so
/// those acknowledgements came from the restarted one).
#[derive(Clone)]
struct Recording {
    inner: KafkaDestination,
    restarted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked_after: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Uuid>>>,
}

impl outbox_core::Destination for Recording {
    type Item = Message;

    async fn send(&self, message: &Message) -> Result<(), outbox_core::Error> {
        self.send_ordered(std::slice::from_ref(message))
            .await
            .remove(0)
    }

    async fn send_ordered(&self, messages: &[Message]) -> Vec<Result<(), outbox_core::Error>> {
        let results = self.inner.send_ordered(messages).await;
        if self.restarted.load(std::sync::atomic::Ordering::SeqCst) {
            let mut acked = self.acked_after.lock().unwrap();
            for (message, result) in messages.iter().zip(&results) {
                if result.is_ok() {
                    acked.insert(message.id);
                }
            }
        }
        results
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_waits_for_a_restarted_broker_and_resumes() {
    use outbox_core::memory::MemorySource;
    use outbox_core::{Backoff, RelayConfig};
    use outbox_testkit::{assert_recovered, eventually, numbered_messages, run_relay};

    let mut broker = OwnBroker::start();
    broker.wait_until_up().await;
    let brokers = format!("127.0.0.1:{}", broker.port);
    let destination = KafkaDestination::new(KafkaConfig {
        brokers: brokers.clone(),
        delivery_timeout: Duration::from_secs(2),
        ..KafkaConfig::default()
    })
    .unwrap();
    let topic = "outbox-test-restart";
    destination.create_topics(&[topic], 1, 1).await.unwrap();
    let messages = numbered_messages(topic, 10, 150);
    let source = MemorySource::new(Duration::from_secs(30));
    source.enqueue(messages.clone());
    let config = RelayConfig {
        batch_size: 20,
        max_concurrent_keys: 2,
        max_in_flight_per_key: 1,
        max_attempts: 1000,
        send_timeout: Duration::from_secs(5),
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            ..Backoff::default()
        },
        ..RelayConfig::default()
    };
    let recording = Recording {
        inner: destination.clone(),
        restarted: Default::default(),
        acked_after: Default::default(),
    };
    let relay = run_relay(source.clone(), recording.clone(), config);
    let stats = relay.stats.clone();
    assert!(
        eventually(Duration::from_secs(60), || async {
            stats.snapshot().counts.published >= 100
        })
        .await
    );

    broker.stop();
    let published_at_stop = stats.snapshot().counts.published;
    tokio::time::sleep(Duration::from_millis(300)).await;
    recording
        .restarted
        .store(true, std::sync::atomic::Ordering::SeqCst);
    broker.restart();
    broker.wait_until_up().await;
    // The memory store came back empty: recreate the topic, as an operator would.
    destination.create_topics(&[topic], 1, 1).await.unwrap();

    let drained = eventually(Duration::from_secs(120), || async { source.waiting() == 0 }).await;
    relay.stop().await;
    assert_recovered(&source, drained, published_at_stop, messages.len());

    // Everything acknowledged after the restart is in the restarted broker's
    // topic, and per key what it holds is a gapless suffix of the key's
    // messages, in order (what the old broker acknowledged died with it).
    let acked_after = recording.acked_after.lock().unwrap().clone();
    assert!(
        !acked_after.is_empty(),
        "nothing was sent after the restart"
    );
    let (topic_name, most) = (topic.to_string(), messages.len() * 2);
    let received = tokio::task::spawn_blocking(move || {
        read_topic(&brokers, &topic_name, most, Duration::from_secs(15))
    })
    .await
    .unwrap();
    let mut distinct = std::collections::HashSet::new();
    let mut per_key: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for got in &received {
        if distinct.insert(got.id) {
            let key = messages
                .iter()
                .find(|m| m.id == got.id)
                .unwrap()
                .ordering_key
                .clone();
            per_key.entry(key).or_default().push(got.id);
        }
    }
    let missing = acked_after.difference(&distinct).count();
    assert_eq!(
        missing, 0,
        "{missing} messages acknowledged after the restart are not in the topic"
    );
    for (key, ids) in &per_key {
        let all: Vec<Uuid> = messages
            .iter()
            .filter(|m| &m.ordering_key == key)
            .map(|m| m.id)
            .collect();
        let start = all.len() - ids.len();
        assert_eq!(
            &all[start..],
            ids.as_slice(),
            "key {key}: not a gapless suffix in order"
        );
    }
    println!(
        "restart: stopped after {published_at_stop} published; {} retried; {} acknowledged after the restart, all in the topic ({} records)",
        stats.snapshot().counts.retried,
        acked_after.len(),
        received.len()
    );
}

/// `create_topics` creates topics with the replication factor it is given
/// (it was fixed at 1). tansu reports the factor asked for in the topic's
/// metadata, one broker or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_asks_for_the_replication_factor() {
    use rdkafka::producer::Producer;
    let topic = format!("outbox-test-replicated-{}", Uuid::now_v7().simple());
    let destination = destination();
    destination.create_topics(&[&topic], 2, 3).await.unwrap();
    let metadata = destination
        .producer()
        .client()
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let replicas: Vec<usize> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|partition| partition.replicas().len())
        .collect();
    assert_eq!(replicas, vec![3, 3]);
}

/// Replacing a producer that reached its deadline never stalls the runtime:
/// destroying a librdkafka producer joins its threads, and the send that
/// held the last clone did it on a runtime worker. A ticker on a
/// one-thread runtime must keep ticking while the send fails and the
/// producer is replaced.
#[test]
fn replacing_a_stuck_producer_never_blocks_the_runtime() {
    use outbox_core::Destination;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let longest_gap = runtime.block_on(async {
        let topic = format!("outbox-test-retire-{}", Uuid::now_v7().simple());
        let destination = destination_that_creates_no_topic(Duration::from_secs(1));
        let ticker = tokio::spawn(async {
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            for _ in 0..300 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            longest
        });
        let messages: Vec<Message> = (0..100)
            .map(|_| Message::builder(topic.clone(), "key").build().unwrap())
            .collect();
        let results = destination.send_ordered(&messages).await;
        assert!(results.iter().all(Result::is_err), "{results:?}");
        drop(destination);
        ticker.await.unwrap()
    });
    println!("longest gap between ticks: {longest_gap:?}");
    assert!(
        longest_gap < Duration::from_millis(200),
        "the runtime stalled for {longest_gap:?} while a producer was replaced"
    );
}
