//! Helpers the scenarios share: test messages, running a relay, checking order.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::memory::{MemoryDestination, MemorySource};
use outbox_core::{
    Backoff, CancellationToken, Destination, Message, Relay, RelayConfig, Source, Stats,
};
use uuid::Uuid;

/// `keys * per_key` messages to `address`, interleaved across keys
/// (`key-0/0, key-1/0, ..., key-0/1, ...`); each payload is `key/seq`.
pub fn numbered_messages(address: &str, keys: usize, per_key: usize) -> Vec<Message> {
    let mut messages = Vec::with_capacity(keys * per_key);
    for seq in 0..per_key {
        for key in 0..keys {
            let message = Message::builder(address, format!("key-{key}"))
                .payload(format!("key-{key}/{seq}"))
                .event_type("TestEvent")
                .header("seq", seq.to_string())
                .build()
                .expect("valid test message");
            messages.push(message);
        }
    }
    messages
}

/// What a memory destination received, as `(ordering key, id)` in arrival
/// order: the input of [`assert_order_per_key`].
pub fn arrivals(destination: &MemoryDestination) -> Vec<(String, Uuid)> {
    destination
        .sent()
        .into_iter()
        .map(|s| (s.message.ordering_key, s.message.id))
        .collect()
}

/// A relay configuration for tests against real servers: short polls, send
/// timeout and backoff, so a scenario's retries and idle relays take
/// milliseconds.
pub fn fast_relay_config() -> RelayConfig {
    RelayConfig {
        send_timeout: Duration::from_secs(2),
        poll_interval_max: Duration::from_millis(100),
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            ..Backoff::default()
        },
        ..RelayConfig::default()
    }
}

/// Checks that every message of `enqueued` arrived, and that for each key the
/// arrivals, duplicates dropped (first arrival kept), follow enqueue order.
/// `arrived` holds `(ordering key, id)` in arrival order. Returns how many
/// duplicates arrived.
pub fn assert_order_per_key(enqueued: &[Message], arrived: &[(String, Uuid)]) -> usize {
    let mut expected: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for message in enqueued {
        expected
            .entry(message.ordering_key.as_str())
            .or_default()
            .push(message.id);
    }
    let mut seen = HashSet::new();
    let mut got: HashMap<&str, Vec<Uuid>> = HashMap::new();
    let mut duplicates = 0;
    for (key, id) in arrived {
        if seen.insert(*id) {
            got.entry(key.as_str()).or_default().push(*id);
        } else {
            duplicates += 1;
        }
    }
    for (key, ids) in &expected {
        let arrived_ids = got.get(key).cloned().unwrap_or_default();
        assert_eq!(
            arrived_ids.len(),
            ids.len(),
            "key {key}: {} of {} messages arrived",
            arrived_ids.len(),
            ids.len()
        );
        assert_eq!(
            &arrived_ids, ids,
            "key {key}: messages arrived out of order"
        );
    }
    duplicates
}

/// Polls `condition` until it holds or `timeout` passes; true if it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relay running in a task of its own.
pub struct RunningRelay {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), outbox_core::Error>>,
    /// The relay's statistics.
    pub stats: Arc<Stats>,
}

impl RunningRelay {
    /// Cancels the relay and waits for it to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("relay task panicked")
            .expect("relay returned an error");
    }
}

/// Starts a relay; panics on invalid configuration.
pub fn run_relay<S, D>(source: S, destination: D, config: RelayConfig) -> RunningRelay
where
    S: Source,
    D: Destination<Item = S::Item>,
{
    let relay = Relay::new(source, destination, config).expect("valid relay configuration");
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    RunningRelay {
        shutdown,
        task,
        stats,
    }
}

/// The verdict of an outage test (a broker restarted, a connection cut):
/// the relay drained `source` (`drained`), dead-lettered nothing, and the
/// fault struck mid-stream (fewer than `total` published when it did).
pub fn assert_recovered(
    source: &MemorySource,
    drained: bool,
    published_at_fault: u64,
    total: usize,
) {
    assert!(
        drained,
        "{} messages still waiting after the fault",
        source.waiting()
    );
    let dead = source.dead_letters();
    assert!(dead.is_empty(), "dead-lettered during the fault: {dead:?}");
    assert!(
        published_at_fault < total as u64,
        "the fault struck after the end ({published_at_fault} of {total} published)"
    );
}

/// Relays from `source` to a memory destination until `good` messages
/// arrived and `dead_lettered` holds (each within 20 s), then stops the
/// relay. Returns the destination and whether each happened in time: the
/// run of a test that writes bad rows beside good ones.
pub async fn relay_good_beside_bad<S, F, Fut>(
    source: S,
    config: RelayConfig,
    good: usize,
    dead_lettered: F,
) -> (outbox_core::memory::MemoryDestination, bool, bool)
where
    S: Source<Item = Message>,
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let destination = outbox_core::memory::MemoryDestination::new();
    let relay = run_relay(source, destination.clone(), config);
    let delivered = destination.wait_for(good, Duration::from_secs(20)).await;
    let dead = eventually(Duration::from_secs(20), dead_lettered).await;
    relay.stop().await;
    (destination, delivered, dead)
}
