//! Every public future of the adapters is `Send`, so a service can hand it
//! to `tokio::spawn`. This is checked when this file compiles: a future
//! that holds something not `Send` across an `.await` builds inside its own
//! crate and fails only where a caller spawns it, as `MysqlOutbox::migrate`
//! once did. The functions below are never called; building them is the
//! test.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use outbox::amqp::{AmqpConfig, AmqpDestination};
use outbox::kafka::KafkaDestination;
use outbox::mysql::MysqlOutbox;
use outbox::nats::{NatsConfig, NatsDestination};
use outbox::postgres::PostgresOutbox;
use outbox::sqlite::SqliteOutbox;
use outbox::Message;
use sqlx::{MySqlConnection, PgConnection, SqliteConnection};
use uuid::Uuid;

fn spawnable<F: Future + Send>(_: F) {}

/// The writer's and the operator's calls, which every database's outbox
/// has.
macro_rules! outbox_calls {
    ($outbox:ident, $conn:ident, $message:ident) => {
        spawnable($outbox.migrate());
        spawnable($outbox.enqueue($conn, $message));
        spawnable($outbox.enqueue_many($conn, std::slice::from_ref($message)));
        spawnable($outbox.backlog());
        spawnable($outbox.dead_letters(10));
        spawnable($outbox.count_dead_letters());
        spawnable($outbox.requeue(&[Uuid::nil()]));
        spawnable($outbox.requeue_all());
        spawnable($outbox.explain_claim(10));
        spawnable($outbox.cleanup(Duration::ZERO, 10));
        spawnable($outbox.source());
    };
}

fn postgres(outbox: &PostgresOutbox, conn: &mut PgConnection, message: &Message) {
    outbox_calls!(outbox, conn, message);
}

fn mysql(outbox: &MysqlOutbox, conn: &mut MySqlConnection, message: &Message) {
    outbox_calls!(outbox, conn, message);
    spawnable(outbox.prune_keys(10));
}

fn sqlite(outbox: &SqliteOutbox, conn: &mut SqliteConnection, message: &Message) {
    spawnable(outbox::sqlite::connect("outbox.db"));
    outbox_calls!(outbox, conn, message);
}

fn brokers(kafka: &KafkaDestination, amqp: &AmqpDestination) {
    spawnable(kafka.create_topics(&["topic"], 1, 1));
    spawnable(AmqpDestination::connect(AmqpConfig::default()));
    spawnable(amqp.channel());
    spawnable(NatsDestination::connect(NatsConfig::default()));
}
