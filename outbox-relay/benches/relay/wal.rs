//! The WAL outbox, in one run beside the table-based outbox on the same
//! PostgreSQL cluster (the bench's cluster with `wal_level = logical`,
//! `OUTBOX_POSTGRES_WAL_URL`): drains of a backlog to NATS JetStream and to
//! Kafka against the table-based relay and the broker's own batched
//! ceiling (the same messages built in memory and published 1,000 at a
//! time with their acknowledgements in flight together, no database);
//! what a message adds to a writer's one-row transaction against the floor
//! (`SELECT 1`); commit-to-broker latency at a steady rate; and one
//! `outbox-relay` process draining the WAL outbox: its rate and peak
//! resident memory, and the log the slot retains before and after.

use std::time::Instant;

use outbox_core::{Message, HEADER_SEQUENCE};
use uuid::Uuid;

use crate::backlog::{Backlog, Row};
use crate::broker::Broker;
use crate::enqueue::{self, Extra};
use crate::report::{self, Costs, Spread};
use crate::{drain, latency, processes, Servers};

/// What the section runs.
pub struct WalOptions {
    pub messages: usize,
    pub runs: usize,
    pub enqueue_seconds: u64,
    pub latency_seconds: u64,
    /// Messages one `outbox-relay` process drains (0: none).
    pub process_messages: usize,
}

pub async fn run(servers: &Servers, options: &WalOptions) {
    let url = &servers.postgres_wal;
    if options.messages > 0 {
        for name in ["nats", "kafka"] {
            let broker = servers.broker(&format!("pg-{name}")).await;
            let wal = Backlog::wal(url, &format!("bench_wal_{name}")).await;
            let wal_table = Backlog::wal_table(url, &format!("bench_walt_{name}")).await;
            let table = Backlog::postgres(url, &format!("bench_table_{name}"), false).await;
            let mut rates = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..options.runs {
                // Interleaved, so a drift of the machine touches every variant.
                for (kind, rates) in rates.iter_mut().enumerate() {
                    let address = broker.prepare(&format!("pgwal-{name}")).await;
                    let rate = match kind {
                        0 => drained(&wal, &broker, &address, options.messages).await,
                        1 => drained(&wal_table, &broker, &address, options.messages).await,
                        2 => drained(&table, &broker, &address, options.messages).await,
                        3 => ceiling(&broker, &address, options.messages).await,
                        _ => adapter_ceiling(&broker, &address, options.messages).await,
                    };
                    assert_eq!(
                        broker.stored(&address).await,
                        options.messages as u64,
                        "the broker does not hold every message, once"
                    );
                    broker.release(&address).await;
                    rates.push(rate);
                }
            }
            let [wal_rate, wal_table_rate, table_rate, ceiling_rate, adapter_rate] =
                rates.map(|r| Spread::of(r).median);
            println!(
                "PostgreSQL (WAL) -> {name}, {} waiting: WAL relay {wal_rate:.0}, WAL relay \
                 reading table rows {wal_table_rate:.0}, table relay {table_rate:.0}, broker's \
                 batched ceiling {ceiling_rate:.0}, the adapter's {adapter_rate:.0} msg/s; \
                 WAL/table {:.2}, WAL/ceiling {:.2}, WAL/adapter's {:.2}, WAL table rows/table {:.2}",
                options.messages,
                wal_rate / table_rate,
                wal_rate / ceiling_rate,
                wal_rate / adapter_rate,
                wal_table_rate / table_rate
            );
            wal.truncate().await;
            wal_table.truncate().await;
            table.truncate().await;
        }
    }

    let Broker::Nats(destination) = servers.broker("pg-nats").await else {
        unreachable!("a NATS broker")
    };
    if options.enqueue_seconds > 0 {
        let wal = Backlog::wal(url, "bench_wal_enqueue").await;
        let wal_table = Backlog::wal_table(url, "bench_walt_enqueue").await;
        let table = Backlog::postgres(url, "bench_table_enqueue", true).await;
        let broker = Broker::Nats(destination.clone());
        let subject = broker.prepare("pgwal-enqueue").await;
        let seconds = options.enqueue_seconds;
        // Alternated within each run: the machine's speed drifts.
        let mut costs: [Vec<enqueue::Cost>; 5] = Default::default();
        for _ in 0..options.runs {
            for (kind, costs) in costs.iter_mut().enumerate() {
                let (backlog, extra) = match kind {
                    0 => (&wal, Extra::Nothing),
                    1 => (&wal, Extra::EmptyStatement),
                    2 => (&wal, Extra::Message),
                    3 => (&wal_table, Extra::Message),
                    _ => (&table, Extra::Message),
                };
                let writers = enqueue::WRITERS;
                costs.push(
                    enqueue::measure(backlog, extra, writers, seconds, &destination, &subject)
                        .await,
                );
            }
        }
        let [nothing, floor, wal_message, wal_row, table_message] = costs.map(Costs::of);
        for (label, cost) in [
            ("the order row alone", &nothing),
            ("+ SELECT 1 (the floor)", &floor),
            ("+ a WAL message", &wal_message),
            ("+ a WAL table row (read from the log)", &wal_row),
            ("+ a table message (default settings)", &table_message),
        ] {
            println!(
                "PostgreSQL (logical) one-row transaction, {} writers, {label}: p50 {:.2} ms, {:.0}/s, added {} what SELECT 1 adds",
                enqueue::WRITERS,
                report::ms(cost.p50),
                cost.per_second,
                report::added_ratio(&nothing, &floor, cost)
            );
        }
        broker.release(&subject).await;
        wal.truncate().await;
        wal_table.truncate().await;
        table.truncate().await;
    }

    if options.process_messages > 0 {
        let wal = Backlog::wal(url, "bench_wal_process").await;
        let broker = Broker::Nats(destination.clone());
        let count = options.process_messages;
        let mut rates = Vec::new();
        let mut peak = 0.0_f64;
        for _ in 0..options.runs {
            let address = broker.prepare("pgwal-process").await;
            wal.restart_at_end().await;
            wal.fill(&address, count).await;
            let before = wal.retained_bytes().await;
            let drained = processes::drain(
                &wal,
                &broker,
                url,
                &servers.nats,
                &address,
                processes::Fleet::all_claiming(1),
                count,
            )
            .await;
            let after = wal.retained_bytes().await;
            println!(
                "PostgreSQL (WAL) -> NATS JetStream, one outbox-relay process, {count} waiting: \
                 {:.0} msg/s, peak memory {:.1} MiB; log retained by the slot {:.1} MiB before, \
                 {:.1} MiB after",
                drained.rate,
                drained.peak_mib[0],
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            );
            rates.push(drained.rate);
            peak = drained.peak_mib.into_iter().fold(peak, f64::max);
            broker.release(&address).await;
        }
        println!(
            "PostgreSQL (WAL) -> NATS JetStream, one outbox-relay process, {count} waiting: \
             median {:.0} msg/s, peak memory {peak:.1} MiB",
            Spread::of(rates).median
        );
        wal.truncate().await;
    }

    if options.latency_seconds > 0 {
        let wal = Backlog::wal(url, "bench_wal_latency").await;
        let wal_table = Backlog::wal_table(url, "bench_walt_latency").await;
        for (mode, wal) in [("", &wal), (", table rows", &wal_table)] {
            for rate in [1000, 5000] {
                let broker = Broker::Nats(destination.clone());
                let address = broker.prepare("pgwal-latency").await;
                let measured =
                    latency::measure(wal, &destination, &address, rate, options.latency_seconds)
                        .await;
                broker.release(&address).await;
                println!(
                    "PostgreSQL (WAL{mode}) -> NATS JetStream at {rate} msg/s ({:.0} reached): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    measured.reached,
                    report::ms(measured.quantile(0.5)),
                    report::ms(measured.quantile(0.99)),
                    report::ms(measured.max())
                );
            }
            wal.truncate().await;
        }
    }
}

/// Fills `backlog` with `count` messages to `address`, drains it with the
/// outbox's relay, and returns the rate.
async fn drained(backlog: &Backlog, broker: &Broker, address: &str, count: usize) -> f64 {
    backlog.restart_at_end().await;
    backlog.fill(address, count).await;
    let wal = matches!(backlog, Backlog::Wal { .. });
    let retained = if wal {
        backlog.retained_bytes().await
    } else {
        0
    };
    let started = Instant::now();
    let cpu = crate::cpu::CpuSample::take();
    drain::drain(backlog, broker, count).await;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    if wal {
        println!(
            "  WAL drain of {count}: {rate:.0} msg/s; log retained by the slot {:.1} MiB before, \
             {:.1} MiB after",
            retained as f64 / 1048576.0,
            backlog.retained_bytes().await as f64 / 1048576.0
        );
    }
    if std::env::var_os("OUTBOX_BENCH_CPU").is_some() {
        println!(
            "{:.0} msg/s, CPU: {}",
            rate,
            crate::cpu::CpuSample::take().since(&cpu).describe("relay")
        );
    }
    rate
}

/// The adapter's ceiling: the messages a WAL relay delivers (200 bytes,
/// over the bench's keys, each with its log position as the sequence
/// header), built in memory and sent through the destination adapter's own
/// `send`, 1,000 in flight at a time. The broker's ceiling below carries
/// one header; these carry the contract's (message id twice for NATS,
/// ordering key, sequence), which cost the broker and its client too.
async fn adapter_ceiling(broker: &Broker, address: &str, count: usize) -> f64 {
    let messages: Vec<Message> = (0..count)
        .map(|n| {
            let mut message = Message::builder(address, format!("key-{}", n % crate::KEYS))
                .payload(vec![b'x'; 200])
                .build()
                .expect("message");
            let position = 0x1_0000_0000_u64 + 300 * n as u64;
            message
                .headers
                .insert(HEADER_SEQUENCE.to_string(), position.to_string());
            message
        })
        .collect();
    let sends = async {
        for chunk in messages.chunks(1000) {
            broker.send_all(chunk).await;
        }
    };
    rate_of(count, "adapter", sends).await
}

/// The broker's own batched ceiling: `count` messages of 200 bytes built in
/// memory, published 1,000 at a time with their acknowledgements in flight
/// together.
async fn ceiling(broker: &Broker, address: &str, count: usize) -> f64 {
    let rows: Vec<Row> = (0..count)
        .map(|n| Row {
            seq: n as i64,
            id: Uuid::now_v7(),
            destination: address.to_string(),
            payload: vec![b'x'; 200],
        })
        .collect();
    let publishes = async {
        for chunk in rows.chunks(1000) {
            broker.publish_all(chunk).await;
        }
    };
    rate_of(count, "ceiling", publishes).await
}

/// The rate at which `sends` sends `count` messages; with
/// `OUTBOX_BENCH_CPU`, also the cores each part used, this process named
/// `own`.
async fn rate_of(count: usize, own: &str, sends: impl std::future::Future<Output = ()>) -> f64 {
    let started = Instant::now();
    let cpu = crate::cpu::CpuSample::take();
    sends.await;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    if std::env::var_os("OUTBOX_BENCH_CPU").is_some() {
        println!(
            "{rate:.0} msg/s, CPU: {}",
            crate::cpu::CpuSample::take().since(&cpu).describe(own)
        );
    }
    rate
}
