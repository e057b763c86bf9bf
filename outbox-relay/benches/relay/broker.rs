//! The broker side of a pair: an emptied address per run, the references'
//! publishing (every acknowledgement in flight together), and a count of
//! what the broker holds.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use outbox_amqp::lapin::options::{
    BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use outbox_amqp::lapin::types::{FieldTable, ShortString};
use outbox_amqp::lapin::{BasicProperties, Channel};
use outbox_amqp::{AmqpConfig, AmqpDestination};
use outbox_core::{Destination, Message};
use outbox_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use outbox_kafka::rdkafka::message::{Header, OwnedHeaders};
use outbox_kafka::rdkafka::producer::FutureRecord;
use outbox_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use outbox_kafka::{KafkaConfig, KafkaDestination};
use outbox_nats::async_nats::jetstream::{self, stream};
use outbox_nats::async_nats::HeaderMap;
use outbox_nats::{NatsConfig, NatsDestination, NATS_MSG_ID};
use uuid::Uuid;

use crate::backlog::Row;

/// Partitions of each Kafka topic.
const KAFKA_PARTITIONS: i32 = 4;
pub const NATS_STREAM: &str = "OUTBOX_BENCH";

/// Which broker, connected, with the outbox's own destination for it.
#[derive(Clone)]
pub enum Broker {
    Nats(Box<NatsDestination>),
    Kafka {
        destination: KafkaDestination,
        brokers: String,
    },
    Amqp {
        destination: AmqpDestination,
        channel: Channel,
    },
}

impl Broker {
    pub async fn nats(url: &str) -> Self {
        let destination = NatsDestination::connect(NatsConfig {
            url: url.into(),
            ..NatsConfig::default()
        })
        .await
        .expect("NATS at OUTBOX_NATS_URL");
        Broker::Nats(Box::new(destination))
    }

    pub fn kafka(brokers: &str) -> Self {
        let destination = KafkaDestination::new(KafkaConfig {
            brokers: brokers.into(),
            ..KafkaConfig::default()
        })
        .expect("Kafka config");
        Broker::Kafka {
            destination,
            brokers: brokers.into(),
        }
    }

    pub async fn amqp(url: &str) -> Self {
        let destination = AmqpDestination::connect(AmqpConfig {
            url: url.into(),
            connection_name: "outbox-bench".into(),
            ..AmqpConfig::default()
        })
        .await
        .expect("RabbitMQ at OUTBOX_AMQP_URL");
        let channel = destination.channel().await.expect("channel");
        Broker::Amqp {
            destination,
            channel,
        }
    }

    /// An empty address for one run of `pair`: a subject of a new stream,
    /// a new topic, or an emptied durable queue.
    pub async fn prepare(&self, pair: &str) -> String {
        match self {
            Broker::Nats(destination) => {
                let js = destination.jetstream();
                let _ = js.delete_stream(NATS_STREAM).await;
                js.get_or_create_stream(stream::Config {
                    name: NATS_STREAM.into(),
                    subjects: vec!["outbox-bench.>".into()],
                    ..Default::default()
                })
                .await
                .expect("stream");
                format!("outbox-bench.{pair}")
            }
            Broker::Kafka { destination, .. } => {
                let topic = format!("outbox-bench-{pair}-{}", Uuid::now_v7().simple());
                destination
                    .create_topics(&[&topic], KAFKA_PARTITIONS, 1)
                    .await
                    .expect("Kafka-protocol broker at OUTBOX_KAFKA_BROKERS");
                topic
            }
            Broker::Amqp { channel, .. } => {
                let queue = format!("outbox-bench-{pair}");
                channel
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .expect("declare queue");
                channel
                    .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                    .await
                    .expect("purge queue");
                queue
            }
        }
    }

    /// Frees what a run left at `address` (the broker keeps it otherwise).
    pub async fn release(&self, address: &str) {
        match self {
            Broker::Nats(destination) => {
                let _ = destination.jetstream().delete_stream(NATS_STREAM).await;
            }
            // tansu keeps memory-stored topics until it stops.
            Broker::Kafka { .. } => {}
            Broker::Amqp { channel, .. } => {
                let _ = channel
                    .queue_delete(address.into(), QueueDeleteOptions::default())
                    .await;
            }
        }
    }

    /// Messages the broker holds at `address`.
    pub async fn stored(&self, address: &str) -> u64 {
        match self {
            Broker::Nats(destination) => {
                let mut stream = destination
                    .jetstream()
                    .get_stream(NATS_STREAM)
                    .await
                    .expect("stream");
                stream.info().await.expect("stream info").state.messages
            }
            Broker::Kafka { brokers, .. } => {
                let (brokers, topic) = (brokers.clone(), address.to_string());
                tokio::task::spawn_blocking(move || kafka_records(&brokers, &topic))
                    .await
                    .expect("reader task")
            }
            Broker::Amqp { channel, .. } => channel
                .queue_declare(
                    address.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("queue")
                .message_count() as u64,
        }
    }

    /// Sends every message through the destination adapter's own `send`,
    /// all in flight together: the adapter and the broker with the headers
    /// the outbox's contract puts on each message, without a source or the
    /// relay.
    pub async fn send_all(&self, messages: &[Message]) {
        async fn each<D: Destination<Item = Message>>(destination: &D, messages: &[Message]) {
            let sends = messages.iter().map(|m| destination.send(m));
            for sent in join_all(sends).await {
                sent.expect("sent by the adapter");
            }
        }
        match self {
            Broker::Nats(destination) => each(&**destination, messages).await,
            Broker::Kafka { destination, .. } => each(destination, messages).await,
            Broker::Amqp { destination, .. } => each(destination, messages).await,
        }
    }

    /// Publishes every row with all acknowledgements in flight together,
    /// then waits for them all: the references' way.
    pub async fn publish_all(&self, rows: &[Row]) {
        match self {
            Broker::Nats(destination) => {
                let js = destination.jetstream();
                let mut acks = Vec::with_capacity(rows.len());
                for row in rows {
                    acks.push(nats_publish(js, row).await);
                }
                // All are in flight already; awaiting in order costs nothing.
                for ack in acks {
                    ack.await.expect("JetStream ack");
                }
            }
            Broker::Kafka { destination, .. } => {
                let producer = destination.producer();
                let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
                let deliveries: Vec<_> = rows
                    .iter()
                    .zip(&ids)
                    .map(|(row, id)| {
                        let record = FutureRecord::to(&row.destination)
                            .key(id.as_str())
                            .payload(row.payload.as_slice())
                            .headers(OwnedHeaders::new().insert(Header {
                                key: "message-id",
                                value: Some(id.as_bytes()),
                            }));
                        producer
                            .send_result(record)
                            .map_err(|(err, _)| err)
                            .expect("queue to producer")
                    })
                    .collect();
                for delivery in join_all(deliveries).await {
                    delivery.expect("delivery report").expect("delivered");
                }
            }
            Broker::Amqp { channel, .. } => {
                let mut confirms = Vec::with_capacity(rows.len());
                for row in rows {
                    confirms.push(
                        channel
                            .basic_publish(
                                "".into(),
                                row.destination.as_str().into(),
                                BasicPublishOptions::default(),
                                &row.payload,
                                BasicProperties::default()
                                    .with_delivery_mode(2)
                                    .with_message_id(ShortString::from(row.id.to_string())),
                            )
                            .await
                            .expect("publish"),
                    );
                }
                for confirm in join_all(confirms).await {
                    assert!(confirm.expect("confirm").is_ack(), "broker refused");
                }
            }
        }
    }
}

/// Records in every partition of `topic`, read from the start by a
/// group-less consumer until none came for a second. (tansu's high
/// watermarks undercount, so the records are read.)
fn kafka_records(brokers: &str, topic: &str) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("outbox-bench-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..KAFKA_PARTITIONS {
        partitions
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&partitions).expect("assign");
    let mut records = 0;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(1) {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            records += 1;
            last = Instant::now();
        }
    }
    records
}

async fn nats_publish(js: &jetstream::Context, row: &Row) -> jetstream::context::PublishAckFuture {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MSG_ID, row.id.to_string().as_str());
    js.publish_with_headers(row.destination.clone(), headers, row.payload.clone().into())
        .await
        .expect("publish")
}
