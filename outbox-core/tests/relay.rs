//! Relay behaviour beyond the conformance suite: wake-up, panics, health,
//! parked keys, configuration errors.

use std::time::{Duration, Instant};

use outbox_core::memory::{MemoryDestination, MemorySource};
use outbox_core::{Message, OnDeadLetter, Relay, RelayConfig};
use outbox_testkit::{eventually, numbered_messages, run_relay};

fn fast() -> RelayConfig {
    RelayConfig {
        send_timeout: Duration::from_secs(1),
        backoff: outbox_core::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            ..Default::default()
        },
        ..RelayConfig::default()
    }
}

#[tokio::test]
async fn new_work_wakes_an_idle_relay_before_its_poll() {
    let source = MemorySource::default();
    let destination = MemoryDestination::new();
    let config = RelayConfig {
        poll_interval_min: Duration::from_secs(5),
        poll_interval_max: Duration::from_secs(5),
        ..fast()
    };
    let relay = run_relay(source.clone(), destination.clone(), config);
    // Let the relay find the outbox empty and go idle.
    assert!(
        eventually(Duration::from_secs(5), || async {
            relay.stats.health().healthy
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    source.enqueue(numbered_messages("t", 1, 1));
    assert!(destination.wait_for(1, Duration::from_secs(2)).await);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited for the poll: {:?}",
        started.elapsed()
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_panicking_destination_is_a_temporary_failure() {
    let source = MemorySource::default();
    let destination = MemoryDestination::new();
    let messages = numbered_messages("t", 2, 2);
    destination.panic_on(messages[0].id);
    source.enqueue(messages.clone());
    let config = RelayConfig {
        max_attempts: 2,
        ..fast()
    };
    let relay = run_relay(source.clone(), destination.clone(), config);
    assert!(
        eventually(Duration::from_secs(5), || async {
            source.dead_letters().len() == 1
        })
        .await
    );
    assert!(destination.wait_for(3, Duration::from_secs(5)).await);
    relay.stop().await;
    let dead = source.dead_letters();
    assert!(
        dead[0].error.contains("destination panicked"),
        "{}",
        dead[0].error
    );
}

#[tokio::test]
async fn parked_keys_wait_for_their_dead_letter() {
    let source = MemorySource::default().on_dead_letter(OnDeadLetter::Park);
    let destination = MemoryDestination::new();
    let messages = numbered_messages("t", 2, 3);
    destination.fail_permanently(messages[0].id);
    source.enqueue(messages.clone());
    let relay = run_relay(source.clone(), destination.clone(), fast());
    assert!(destination.wait_for(3, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        destination.sent_count(),
        3,
        "later messages of a parked key went out"
    );
    // The operator fixes the cause and requeues: the key resumes in order.
    destination.heal();
    assert!(source.requeue(messages[0].id));
    assert!(destination.wait_for(6, Duration::from_secs(5)).await);
    relay.stop().await;
    let key0: Vec<_> = destination
        .sent()
        .into_iter()
        .filter(|s| s.message.ordering_key == "key-0")
        .map(|s| s.message.id)
        .collect();
    assert_eq!(key0, vec![messages[0].id, messages[2].id, messages[4].id]);
}

#[tokio::test]
async fn stats_count_outcomes_and_health_sees_a_stall() {
    let source = MemorySource::default();
    let destination = MemoryDestination::new();
    let messages = numbered_messages("t", 3, 2);
    destination.fail_times(messages[0].id, 1);
    destination.fail_permanently(messages[1].id);
    source.enqueue(messages);
    let config = RelayConfig {
        stall_after: Duration::from_millis(300),
        ..fast()
    };
    let relay = run_relay(source.clone(), destination.clone(), config);
    let stats = relay.stats.clone();
    // key-0: retried once, then both delivered; key-1: its head is
    // dead-lettered and (OnDeadLetter::Continue) its second delivered; key-2:
    // both delivered. Five published in all.
    let settled = eventually(Duration::from_secs(5), || async {
        stats.snapshot().counts.published == 5 && stats.snapshot().counts.in_flight == 0
    })
    .await;
    assert!(settled, "published {}", stats.snapshot().counts.published);
    assert_eq!(stats.snapshot().counts.retried, 1);
    assert_eq!(stats.snapshot().counts.dead_lettered, 1);
    assert_eq!(stats.snapshot().counts.in_flight, 0);
    assert!(stats.health().healthy, "{:?}", stats.health());
    assert_eq!(stats.snapshot().end_to_end_latency.count, 5);

    // A destination that never answers: items stay in flight, health fails.
    destination.delay_all(Duration::from_secs(30));
    source.enqueue([Message::builder("t", "slow").build().unwrap()]);
    let stalled = eventually(Duration::from_secs(5), || async { !stats.health().healthy }).await;
    relay.stop().await;
    assert!(stalled, "health never reported the stall");
}

/// Every claimed item is in exactly one of the snapshot's counts, at every
/// instant: their sum (the items claimed so far) never goes down while the
/// relay runs, and ends at the messages published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_counts_each_claimed_item_once() {
    let source = MemorySource::default();
    let destination = MemoryDestination::new();
    source.enqueue(numbered_messages("t", 100, 30));
    let relay = run_relay(source.clone(), destination.clone(), fast());
    let stats = relay.stats.clone();
    let sampler = tokio::spawn(async move {
        let mut last = 0;
        let mut samples = 0;
        loop {
            let counts = stats.snapshot().counts;
            let claimed = counts.published
                + counts.retried
                + counts.dead_lettered
                + counts.released
                + counts.in_flight;
            assert!(
                claimed >= last,
                "the claimed items went from {last} to {claimed}: {counts:?}"
            );
            last = claimed;
            samples += 1;
            if counts.published == 3000 && counts.in_flight == 0 {
                return (claimed, samples);
            }
            tokio::task::yield_now().await;
        }
    });
    let (claimed, samples) = tokio::time::timeout(Duration::from_secs(20), sampler)
        .await
        .expect("all 3,000 published within 20 s")
        .expect("sampler");
    relay.stop().await;
    assert_eq!(claimed, 3000, "after {samples} samples");
}

/// `drain` delivers what waits and returns: a failed head waits for its
/// backoff with the rest of its key, a refused one is dead-lettered, and a
/// later drain delivers the key once the retry is due.
#[tokio::test]
async fn drain_delivers_what_waits_and_says_what_became_of_it() {
    let source = MemorySource::default();
    let destination = MemoryDestination::new();
    let messages = numbered_messages("t", 3, 2);
    destination.fail_times(messages[0].id, 1);
    destination.fail_permanently(messages[1].id);
    source.enqueue(messages.clone());
    let config = RelayConfig {
        backoff: outbox_core::Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_millis(500),
            ..Default::default()
        },
        ..fast()
    };
    let relay = Relay::new(source.clone(), destination.clone(), config).unwrap();
    let first = relay.drain().await.unwrap();
    assert_eq!(
        (first.published, first.retried, first.dead_lettered),
        (3, 1, 1),
        "key-1's second and key-2's two published, key-0 waits: {first:?}"
    );
    assert_eq!(destination.sent_count(), 3);
    let published = std::sync::atomic::AtomicU64::new(0);
    let rest = eventually(Duration::from_secs(5), || async {
        let drained = relay.drain().await.unwrap();
        let total = published.fetch_add(drained.published, std::sync::atomic::Ordering::Relaxed)
            + drained.published;
        total == 2
    })
    .await;
    assert!(rest, "key-0 was not delivered by later drains");
    assert_eq!(
        relay.drain().await.unwrap(),
        outbox_core::Drained::default()
    );
}

#[test]
fn bad_configuration_names_the_setting() {
    let config = RelayConfig {
        max_concurrent_keys: 0,
        ..RelayConfig::default()
    };
    let err = Relay::new(MemorySource::default(), MemoryDestination::new(), config)
        .err()
        .expect("invalid config accepted");
    assert_eq!(err.setting, "max_concurrent_keys");
}

/// A memory source made slow where a database under load is: its claims
/// (before the lease is taken, or after, eating into it) and its backlog
/// count.
#[derive(Default)]
struct Slow {
    source: MemorySource,
    before_claim: Duration,
    after_claim: Duration,
    backlog: Duration,
    backlogs_counted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    checkpoints: std::sync::Arc<std::sync::atomic::AtomicU64>,
    claims: std::sync::Arc<ClaimCounts>,
}

/// What became of a [`Slow`] source's claims.
#[derive(Default)]
struct ClaimCounts {
    /// Claims begun.
    begun: std::sync::atomic::AtomicU64,
    /// Items the claims took.
    taken: std::sync::atomic::AtomicU64,
    /// Claims that ran to their end.
    ended: std::sync::atomic::AtomicU64,
}

impl outbox_core::Source for Slow {
    type Item = Message;

    async fn claim(&self, limit: usize) -> Result<outbox_core::Claim<Message>, outbox_core::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        self.claims.begun.fetch_add(1, Relaxed);
        tokio::time::sleep(self.before_claim).await;
        let claim = self.source.claim(limit).await;
        let taken = claim.as_ref().map_or(0, |claim| claim.len());
        self.claims.taken.fetch_add(taken as u64, Relaxed);
        tokio::time::sleep(self.after_claim).await;
        self.claims.ended.fetch_add(1, Relaxed);
        claim
    }

    async fn ack(
        &self,
        claim: outbox_core::ClaimId,
        items: &[Message],
    ) -> Result<(), outbox_core::Error> {
        self.source.ack(claim, items).await
    }

    async fn retry(
        &self,
        claim: outbox_core::ClaimId,
        failures: &[outbox_core::Failure<Message>],
    ) -> Result<(), outbox_core::Error> {
        self.source.retry(claim, failures).await
    }

    async fn dead_letter(
        &self,
        claim: outbox_core::ClaimId,
        failures: &[outbox_core::Failure<Message>],
    ) -> Result<(), outbox_core::Error> {
        self.source.dead_letter(claim, failures).await
    }

    async fn release(
        &self,
        claim: outbox_core::ClaimId,
        items: &[Message],
    ) -> Result<(), outbox_core::Error> {
        self.source.release(claim, items).await
    }

    fn lease(&self) -> Duration {
        self.source.lease()
    }

    async fn wait_for_work(&self) {
        self.source.wait_for_work().await
    }

    async fn checkpoint(&self) {
        self.checkpoints
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn backlog(&self) -> Result<Option<outbox_core::Backlog>, outbox_core::Error> {
        tokio::time::sleep(self.backlog).await;
        self.backlogs_counted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.source.backlog().await
    }
}

/// A claim that takes most of the lease before taking it (a claim
/// statement slowed by load, on a source whose lease runs from the end of
/// the claim) leaves the whole lease to send: lease 3 s, send timeout 2 s,
/// claims of 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_claim_does_not_eat_the_time_to_send() {
    let source = MemorySource::new(Duration::from_secs(3));
    source.enqueue(numbered_messages("t", 10, 1));
    let destination = MemoryDestination::new();
    let slow = Slow {
        source: source.clone(),
        before_claim: Duration::from_secs(2),
        ..Slow::default()
    };
    let config = RelayConfig {
        send_timeout: Duration::from_secs(2),
        ..fast()
    };
    let relay = run_relay(slow, destination.clone(), config);
    let delivered = destination.wait_for(10, Duration::from_secs(15)).await;
    let released = relay.stats.snapshot().counts.released;
    relay.stop().await;
    assert!(
        delivered,
        "the batch was released unsent, claim after claim"
    );
    assert_eq!(released, 0, "items were released unsent");
}

/// A relay whose batches are released unsent, claim after claim, says so in
/// its health instead of answering healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_released_unsent_again_and_again_make_the_relay_unhealthy() {
    let source = MemorySource::new(Duration::from_secs(3));
    source.enqueue(numbered_messages("t", 10, 1));
    let slow = Slow {
        source: source.clone(),
        after_claim: Duration::from_millis(2500),
        ..Slow::default()
    };
    let config = RelayConfig {
        send_timeout: Duration::from_secs(2),
        ..fast()
    };
    let relay = run_relay(slow, MemoryDestination::new(), config);
    let unhealthy = eventually(Duration::from_secs(30), || async {
        !relay.stats.health().healthy
    })
    .await;
    let health = relay.stats.health();
    relay.stop().await;
    assert!(unhealthy, "healthy while nothing could be sent: {health:?}");
    assert!(
        health.reason.contains("released unsent"),
        "{}",
        health.reason
    );
}

/// A relay whose claims succeed but find nothing to deliver while messages
/// wait (here every row is held by a stalled relay's claim) says so in its
/// health, and is healthy again once messages flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_delivered_while_messages_wait_makes_the_relay_unhealthy() {
    use outbox_core::Source;
    let source = MemorySource::default();
    source.enqueue(numbered_messages("t", 5, 1));
    let stalled = source.another_relay(Duration::from_secs(3));
    let held = stalled.claim(10).await.expect("claim");
    assert_eq!(held.len(), 5);
    // Claims (empty) at least every 100 ms: they keep succeeding.
    let config = RelayConfig {
        stall_after: Duration::from_millis(500),
        poll_interval_max: Duration::from_millis(100),
        ..fast()
    };
    let relay = run_relay(source.clone(), MemoryDestination::new(), config);
    let unhealthy = eventually(Duration::from_secs(10), || async {
        !relay.stats.health().healthy
    })
    .await;
    let health = relay.stats.health();
    assert!(unhealthy, "healthy while nothing was delivered: {health:?}");
    assert!(
        health.reason.contains("messages waiting"),
        "{}",
        health.reason
    );
    // The stalled claim's lease ends; the relay delivers and recovers.
    let recovered = eventually(Duration::from_secs(20), || async {
        relay.stats.health().healthy && relay.stats.snapshot().counts.published == 5
    })
    .await;
    let health = relay.stats.health();
    relay.stop().await;
    assert!(recovered, "never recovered: {health:?}");
}

/// A source reading a log further behind than its `max_lag_bytes` makes the
/// relay unhealthy, naming the setting; within it, the relay is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_lag_past_its_limit_makes_the_relay_unhealthy() {
    let lag = |bytes| outbox_core::LogLag {
        bytes,
        age: Some(Duration::from_secs(2)),
        max_bytes: Some(1000),
    };
    for (bytes, healthy) in [(1000, true), (1001, false)] {
        let source = MemorySource::default().with_log_lag(lag(bytes));
        let relay = run_relay(source, MemoryDestination::new(), fast());
        let refreshed = eventually(Duration::from_secs(10), || async {
            relay.stats.backlog().is_some()
        })
        .await;
        let health = relay.stats.health();
        relay.stop().await;
        assert!(refreshed, "no backlog reached the statistics");
        assert_eq!(health.healthy, healthy, "{bytes} bytes behind: {health:?}");
        if !healthy {
            assert!(
                health.reason.contains("1001 bytes")
                    && health.reason.contains("max_lag_bytes (1000)"),
                "{}",
                health.reason
            );
        }
    }
}

/// The backlog is counted off the claim path: a slow count never delays a
/// claim, and its figure still reaches the statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backlog_query_never_delays_delivery() {
    use outbox_core::Source;
    let source = MemorySource::default();
    source.enqueue(numbered_messages("t", 10, 1));
    let destination = MemoryDestination::new();
    let started = Instant::now();
    let slow = Slow {
        source: source.clone(),
        backlog: Duration::from_secs(3),
        ..Slow::default()
    };
    let relay = run_relay(slow, destination.clone(), fast());
    assert!(destination.wait_for(10, Duration::from_secs(10)).await);
    let took = started.elapsed();
    source.enqueue(numbered_messages("t", 1, 1));
    let counted = eventually(Duration::from_secs(10), || async {
        relay.stats.backlog().is_some()
    })
    .await;
    relay.stop().await;
    assert!(
        took < Duration::from_secs(1),
        "delivery waited for the backlog query: {took:?}"
    );
    assert!(counted, "the backlog never reached the statistics");
    let _ = source.lease();
}

/// A relay whose `run` future is dropped (a `select!` that took another
/// branch, say) leaves nothing of its own running: its backlog counts stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_relay_leaves_no_task_behind() {
    use std::sync::atomic::Ordering;
    let slow = Slow::default();
    let counted = slow.backlogs_counted.clone();
    let relay = Relay::new(slow, MemoryDestination::new(), fast()).unwrap();
    let run = relay.run(outbox_core::CancellationToken::new());
    assert!(tokio::time::timeout(Duration::from_millis(300), run)
        .await
        .is_err());
    let at_drop = counted.load(Ordering::Relaxed);
    // Longer than the relay's 5 s between two counts.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        counted.load(Ordering::Relaxed),
        at_drop,
        "the dropped relay's backlog task went on counting"
    );
}

/// The relay's last call to its source is a checkpoint, at the end of each
/// drain and of a run, after every report: a source that confirms progress
/// lazily (the WAL source) makes it durable before the process exits.
#[tokio::test]
async fn drain_and_run_end_with_a_checkpoint() {
    use std::sync::atomic::Ordering;
    let source = Slow::default();
    let (memory, checkpoints) = (source.source.clone(), source.checkpoints.clone());
    memory.enqueue(numbered_messages("events", 3, 2));
    let relay = Relay::new(source, MemoryDestination::new(), fast()).unwrap();
    let drained = relay.drain().await.unwrap();
    assert_eq!(
        (drained.published, checkpoints.load(Ordering::Relaxed)),
        (6, 1)
    );
    relay.drain().await.unwrap();
    assert_eq!(checkpoints.load(Ordering::Relaxed), 2);
    let shutdown = outbox_core::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(checkpoints.load(Ordering::Relaxed), 3);
}

/// Shutdown never cuts a claim short: a source's claim dropped half-way
/// can leave its connection inside a transaction (sqlx 0.8.6 returns a
/// PostgreSQL connection whose `BEGIN` was cancelled to the pool still in
/// it, where the application's next writes would run and be lost), and
/// rows it had taken would wait out their lease. The claim in flight ends,
/// and what it took is released at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_claim_in_flight_end_and_releases_what_it_took() {
    use std::sync::atomic::Ordering::Relaxed;
    let lease = Duration::from_secs(60);
    let memory = MemorySource::new(lease);
    let messages = numbered_messages("t", 5, 1);
    let slow = Slow {
        source: memory.clone(),
        after_claim: Duration::from_millis(500),
        ..Slow::default()
    };
    let claims = slow.claims.clone();
    let destination = MemoryDestination::new();
    let relay = Relay::new(slow, destination.clone(), fast()).unwrap();
    let shutdown = outbox_core::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    // The relay's first claim finds nothing; the messages arrive, and the
    // next claim takes them and is still in flight when shutdown comes.
    assert!(
        eventually(Duration::from_secs(5), || async {
            claims.ended.load(Relaxed) >= 1
        })
        .await
    );
    memory.enqueue(messages.clone());
    assert!(
        eventually(Duration::from_secs(5), || async {
            claims.taken.load(Relaxed) == messages.len() as u64
        })
        .await,
        "no claim took the messages"
    );
    assert!(claims.begun.load(Relaxed) > claims.ended.load(Relaxed));
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        claims.begun.load(Relaxed),
        claims.ended.load(Relaxed),
        "a claim was cut short"
    );
    let next = memory.another_relay(lease);
    let free = outbox_core::Source::claim(&next, 10).await.unwrap().len();
    assert_eq!(
        destination.distinct_count() + free,
        messages.len(),
        "what the last claim took waits for its lease"
    );
}
