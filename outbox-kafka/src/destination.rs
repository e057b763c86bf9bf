//! The Kafka destination.

use std::time::Duration;

use futures_util::future::join_all;
use outbox_core::{Destination, Error, Message, HEADER_EVENT_TYPE, HEADER_MESSAGE_ID};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::error::classify;
use crate::KafkaConfig;

/// Publishes outbox messages to Kafka; see the crate docs. Cheap to clone.
#[derive(Clone)]
pub struct KafkaDestination {
    producer: FutureProducer,
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
        Ok(Self { producer, config })
    }

    /// Creates these topics (for brokers that do not create them on first
    /// use); topics that already exist are left alone.
    pub async fn create_topics(&self, topics: &[&str], partitions: i32) -> Result<(), Error> {
        let admin: AdminClient<DefaultClientContext> =
            self.config.client_config().create().map_err(classify)?;
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
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

    /// The underlying producer.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}

fn headers(message: &Message, id: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 2);
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
    if let Some(event_type) = &message.event_type {
        headers = headers.insert(Header {
            key: HEADER_EVENT_TYPE,
            value: Some(event_type.as_bytes()),
        });
    }
    headers
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

impl Destination for KafkaDestination {
    type Item = Message;

    async fn send(&self, message: &Message) -> Result<(), Error> {
        self.send_ordered(std::slice::from_ref(message))
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::temporary("kafka: no delivery report")))
    }

    /// Queues every message to the producer in order, then awaits their
    /// delivery reports together. Once one cannot be queued, the later ones
    /// are not queued at all (their key must wait for it).
    async fn send_ordered(&self, messages: &[Message]) -> Vec<Result<(), Error>> {
        let mut queued = Vec::with_capacity(messages.len());
        let mut refused = None;
        for message in messages {
            let id = message.id.to_string();
            match self.producer.send_result(record(message, &id)) {
                Ok(delivery) => queued.push(delivery),
                Err((err, _)) => {
                    refused = Some(classify(err));
                    break;
                }
            }
        }
        let mut results: Vec<Result<(), Error>> = join_all(queued)
            .await
            .into_iter()
            .map(|report| match report {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((err, _))) => Err(classify(err)),
                Err(_) => Err(Error::temporary(
                    "kafka: producer dropped the delivery report",
                )),
            })
            .collect();
        if let Some(err) = refused {
            results.push(Err(err));
        }
        while results.len() < messages.len() {
            results.push(Err(Error::temporary(
                "kafka: not sent: an earlier message of its key failed",
            )));
        }
        results
    }

    async fn flush(&self) -> Result<(), Error> {
        let producer = self.producer.clone();
        let timeout = self.config.delivery_timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|err| Error::temporary("kafka: flush task failed").with_source(err))?
            .map_err(classify)
    }
}
