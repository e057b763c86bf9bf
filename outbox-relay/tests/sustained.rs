//! Sustained load, as a new user would try it: three `outbox-relay`
//! processes (PostgreSQL -> NATS JetStream) with a short lease (3 s,
//! `send_timeout` 2 s), and 8 writers committing 1 to 20 messages per
//! transaction at a steady pace. Once with the server's autovacuum as the
//! bench leaves it (off), once with it on. The relays must keep up: the
//! backlog stays bounded and commit to broker stays within a few leases;
//! nothing is lost, each key in order.
//!
//! The pace is set in the same run, because this machine's speed moves by
//! a factor of three from hour to hour: the relays first drain a still
//! backlog, and the writers then ask for that rate ([`PACE`]; half of it
//! with autovacuum on, [`PACE_AUTOVACUUM`]). (Writers at full speed, as
//! this test had them, measured how the two cores were
//! shared more than the relays: 8 writer connections to 3 relays', so in
//! a slow hour the writers got the cores and the backlog grew past five
//! seconds of writes, 26,026 at 4,049 msg/s, where in a fast hour it
//! stayed under one, 6,037 at 8,525.) The benchmark program's sustained
//! section measures how fast relays keep up; this test, that they do.
//!
//! `OUTBOX_SUSTAINED_SECONDS` sets each phase's length (default 15; the
//! long run is `OUTBOX_SUSTAINED_SECONDS=300 cargo test --release -p
//! outbox-relay --test sustained -- --nocapture`); `OUTBOX_SUSTAINED_PACE`
//! the writers' pace as a share of the still rate, or `full` for writers
//! as fast as they can (the scenario of the long runs in BENCHMARKS.md).
//! Each second it prints the backlog, the delivered count and
//! PostgreSQL's notification queue usage.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_testkit::{assert_order_per_key, eventually};
use support::autovacuum::set_autovacuum;
use support::*;
use uuid::Uuid;

const WRITERS: usize = 8;
const RELAYS: usize = 3;
const LEASE: Duration = Duration::from_secs(3);
/// The writers' pace, as a share of what the relays drained from a still
/// backlog (20 messages on each of 1,000 keys) in the same run. Three
/// relays drain that slower than they keep up with live writes: at twice
/// this pace, 8,103 msg/s against 4,055 drained, the backlog stayed under
/// 5,623 (0.7 s of writes), so this pace leaves them room.
const PACE: f64 = 1.0;
/// The same with autovacuum on, which takes its share of the two cores
/// while it vacuums the table under the writers: over minutes relays then
/// hold 0.28 - 0.52 of their still rate (BENCHMARKS.md, "Sustained load,
/// autovacuum on", and issue 33's part 3). At the full still rate a
/// 15-s phase held until autovacuum started on the table and then fell
/// behind (a CI rehearsal on 2026-12-04: 21,619 waiting at the end,
/// commit to broker p99 10.2 s), so this phase asks for half.
const PACE_AUTOVACUUM: f64 = 0.5;
/// The still backlog that sets the pace.
const STILL: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_keep_up_with_steady_writers() {
    let seconds: u64 = std::env::var("OUTBOX_SUSTAINED_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let (_, admin) = table("sustained_admin").await;
    for autovacuum in [false, true] {
        set_autovacuum(&admin, autovacuum).await;
        let phase = run_phase(seconds, autovacuum).await;
        set_autovacuum(&admin, false).await;
        phase.unwrap_or_else(|failure| panic!("autovacuum {autovacuum}: {failure}"));
    }
}

async fn run_phase(seconds: u64, autovacuum: bool) -> Result<(), String> {
    let name = if autovacuum {
        "sustained_vacuumed"
    } else {
        "sustained"
    };
    let subject = name.replace('_', "-");
    let (outbox, pool) = table(name).await;
    let _stream = stream(&name.to_uppercase(), &subject).await;
    let publishes = Publishes::record(&subject).await;
    let config = settings(name, spare_port(), "");
    let env = [
        ("OUTBOX_HTTP__LISTEN", String::new()),
        ("OUTBOX_SOURCE__LEASE_MS", LEASE.as_millis().to_string()),
        ("OUTBOX_RELAY__SEND_TIMEOUT", "2000".to_string()),
    ];
    // The still backlog, on keys of its own, committed before the relays
    // start; its rate runs from its first arrival to its last.
    let still: Vec<Message> = (0..STILL)
        .map(|i| {
            Message::builder(format!("{subject}.orders"), format!("still-{}", i % 1000))
                .payload(vec![b'x'; 200])
                .build()
                .unwrap()
        })
        .collect();
    commit(&outbox, &pool, &still).await;
    let mut relays = RelayProcesses::start(config, name, &env, RELAYS);
    if !eventually(DEADLINE, || async { publishes.has_all(&still) }).await {
        relays.stop().await;
        return Err("the still backlog never drained".into());
    }
    let still_rate = drain_rate(&publishes, &still);
    let pace = still_rate * pace_share(autovacuum);
    // Each writer's share of the pace, in messages per second.
    let share = pace / WRITERS as f64;

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let committed: Arc<Mutex<Vec<(Message, Instant)>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (outbox, pool, committed, stop) = (
                outbox.clone(),
                pool.clone(),
                committed.clone(),
                stop.clone(),
            );
            let subject = subject.clone();
            tokio::spawn(async move {
                let mut n = 0_usize;
                let mut written = 0_usize;
                while !stop.load(Ordering::Relaxed) {
                    let size = 1 + (n * 7 + writer) % 20;
                    // Each writer its own 125 keys: the order a writer
                    // notes its commits in is then each key's commit order
                    // (two writers of one key could note theirs the other
                    // way round).
                    let batch: Vec<Message> = (0..size)
                        .map(|i| {
                            let key = writer * 125 + (n * 31 + i * 17) % 125;
                            Message::builder(format!("{subject}.orders"), format!("key-{key}"))
                                .payload(vec![b'x'; 200])
                                .build()
                                .unwrap()
                        })
                        .collect();
                    n += 1;
                    written += batch.len();
                    commit(&outbox, &pool, &batch).await;
                    let at = Instant::now();
                    committed
                        .lock()
                        .unwrap()
                        .extend(batch.into_iter().map(|m| (m, at)));
                    // On pace: the next commit when this writer's share
                    // says so (at once when it is behind).
                    let due = started + Duration::from_secs_f64(written as f64 / share);
                    tokio::time::sleep_until(due.into()).await;
                }
            })
        })
        .collect();

    // Once a second: backlog, delivered, notification queue.
    let mut most_waiting = 0;
    println!(
        "phase {name} (autovacuum {autovacuum}): {RELAYS} relays drained {STILL} still at \
         {still_rate:.0} msg/s; the writers ask for {pace:.0} msg/s"
    );
    println!("   s   written  delivered  waiting  notify-queue  dead-tuples");
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        relays.assert_running();
        let waiting = outbox.backlog().await.unwrap().waiting;
        most_waiting = most_waiting.max(waiting);
        let usage: f64 = sqlx::query_scalar("SELECT pg_notification_queue_usage()")
            .fetch_one(&pool)
            .await
            .unwrap();
        let dead: i64 = sqlx::query_scalar(
            "SELECT COALESCE(max(n_dead_tup), 0) FROM pg_stat_user_tables \
             WHERE schemaname = 'outbox_relay_test' AND relname = $1",
        )
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap();
        println!(
            "{:>4}  {:>8}  {:>9}  {:>7}  {usage:>12.6}  {dead:>11}",
            started.elapsed().as_secs(),
            committed.lock().unwrap().len(),
            publishes.count(),
            waiting
        );
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let written = started.elapsed();
    let committed = std::mem::take(&mut *committed.lock().unwrap());
    let messages: Vec<Message> = committed.iter().map(|(m, _)| m.clone()).collect();
    let arrived = eventually(DEADLINE, || async { publishes.has_all(&messages) }).await;
    // What the relays met: statements sqlx found slow (over 1 s), and
    // batches given back unsent because the lease left no time to send.
    let slow = relays.count_in_logs("slow statement");
    let unsent = relays.count_in_logs("left no time");
    relays.stop().await;
    if !arrived {
        return Err("a committed message never reached the broker".into());
    }
    let everything: Vec<Message> = still.iter().chain(&messages).cloned().collect();
    assert_order_per_key(&everything, &publishes.keyed(&everything));

    let mut first: HashMap<Uuid, Instant> = HashMap::new();
    for (id, at) in publishes.arrivals() {
        first.entry(id).or_insert(at);
    }
    let mut latency: Vec<Duration> = committed
        .iter()
        .map(|(m, at)| first[&m.id].saturating_duration_since(*at))
        .collect();
    latency.sort();
    let p = |q: f64| latency[((latency.len() - 1) as f64 * q) as usize];
    let rate = messages.len() as f64 / written.as_secs_f64();
    println!(
        "{name}: {} messages in {written:?} ({rate:.0} msg/s, {pace:.0} asked) by {WRITERS} writers \
         through {RELAYS} relays; commit to broker p50 {:?}, p99 {:?}, max {:?}; most waiting {most_waiting}; \
         slow statements {slow}, batches released unsent {unsent}",
        messages.len(),
        p(0.5),
        p(0.99),
        latency[latency.len() - 1]
    );
    // Bounded: never more than about five seconds of writes waiting, and
    // commit to broker within a few leases.
    if most_waiting as f64 > rate * 5.0 {
        return Err(format!(
            "the backlog grew to {most_waiting} ({rate:.0} msg/s written)"
        ));
    }
    if p(0.99) > LEASE * 3 {
        return Err(format!("commit to broker p99 {:?}", p(0.99)));
    }
    Ok(())
}

/// [`PACE`] ([`PACE_AUTOVACUUM`] with autovacuum on), or what
/// `OUTBOX_SUSTAINED_PACE` asks for (`full`: no pace).
fn pace_share(autovacuum: bool) -> f64 {
    match std::env::var("OUTBOX_SUSTAINED_PACE") {
        Ok(pace) if pace == "full" => f64::INFINITY,
        Ok(pace) => pace.parse().unwrap_or_else(|_| {
            panic!("OUTBOX_SUSTAINED_PACE: {pace:?} is neither a number nor full")
        }),
        Err(_) if autovacuum => PACE_AUTOVACUUM,
        Err(_) => PACE,
    }
}

/// The rate `messages` arrived at, from the first arrival to the last.
fn drain_rate(publishes: &Publishes, messages: &[Message]) -> f64 {
    let ids: std::collections::HashSet<Uuid> = messages.iter().map(|m| m.id).collect();
    let arrivals: Vec<Instant> = publishes
        .arrivals()
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, at)| at)
        .collect();
    let (Some(first), Some(last)) = (arrivals.iter().min(), arrivals.iter().max()) else {
        return 0.0;
    };
    messages.len() as f64 / last.duration_since(*first).as_secs_f64().max(0.001)
}
