//! Soak: three `outbox-relay` processes relay a steady 2,000 messages per
//! second from PostgreSQL to NATS JetStream. Every 5 s it samples each
//! relay's resident memory; every message's commit-to-broker latency is
//! measured by a subscriber. At the end: nothing lost, each key in order,
//! memory flat, latency bounded; the windows are printed.
//!
//! `OUTBOX_SOAK_SECONDS` sets the length (default 20; the long run is
//! `OUTBOX_SOAK_SECONDS=600 cargo test --release -p txoutbox-relay --test soak -- --nocapture`).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_testkit::{assert_order_per_key, eventually};
use support::*;
use uuid::Uuid;

const RATE: u64 = 2000;
const TRANSACTIONS_PER_SECOND: u64 = 40;
const RELAYS: usize = 3;
const WINDOW: Duration = Duration::from_secs(5);

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_load_keeps_memory_flat_and_latency_bounded() {
    let seconds: u64 = std::env::var("OUTBOX_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (outbox, pool) = table("soak").await;
    let _stream = stream("RELAY_SOAK", "relay-soak").await;
    let publishes = Publishes::record("relay-soak").await;
    let config = settings("soak", spare_port(), "");
    let env = [("OUTBOX_HTTP__LISTEN", String::new())];
    let mut relays = RelayProcesses::start(config, "soak", &env, RELAYS);

    // The writer: RATE messages a second, in TRANSACTIONS_PER_SECOND
    // transactions, each message's commit time noted.
    let started = Instant::now();
    let committed: Arc<Mutex<Vec<(Message, Instant)>>> = Arc::default();
    let writer = {
        let (outbox, pool, committed) = (outbox.clone(), pool.clone(), committed.clone());
        tokio::spawn(async move {
            let per = RATE / TRANSACTIONS_PER_SECOND;
            for tick in 0..seconds * TRANSACTIONS_PER_SECOND {
                let due =
                    started + Duration::from_secs_f64(tick as f64 / TRANSACTIONS_PER_SECOND as f64);
                tokio::time::sleep_until(due.into()).await;
                let batch: Vec<Message> = (0..per)
                    .map(|i| {
                        let n = tick * per + i;
                        Message::builder("relay-soak.orders", format!("key-{}", n % 1000))
                            .payload(vec![b'x'; 200])
                            .build()
                            .unwrap()
                    })
                    .collect();
                commit(&outbox, &pool, &batch).await;
                let at = Instant::now();
                committed
                    .lock()
                    .unwrap()
                    .extend(batch.into_iter().map(|m| (m, at)));
            }
        })
    };

    // Memory of every relay, once a window.
    let mut memory: Vec<Vec<u64>> = Vec::new();
    while !writer.is_finished() {
        tokio::time::sleep(WINDOW).await;
        relays.assert_running();
        memory.push(
            relays
                .children
                .iter()
                .map(|c| rss_kib(c.id().unwrap()))
                .collect(),
        );
    }
    writer.await.unwrap();
    let written = started.elapsed();
    let committed = std::mem::take(&mut *committed.lock().unwrap());
    let messages: Vec<Message> = committed.iter().map(|(m, _)| m.clone()).collect();
    let arrived = eventually(DEADLINE, || async { publishes.has_all(&messages) }).await;
    relays.stop().await;
    assert!(arrived, "a committed message never reached the broker");
    assert_order_per_key(&messages, &publishes.keyed(&messages));
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);

    // Latency per window of commit time, from each message's first arrival.
    let mut first: HashMap<Uuid, Instant> = HashMap::new();
    for (id, at) in publishes.arrivals() {
        first.entry(id).or_insert(at);
    }
    let windows = (seconds as usize).div_ceil(WINDOW.as_secs() as usize);
    let mut latency: Vec<Vec<Duration>> = vec![Vec::new(); windows];
    for (message, at) in &committed {
        let window = ((*at - started).as_secs() / WINDOW.as_secs()) as usize;
        latency[window.min(windows - 1)].push(first[&message.id].saturating_duration_since(*at));
    }
    println!(
        "soak: {} messages in {written:?} ({:.0} msg/s) through {RELAYS} relays",
        messages.len(),
        messages.len() as f64 / written.as_secs_f64()
    );
    println!("window   p50 ms   p99 ms   max ms   relay RSS MiB");
    for (w, mut window) in latency.into_iter().enumerate() {
        window.sort();
        let rss = memory
            .get(w)
            .map(|r| {
                r.iter()
                    .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!(
            "{:>4}s  {:>7.1}  {:>7.1}  {:>7.1}   {rss}",
            w * WINDOW.as_secs() as usize,
            percentile(&window, 0.5).as_secs_f64() * 1e3,
            percentile(&window, 0.99).as_secs_f64() * 1e3,
            window[window.len() - 1].as_secs_f64() * 1e3,
        );
        assert!(
            percentile(&window, 0.99) < Duration::from_secs(1),
            "window {w}: p99 latency over a second"
        );
    }
    // Flat memory: no relay's last sample exceeds its first by more than
    // half, plus 16 MiB of slack for buffers that grow once.
    let (first, last) = (&memory[0], &memory[memory.len() - 1]);
    for (relay, (first, last)) in first.iter().zip(last).enumerate() {
        assert!(
            *last <= first + first / 2 + 16 * 1024,
            "relay {relay}: resident memory grew from {first} KiB to {last} KiB"
        );
    }
}
