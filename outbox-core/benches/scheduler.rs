//! Throughput of the relay's scheduler on the in-memory pair, so the core is
//! never what caps an adapter pair. Prints messages per second.
//!
//! `cargo bench -p txoutbox-core --bench scheduler [-- MESSAGES KEYS]`
//! (defaults: 200,000 messages over 10,000 keys). Runs on a single-threaded
//! runtime: the figure is what one core does.

use std::time::{Duration, Instant};

use outbox_core::memory::{MemoryDestination, MemorySource};
use outbox_core::{CancellationToken, Message, Relay, RelayConfig};

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let messages: usize = args
        .next()
        .map_or(200_000, |a| a.parse().expect("MESSAGES"));
    let keys: usize = args.next().map_or(10_000, |a| a.parse().expect("KEYS"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rates = Vec::new();
    for run in 1..=5 {
        let rate = runtime.block_on(drain(messages, keys));
        println!("run {run}: {messages} messages over {keys} keys: {rate:>10.0} msg/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "scheduler, in-memory pair, one core: median {:.0} msg/s (min {:.0}, max {:.0})",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}

async fn drain(messages: usize, keys: usize) -> f64 {
    let payload = vec![b'x'; 200];
    let source = MemorySource::new(Duration::from_secs(60));
    source.enqueue((0..messages).map(|i| {
        Message::builder("bench", format!("key-{}", i % keys))
            .payload(payload.clone())
            .build()
            .expect("valid message")
    }));
    let destination = MemoryDestination::new();
    let config = RelayConfig {
        batch_size: 1000,
        max_concurrent_keys: 1000,
        ..RelayConfig::default()
    };
    let relay = Relay::new(source.clone(), destination.clone(), config).expect("config");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    assert!(
        destination
            .wait_for(messages, Duration::from_secs(600))
            .await,
        "not everything was delivered"
    );
    let elapsed = started.elapsed();
    shutdown.cancel();
    task.await.expect("relay task").expect("relay");
    messages as f64 / elapsed.as_secs_f64()
}
