//! A transactional outbox for Rust: see the README (shown here when the
//! `postgres` and `nats` features are on, so its examples compile as tests).
#![cfg_attr(
    all(feature = "postgres", feature = "postgres-wal", feature = "nats"),
    doc = include_str!("../README.md")
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use outbox_core::*;

/// The PostgreSQL source and writer.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use outbox_postgres as postgres;

/// The MySQL / MariaDB source and writer.
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use outbox_mysql as mysql;

/// The SQLite source and writer.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use outbox_sqlite as sqlite;

/// The Kafka destination.
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub use outbox_kafka as kafka;

/// The RabbitMQ (AMQP 0.9.1) destination.
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub use outbox_amqp as amqp;

/// The NATS core and JetStream destination.
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use outbox_nats as nats;
