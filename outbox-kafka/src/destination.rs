//! The Kafka destination.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use outbox_core::{
    wrap_as_cloud_event, CloudEventsBinding, Destination, Error, Message, HEADER_EVENT_TYPE,
    HEADER_MESSAGE_ID, HEADER_ORDERING_KEY,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::error::classify;
use crate::retiring::Retiring;
use crate::KafkaConfig;

/// Publishes outbox messages to Kafka; see the crate docs. Cheap to clone
/// (clones share the producer).
///
/// An idempotent producer that lost its broker's state (a broker restarted
/// without its data, a fatal idempotence error) never gets an
/// acknowledgement again, and a new producer works at once. So when a send
/// reaches `delivery_timeout` unacknowledged, or after a fatal error, the
/// destination builds a new producer, at most once per `delivery_timeout`;
/// the relay sends the failed messages again, in order.
#[derive(Clone)]
pub struct KafkaDestination {
    producer: Arc<RwLock<Arc<Retiring>>>,
    rebuilt_at: Arc<Mutex<Instant>>,
    config: KafkaConfig,
}

impl std::fmt::Debug for KafkaDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDestination")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KafkaDestination {
    /// Checks `config` and creates the producer; a property librdkafka
    /// refuses fails here, named.
    pub fn new(config: KafkaConfig) -> Result<Self, Error> {
        let producer = config.producer()?;
        Ok(Self {
            producer: Arc::new(RwLock::new(Arc::new(Retiring::new(producer)))),
            rebuilt_at: Arc::new(Mutex::new(Instant::now())),
            config,
        })
    }

    /// Creates these topics with `partitions` partitions, each kept on
    /// `replication` brokers (for brokers that do not create topics on
    /// first use); topics that already exist are left alone. A production
    /// cluster wants `replication` of 3 with `min.insync.replicas` 2, so
    /// that `acks=all` survives the loss of a broker.
    pub async fn create_topics(
        &self,
        topics: &[&str],
        partitions: i32,
        replication: i32,
    ) -> Result<(), Error> {
        let admin: AdminClient<DefaultClientContext> =
            self.config.client_config().create().map_err(classify)?;
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(replication)))
            .collect();
        let results = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(classify)?;
        for result in results {
            if let Err((topic, code)) = result {
                if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(Error::temporary(format!(
                        "kafka: cannot create topic {topic}: {code}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The producer in use now.
    pub fn producer(&self) -> FutureProducer {
        FutureProducer::clone(&self.current())
    }

    /// The producer in use now, as sends hold it (see [`Retiring`]).
    fn current(&self) -> Arc<Retiring> {
        Arc::clone(&self.producer.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces a producer a send gave up on (its deadline passed, or the
    /// send was dropped) or that failed fatally. The old one is discarded,
    /// its queue with it, once the sends still holding it end.
    fn rebuild_producer(&self) {
        let mut rebuilt_at = self.rebuilt_at.lock().unwrap_or_else(|e| e.into_inner());
        if rebuilt_at.elapsed() < self.config.delivery_timeout {
            return;
        }
        *rebuilt_at = Instant::now();
        match self.config.producer() {
            Ok(fresh) => {
                tracing::warn!("kafka producer timed out or failed fatally; replaced by a new one");
                let old = std::mem::replace(
                    &mut *self.producer.write().unwrap_or_else(|e| e.into_inner()),
                    Arc::new(Retiring::new(fresh)),
                );
                // Out of the lock; destroyed on a thread of its own once
                // the sends holding it end.
                drop(old);
            }
            Err(err) => tracing::warn!(error = %err, "kafka producer could not be rebuilt"),
        }
    }
}

/// A send waits for room in a full producer queue (librdkafka's
/// `queue.buffering.max.messages`) for at most this share of
/// `delivery_timeout`, so that waiting and delivering together stay within
/// the relay's `send_timeout`. A full queue is the producer's backpressure,
/// not a failure: it empties as the broker acknowledges, and counting it as
/// a failed attempt livelocked a relay whose keys kept refilling it.
const QUEUE_WAIT_SHARE: u32 = 8;

/// Pause between two tries to queue a record while the queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(2);

/// Hands `record` to the producer, waiting while its queue is full until
/// `wait_until`.
async fn queue(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, str, [u8]>,
    wait_until: Instant,
) -> Result<DeliveryFuture, KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if Instant::now() < wait_until =>
            {
                record = back;
                tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// Replaces the producer when a send is dropped before it ends, which the
/// relay does once its `send_timeout` passed: librdkafka's own timeout being
/// infinite, nothing else would clear a producer that is stuck.
struct RebuildIfDropped<'a>(Option<&'a KafkaDestination>);

impl Drop for RebuildIfDropped<'_> {
    fn drop(&mut self) {
        if let Some(destination) = self.0 {
            destination.rebuild_producer();
        }
    }
}

/// Errors after which the producer itself may be the problem.
fn producer_stuck(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::Fatal)
    )
}

fn headers(message: &Message, id: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 3);
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }
    headers = headers.insert(Header {
        key: HEADER_MESSAGE_ID,
        value: Some(id.as_bytes()),
    });
    headers = headers.insert(Header {
        key: HEADER_ORDERING_KEY,
        value: Some(message.ordering_key.as_bytes()),
    });
    if let Some(event_type) = &message.event_type {
        headers = headers.insert(Header {
            key: HEADER_EVENT_TYPE,
            value: Some(event_type.as_bytes()),
        });
    }
    headers
}

/// Kafka's rule for topic names: 1 to 249 ASCII letters, digits, `.`, `_`
/// and `-`, and neither `.` nor `..`. A message to another name can never
/// be published (librdkafka refuses a NUL byte with an error that says
/// nothing of the topic, and the broker the rest), so it is a permanent
/// error naming the topic.
fn legal_topic(message: &Message) -> Result<(), Error> {
    let topic = message.destination.as_str();
    let legal = (1..=249).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && topic != "."
        && topic != "..";
    if legal {
        return Ok(());
    }
    let start: String = topic.chars().take(64).collect();
    Err(Error::permanent(format!(
        "message {}: topic {start:?} ({} bytes) is not a legal Kafka topic name: 1 to 249 \
         ASCII letters, digits, '.', '_' and '-', and neither '.' nor '..'",
        message.id,
        topic.len()
    )))
}

fn record<'a>(message: &'a Message, id: &str) -> FutureRecord<'a, str, [u8]> {
    let key = message
        .partition_key
        .as_deref()
        .unwrap_or(&message.ordering_key);
    FutureRecord::to(&message.destination)
        .key(key)
        .payload(message.payload.as_slice())
        .headers(headers(message, id))
}

/// The time limits of one `send_ordered` call.
struct SendWindow {
    /// When the call gives up on delivery reports.
    deadline: tokio::time::Instant,
    /// Until when it waits for room in a full producer queue.
    queue_until: Instant,
}

/// What `send_run` did: a result per message it got to, in order (fewer
/// than the run's when it stopped early), and whether the producer itself
/// may be the problem.
struct RunSent {
    results: Vec<Result<(), Error>>,
    stuck: bool,
}

/// Whether two messages of one key go to the same partition, whose order
/// Kafka keeps.
fn same_partition(a: &Message, b: &Message) -> bool {
    a.destination == b.destination && a.partition_key == b.partition_key
}

impl KafkaDestination {
    /// Queues every message of `run` (one partition's) to the producer in
    /// order, then awaits their delivery reports in that order until the
    /// window's deadline. Once one cannot be queued, the later ones are not
    /// queued at all (their key must wait for it); once one fails or is
    /// still unacknowledged at the deadline, the later ones are not awaited.
    async fn send_run(
        &self,
        producer: &FutureProducer,
        run: &[Message],
        window: &SendWindow,
    ) -> RunSent {
        let mut queued = Vec::with_capacity(run.len());
        let mut refused = None;
        let mut stuck = false;
        for message in run {
            if let Err(err) = legal_topic(message) {
                refused = Some(err);
                break;
            }
            let id = message.id.to_string();
            let message = wrap_as_cloud_event(
                self.config.cloud_events.as_ref(),
                message,
                CloudEventsBinding::Kafka,
            );
            match queue(producer, record(&message, &id), window.queue_until).await {
                Ok(delivery) => queued.push(delivery),
                Err(err) => {
                    stuck |= producer_stuck(&err);
                    refused = Some(classify(err));
                    break;
                }
            }
        }
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(run.len());
        for delivery in queued {
            let result = match tokio::time::timeout_at(window.deadline, delivery).await {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err((err, _)))) => {
                    stuck |= producer_stuck(&err);
                    Err(classify(err))
                }
                Ok(Err(_)) => Err(Error::temporary(
                    "kafka: producer dropped the delivery report",
                )),
                Err(_) => {
                    stuck = true;
                    Err(Error::temporary(format!(
                        "kafka: not acknowledged within delivery_timeout ({:?})",
                        self.config.delivery_timeout
                    )))
                }
            };
            let failed = result.is_err();
            results.push(result);
            if failed {
                break;
            }
        }
        if let (true, Some(err)) = (results.iter().all(Result::is_ok), refused) {
            results.push(Err(err));
        }
        RunSent { results, stuck }
    }
}

impl Destination for KafkaDestination {
    type Item = Message;

    fn messaging_system(&self) -> &'static str {
        "kafka"
    }

    async fn send(&self, message: &Message) -> Result<(), Error> {
        self.send_ordered(std::slice::from_ref(message))
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::temporary("kafka: no delivery report")))
    }

    /// Sends the messages in runs bound for one partition (one topic and
    /// one partition key), one run after the other, until `delivery_timeout`
    /// has passed since the call. Kafka keeps order only within a partition:
    /// a later message for another topic, queued together with an earlier
    /// one that then failed, could be stored without it. Within a run,
    /// every message is queued to the producer in order and their delivery
    /// reports awaited in that order (see `send_run`).
    async fn send_ordered(&self, messages: &[Message]) -> Vec<Result<(), Error>> {
        let mut cancelled = RebuildIfDropped(Some(self));
        let producer = self.current();
        let start = Instant::now();
        let window = SendWindow {
            deadline: tokio::time::Instant::from_std(start + self.config.delivery_timeout),
            queue_until: start + self.config.delivery_timeout / QUEUE_WAIT_SHARE,
        };
        let mut results = Vec::with_capacity(messages.len());
        let mut stuck = false;
        for run in messages.chunk_by(same_partition) {
            let sent = self.send_run(&producer, run, &window).await;
            stuck |= sent.stuck;
            let complete =
                sent.results.len() == run.len() && sent.results.iter().all(Result::is_ok);
            results.extend(sent.results);
            if !complete {
                break;
            }
        }
        cancelled.0 = None;
        if stuck {
            self.rebuild_producer();
        }
        while results.len() < messages.len() {
            results.push(Err(Error::temporary(
                "kafka: not sent: an earlier message of its key failed",
            )));
        }
        results
    }

    async fn flush(&self) -> Result<(), Error> {
        let producer = self.producer();
        let timeout = self.config.delivery_timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|err| Error::temporary("kafka: flush task failed").with_source(err))?
            .map_err(classify)
    }
}
