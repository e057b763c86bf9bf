//! The outbox's own relay, in this process, draining a pair's backlog.

use std::time::Duration;

use outbox_core::{CancellationToken, Destination, Message, Relay, RelayConfig, Source};

use crate::backlog::Backlog;
use crate::broker::Broker;

/// The relay's settings in every drain: batches of 1,000, up to 1,000 keys
/// at once.
pub fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 1000,
        max_concurrent_keys: 1000,
        ..RelayConfig::default()
    }
}

/// Runs `outbox::Relay` on the pair until it has published `count`
/// messages, then stops it (which awaits the last acknowledgements) and
/// checks the table is empty.
pub async fn drain(backlog: &Backlog, broker: &Broker, count: usize) {
    match backlog {
        Backlog::Postgres { outbox, .. } => {
            into(outbox.source().await.expect("source"), broker, count).await
        }
        Backlog::Mysql { outbox, .. } => {
            into(outbox.source().await.expect("source"), broker, count).await
        }
        Backlog::Wal { outbox, .. } => {
            into(outbox.source().await.expect("source"), broker, count).await
        }
    }
    assert_eq!(
        backlog.remaining().await,
        0,
        "relay: rows left in the outbox"
    );
}

async fn into<S>(source: S, broker: &Broker, count: usize)
where
    S: Source<Item = Message> + 'static,
{
    match broker {
        Broker::Nats(destination) => run(source, (**destination).clone(), count).await,
        Broker::Kafka { destination, .. } => run(source, destination.clone(), count).await,
        Broker::Amqp { destination, .. } => run(source, destination.clone(), count).await,
    }
}

async fn run<S, D>(source: S, destination: D, count: usize)
where
    S: Source<Item = Message> + 'static,
    D: Destination<Item = Message> + 'static,
{
    let relay = Relay::new(source, destination, config()).expect("relay config");
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    // The relay's own counter, not a query: polling the table would load
    // the database the relay is measured on.
    while stats.snapshot().counts.published < count as u64 {
        assert!(!task.is_finished(), "relay stopped before the drain ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await.expect("relay task").expect("relay");
}
