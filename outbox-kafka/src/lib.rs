//! Kafka for the transactional outbox: a [`KafkaDestination`] on rdkafka.
//!
//! * Topic: the message's `destination`, which must be a legal Kafka topic
//!   name (else a permanent error). Record key: its partition key, else its
//!   ordering key, so one entity's messages land in one partition.
//! * Idempotent by default (`enable.idempotence=true`, `acks=all`): the
//!   producer's own retries neither duplicate nor reorder a partition.
//! * Pipelined: the messages of a key handed over at once that go to one
//!   partition (one topic and partition key) are queued to the producer in
//!   order and their delivery reports awaited together; the idempotent
//!   producer keeps them in that order within the partition. A message for
//!   another partition waits until the earlier ones are acknowledged, since
//!   Kafka keeps no order across partitions.
//!   librdkafka's own message timeout is infinite, since a message it times
//!   out lets the later ones of its partition go on without it; the
//!   destination keeps [`KafkaConfig::delivery_timeout`] itself.
//! * Headers: the message's own, plus `outbox-message-id` and
//!   `outbox-event-type`, so consumers can drop duplicates by id.

mod config;
mod destination;
mod error;
mod incoming;
mod retiring;

pub use config::KafkaConfig;
pub use destination::KafkaDestination;
pub use error::classify;
pub use incoming::incoming;
/// The rdkafka crate this destination is built on, so users and tests reach
/// its types without a dependency of their own (and at the same version).
pub use rdkafka;
