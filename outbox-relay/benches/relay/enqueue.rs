//! What an outbox message adds to a business transaction, as production
//! runs it: writers commit one-row transactions for a while, with nothing
//! added, with one empty statement (`SELECT 1`: the floor, the round trip
//! any enqueue call pays), with one message and no relay running (the
//! writer's own price), or with one message while a relay with default
//! settings drains the outbox to NATS JetStream on the same machine (so
//! PostgreSQL's writers NOTIFY it whenever it waits for work, and the relay
//! takes its share of the CPU).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::{CancellationToken, Message};
use outbox_nats::NatsDestination;

use crate::backlog::{Added, Backlog};
use crate::KEYS;

/// How many writers (or consumers) commit at once in the cost runs.
pub const WRITERS: usize = 8;

/// Transactions per second and the median transaction time of one mode.
pub struct Cost {
    pub per_second: f64,
    pub p50: Duration,
}

/// What each writer's transaction holds besides its order row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// Nothing: the business transaction alone.
    Nothing,
    /// `SELECT 1`: the floor of any enqueue call.
    EmptyStatement,
    /// One message of 200 bytes, no relay running.
    Message,
    /// One message of 200 bytes, a relay draining meanwhile.
    MessageWhileRelaying,
}

impl Extra {
    /// Every kind, in the order the report shows them.
    pub const ALL: [Extra; 4] = [
        Extra::Nothing,
        Extra::EmptyStatement,
        Extra::Message,
        Extra::MessageWhileRelaying,
    ];

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Extra::Nothing => "the order row alone",
            Extra::EmptyStatement => "+ `SELECT 1` (the floor)",
            Extra::Message => "+ a message, no relay running",
            Extra::MessageWhileRelaying => "+ a message, a relay draining",
        }
    }
}

/// Runs `writers` writers for `seconds`, each transaction inserting one
/// order row and `extra`; with a message, a relay publishes to `subject`
/// on `destination` meanwhile.
pub async fn measure(
    backlog: &Backlog,
    extra: Extra,
    writers: usize,
    seconds: u64,
    destination: &NatsDestination,
    subject: &str,
) -> Cost {
    backlog.orders_table().await;
    backlog.truncate().await;
    let shutdown = CancellationToken::new();
    let relay = (extra == Extra::MessageWhileRelaying).then(|| {
        let (backlog, destination) = (backlog.clone(), destination.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move { backlog.relay(destination, shutdown).await })
    });
    let (writing, subject) = (backlog.clone(), subject.to_string());
    let cost = timed(writers, seconds, move |i| {
        let (backlog, subject) = (writing.clone(), subject.clone());
        async move {
            let message = Message::builder(subject, format!("key-{}", i % KEYS))
                .payload(vec![b'x'; 200])
                .build()
                .expect("message");
            let added = match extra {
                Extra::Nothing => Added::Nothing,
                Extra::EmptyStatement => Added::EmptyStatement,
                Extra::Message | Extra::MessageWhileRelaying => Added::Message(&message),
            };
            backlog.business_transaction(added).await;
        }
    })
    .await;
    shutdown.cancel();
    if let Some(relay) = relay {
        relay.await.expect("relay task");
    }
    cost
}

/// Runs `writers` tasks for `seconds`, each calling `transaction(i)` (`i`
/// counts that task's calls across all tasks) one after the other, and
/// times every call.
pub async fn timed<F, Fut>(writers: usize, seconds: u64, transaction: F) -> Cost
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let times: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let (transaction, times) = (transaction.clone(), times.clone());
            tokio::spawn(async move {
                let mut i = writer;
                while Instant::now() < end {
                    let began = Instant::now();
                    transaction(i).await;
                    times.lock().unwrap().push(began.elapsed());
                    i += writers;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut times = std::mem::take(&mut *times.lock().unwrap());
    times.sort();
    Cost {
        per_second: times.len() as f64 / elapsed,
        p50: times[times.len() / 2],
    }
}
