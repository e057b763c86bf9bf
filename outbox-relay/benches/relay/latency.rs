//! Commit-to-broker latency under steady load: writers commit one message
//! per transaction at a fixed rate, the relay runs with its default
//! settings, and a NATS subscriber notes when each message arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use outbox_core::{CancellationToken, Message, Relay, RelayConfig, Source, Stats};
use outbox_nats::{NatsDestination, NATS_MSG_ID};
use uuid::Uuid;

use crate::backlog::Backlog;
use crate::KEYS;

/// What one latency run measured.
pub struct Latency {
    /// Messages per second the writers reached.
    pub reached: f64,
    /// Every message's commit-to-arrival time, sorted.
    pub sorted: Vec<Duration>,
}

impl Latency {
    /// The `q` quantile (0.5 for the median).
    pub fn quantile(&self, q: f64) -> Duration {
        self.sorted[((self.sorted.len() - 1) as f64 * q) as usize]
    }

    pub fn max(&self) -> Duration {
        self.sorted[self.sorted.len() - 1]
    }
}

/// One message per transaction at `rate` per second for `seconds`, from
/// enough writers (one per 125 msg/s, at least 8) that a commit's wait does
/// not hold the pace back.
pub async fn measure(
    backlog: &Backlog,
    destination: &NatsDestination,
    subject: &str,
    rate: u64,
    seconds: u64,
) -> Latency {
    backlog.truncate().await;
    let committed: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    // First arrival of each id; at least once allows duplicates, counted apart.
    let arrived: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let duplicates: Arc<Mutex<u64>> = Arc::default();
    let mut subscriber = destination
        .client()
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    let recorder = {
        let arrived = arrived.clone();
        let duplicates = duplicates.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let at = Instant::now();
                let id = message.headers.as_ref().and_then(|h| h.get(NATS_MSG_ID));
                if let Some(id) = id.and_then(|id| id.as_str().parse().ok()) {
                    match arrived.lock().unwrap().entry(id) {
                        std::collections::hash_map::Entry::Occupied(_) => {
                            *duplicates.lock().unwrap() += 1;
                        }
                        std::collections::hash_map::Entry::Vacant(first) => {
                            first.insert(at);
                        }
                    }
                }
            }
        })
    };
    let shutdown = CancellationToken::new();
    let (relay, stats) = match backlog {
        Backlog::Postgres { outbox, .. } => spawn_relay(
            outbox.source().await.expect("source"),
            destination,
            &shutdown,
        ),
        Backlog::Mysql { outbox, .. } => spawn_relay(
            outbox.source().await.expect("source"),
            destination,
            &shutdown,
        ),
        Backlog::Wal { outbox, .. } => {
            // Steady state: the writers start once the reader has caught
            // up with the log, not while it decodes what came before.
            let source = outbox.source().await.expect("source");
            let monitor = source.monitor();
            let started = spawn_relay(source, destination, &shutdown);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !monitor.is_caught_up() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            started
        }
    };

    // Writers share the pace: message i is due at i / rate seconds.
    let writers = (rate / 125).max(8);
    let total = rate * seconds;
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let (backlog, committed, subject) =
                (backlog.clone(), committed.clone(), subject.to_string());
            tokio::spawn(async move {
                for i in (writer..total).step_by(writers as usize) {
                    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let message = Message::builder(&subject, format!("key-{}", i as usize % KEYS))
                        .payload(vec![b'x'; 200])
                        .build()
                        .expect("message");
                    backlog.enqueue(std::slice::from_ref(&message)).await;
                    committed.lock().unwrap().insert(message.id, Instant::now());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let reached = total as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrived.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    relay.await.expect("relay task").expect("relay");
    recorder.abort();
    let committed = committed.lock().unwrap();
    let mut sorted: Vec<Duration> = arrived
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, at)| committed.get(id).map(|c| at.saturating_duration_since(*c)))
        .collect();
    assert_eq!(
        sorted.len() as u64,
        total,
        "latency: not every message arrived"
    );
    let duplicates = *duplicates.lock().unwrap();
    if duplicates > 0 {
        // The relay's own counters say why: sends retried, or reports the
        // source refused (the batch's rows were claimed again).
        println!(
            "latency: {duplicates} duplicates arrived (not counted in the figures); the relay \
             published {}, retried {}, released {}, had {} source errors; last error: {:?}",
            stats.snapshot().counts.published,
            stats.snapshot().counts.retried,
            stats.snapshot().counts.released,
            stats.snapshot().counts.source_errors,
            stats.health().last_error
        );
    }
    sorted.sort();
    Latency { reached, sorted }
}

fn spawn_relay<S: Source<Item = Message> + 'static>(
    source: S,
    destination: &NatsDestination,
    shutdown: &CancellationToken,
) -> (
    tokio::task::JoinHandle<Result<(), outbox_core::Error>>,
    Arc<Stats>,
) {
    let relay =
        Relay::new(source, destination.clone(), RelayConfig::default()).expect("relay config");
    let stats = relay.stats();
    (tokio::spawn(relay.run(shutdown.clone())), stats)
}
