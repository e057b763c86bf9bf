//! The brokers of the chaos runs: where the relays publish, and the
//! verifying consumer that sees what arrives.

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use outbox_amqp::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use outbox_amqp::lapin::types::{AMQPValue, FieldTable};
use outbox_amqp::{AmqpConfig, AmqpDestination};
use outbox_kafka::{KafkaConfig, KafkaDestination};

use crate::kafka_restart;
use crate::support::servers::{OwnKafka, OwnNats, OwnRabbit};
use crate::support::{amqp_url, kafka_brokers, nats_url, stream_at, Publishes, RelayProcesses};

/// A broker of the run's own, which it restarts.
pub enum OwnBroker {
    Nats(OwnNats),
    Rabbit(OwnRabbit),
    Kafka(OwnKafka),
}

/// Partitions of a chaos topic; each key stays in one.
pub const KAFKA_PARTITIONS: i32 = 3;

/// A new topic `relay-chaos-<name>-<uuid>` of `KAFKA_PARTITIONS` partitions.
pub async fn kafka_topic(name: &str) -> String {
    let topic = format!("relay-chaos-{name}-{}", uuid::Uuid::now_v7().simple());
    create_kafka_topic(&kafka_brokers(), &topic).await;
    topic
}

/// Creates `topic` of `KAFKA_PARTITIONS` partitions on `brokers`.
pub async fn create_kafka_topic(brokers: &str, topic: &str) {
    KafkaDestination::new(KafkaConfig {
        brokers: brokers.into(),
        ..KafkaConfig::default()
    })
    .unwrap()
    .create_topics(&[topic], KAFKA_PARTITIONS, 1)
    .await
    .expect("Kafka-protocol broker reachable");
}

/// Where one chaos run publishes.
pub struct Target {
    /// The `[destination]` table body for the relays' settings file.
    pub settings: String,
    /// The messages' destination.
    pub destination: String,
    /// What the verifying consumer received, duplicates included.
    pub publishes: Publishes,
    /// NATS: the stream, which keeps each message once.
    pub stream: Option<Stream>,
    /// A broker of the run's own, which it restarts.
    pub own: Option<OwnBroker>,
    /// A queue to delete afterwards.
    queue: Option<String>,
}

impl Target {
    /// A stream on the shared NATS server; a core subscriber verifies.
    pub async fn nats(name: &str) -> Target {
        Self::nats_at(&nats_url(), name, None).await
    }

    /// A stream on a nats-server of the run's own, which it may restart.
    pub async fn own_nats(name: &str) -> Target {
        let own = OwnNats::start().await;
        let url = own.url();
        Self::nats_at(&url, name, Some(OwnBroker::Nats(own))).await
    }

    async fn nats_at(url: &str, name: &str, own: Option<OwnBroker>) -> Target {
        let subject = format!("relay-chaos-{name}");
        let stream = stream_at(
            url,
            &format!("RELAY_CHAOS_{}", name.to_uppercase()),
            &subject,
        )
        .await;
        Target {
            settings: format!("kind = \"nats\"\nurl = \"{url}\""),
            destination: format!("{subject}.orders"),
            publishes: Publishes::record_at(url, &subject).await,
            stream: Some(stream),
            own,
            queue: None,
        }
    }

    /// A new topic on the Kafka-protocol broker, read from its start.
    pub async fn kafka(name: &str) -> Target {
        let topic = kafka_topic(name).await;
        Target {
            // The delivery timeout stays under the relays' send_timeout.
            settings: format!(
                "kind = \"kafka\"\nbrokers = \"{}\"\ntimeout_ms = 800\n\
                 [destination.properties]\n\"linger.ms\" = 1",
                kafka_brokers()
            ),
            publishes: Publishes::kafka(&topic, KAFKA_PARTITIONS),
            destination: topic,
            stream: None,
            own: None,
            queue: None,
        }
    }

    /// A topic on a tansu of the run's own, which it may restart.
    pub async fn own_kafka(name: &str) -> Target {
        let broker = OwnKafka::start().await;
        let brokers = broker.brokers();
        let topic = format!("relay-chaos-{name}-{}", uuid::Uuid::now_v7().simple());
        create_kafka_topic(&brokers, &topic).await;
        Target {
            settings: format!(
                "kind = \"kafka\"\nbrokers = \"{brokers}\"\ntimeout_ms = 800\n\
                 [destination.properties]\n\"linger.ms\" = 1"
            ),
            publishes: Publishes::kafka_at(&brokers, &[], &topic, KAFKA_PARTITIONS),
            destination: topic,
            stream: None,
            own: Some(OwnBroker::Kafka(broker)),
            queue: None,
        }
    }

    /// Restarts the run's own broker while the relays run.
    pub async fn restart_broker(&mut self, relays: &RelayProcesses) {
        match self.own.as_mut().expect("a broker of the run's own") {
            OwnBroker::Nats(nats) => nats.restart(Duration::from_millis(500)).await,
            OwnBroker::Rabbit(rabbit) => rabbit.restart().await,
            OwnBroker::Kafka(broker) => {
                let topic = &self.destination;
                kafka_restart::restart(broker, &mut self.publishes, relays, topic).await
            }
        }
    }

    /// A new durable queue on the shared RabbitMQ, consumed as messages
    /// arrive.
    pub async fn amqp(name: &str) -> Target {
        Self::amqp_at(&amqp_url(), name, FieldTable::default(), None).await
    }

    /// A quorum queue on a RabbitMQ node of the run's own, which it
    /// restarts: the queue type RabbitMQ recommends where data must
    /// survive, since it confirms a message only once its log holds it.
    pub async fn own_amqp(name: &str) -> Target {
        let own = OwnRabbit::start().await;
        let url = own.url();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        Self::amqp_at(&url, name, arguments, Some(OwnBroker::Rabbit(own))).await
    }

    async fn amqp_at(
        url: &str,
        name: &str,
        arguments: FieldTable,
        own: Option<OwnBroker>,
    ) -> Target {
        let queue = format!("relay_chaos_{name}_{}", uuid::Uuid::now_v7().simple());
        let channel = admin_channel(url).await;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .unwrap();
        Target {
            settings: format!("kind = \"amqp\"\nurl = \"{url}\""),
            publishes: Publishes::amqp_at(url, &queue).await,
            destination: queue.clone(),
            stream: None,
            // A queue on the shared broker is deleted afterwards; an own
            // node goes with its directory.
            queue: own.is_none().then_some(queue),
            own,
        }
    }

    /// Deletes what the run created on a shared broker.
    pub async fn clean_up(&self) {
        if let Some(queue) = &self.queue {
            admin_channel(&amqp_url())
                .await
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    }
}

async fn admin_channel(url: &str) -> outbox_amqp::lapin::Channel {
    AmqpDestination::connect(AmqpConfig {
        url: url.into(),
        connection_name: "outbox-chaos-admin".into(),
        ..AmqpConfig::default()
    })
    .await
    .expect("RabbitMQ reachable")
    .channel()
    .await
    .unwrap()
}
