//! The relay benchmark of issue 10, on real servers: for every pair of
//! database and broker, the outbox's relay against two hand-written
//! references on the same backlog; latency under steady load; what an
//! outbox message adds to a business transaction; what the inbox adds to a
//! consumer's transaction; and `outbox-relay` processes scaled out, with
//! their peak memory.
//!
//! ```text
//! cargo bench -p txoutbox-relay --bench relay -- [--messages N] [--runs N]
//!     [--pairs pg-nats,pg-kafka,pg-amqp,mysql-nats,mysql-kafka,mysql-amqp]
//!     [--latency-seconds S] [--enqueue-seconds S] [--inbox-seconds S]
//!     [--processes 1,2,4,8] [--leader-only-processes 2,4,8]
//!     [--lanes-processes 1,2,4,8]
//!     [--process-messages N] [--small N] [--wal-messages N]
//!     [--sustained-seconds S] [--sustained-relays 1,3]
//!     [--sustained-lanes N] [--write]
//! ```
//!
//! Defaults: 1,000,000 messages waiting, 3 runs (each figure is their
//! median, with min and max), every pair, 30 s per latency run, 10 s per
//! enqueue mode and per inbox mode, 1, 2, 4 and 8 processes (on `--process-messages`, default
//! `--messages`) and the same counts but 1 with `leader_only = true`
//! (one claims, the others stand by) and with lanes of keys
//! (`--lanes-processes`, default 1, 2, 4 and 8, four lanes per process), a small backlog of 10,000, the WAL outbox's section
//! (`wal.rs`) on 100,000 waiting with the latency and enqueue seconds of
//! the rest, and the sustained section (`sustained.rs`): 600 s at the
//! highest rate 1 and then 3 processes keep up with, autovacuum on
//! (`--sustained-lanes N`: their relays with N lanes of keys per process). A value
//! of 0 (or an empty list) skips that part. `--write` puts the tables into
//! `BENCHMARKS.md` (between its `bench:begin` and `bench:end` marks) and
//! the charts into `benchmarks/`. Servers come from the variables
//! `scripts/services.sh up` writes (`OUTBOX_POSTGRES_URL`, ...).
//!
//! Messages are 200 bytes over 10,000 keys.

mod backlog;
mod broker;
mod chart;
mod cpu;
mod drain;
mod enqueue;
mod inbox;
mod latency;
mod processes;
mod references;
mod report;
mod sustained;
mod waits;
mod wal;

use std::time::Instant;

use backlog::Backlog;
use broker::Broker;
use cpu::CpuSample;
use enqueue::Extra;
use report::{Report, Spread};

/// Ordering keys the messages are spread over.
pub const KEYS: usize = 10_000;

/// Every pair, by the name `--pairs` takes.
const PAIRS: [&str; 6] = [
    "pg-nats",
    "pg-kafka",
    "pg-amqp",
    "mysql-nats",
    "mysql-kafka",
    "mysql-amqp",
];

struct Options {
    messages: usize,
    runs: usize,
    pairs: Vec<String>,
    latency_seconds: u64,
    enqueue_seconds: u64,
    inbox_seconds: u64,
    processes: Vec<usize>,
    /// Process counts run again with `leader_only = true`.
    leader_only_processes: Vec<usize>,
    /// Process counts run again with `lanes`, four per process.
    lanes_processes: Vec<usize>,
    process_messages: usize,
    small: usize,
    wal_messages: usize,
    sustained_seconds: u64,
    sustained_relays: Vec<usize>,
    /// Lanes per relay in the sustained section (0: none).
    sustained_lanes: u16,
    write: bool,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options {
            messages: 1_000_000,
            runs: 3,
            pairs: PAIRS.iter().map(|p| p.to_string()).collect(),
            latency_seconds: 30,
            enqueue_seconds: 10,
            inbox_seconds: 10,
            processes: vec![1, 2, 4, 8],
            leader_only_processes: vec![2, 4, 8],
            lanes_processes: vec![1, 2, 4, 8],
            process_messages: 0,
            small: 10_000,
            wal_messages: 100_000,
            sustained_seconds: 600,
            sustained_relays: vec![1, 3],
            sustained_lanes: 0,
            write: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "--write" => options.write = true,
                "--messages" => options.messages = number(&arg, &value()),
                "--runs" => options.runs = number(&arg, &value()).max(1),
                "--latency-seconds" => options.latency_seconds = number(&arg, &value()) as u64,
                "--enqueue-seconds" => options.enqueue_seconds = number(&arg, &value()) as u64,
                "--inbox-seconds" => options.inbox_seconds = number(&arg, &value()) as u64,
                "--small" => options.small = number(&arg, &value()),
                "--wal-messages" => options.wal_messages = number(&arg, &value()),
                "--process-messages" => options.process_messages = number(&arg, &value()),
                "--pairs" => options.pairs = list(&value()),
                "--sustained-seconds" => options.sustained_seconds = number(&arg, &value()) as u64,
                "--sustained-lanes" => options.sustained_lanes = number(&arg, &value()) as u16,
                "--sustained-relays" => {
                    options.sustained_relays =
                        list(&value()).iter().map(|n| number(&arg, n)).collect()
                }
                "--processes" => {
                    options.processes = list(&value()).iter().map(|n| number(&arg, n)).collect()
                }
                "--lanes-processes" => {
                    options.lanes_processes =
                        list(&value()).iter().map(|n| number(&arg, n)).collect()
                }
                "--leader-only-processes" => {
                    options.leader_only_processes =
                        list(&value()).iter().map(|n| number(&arg, n)).collect()
                }
                other => panic!("unknown option {other}; see the top of benches/relay/main.rs"),
            }
        }
        if options.process_messages == 0 {
            options.process_messages = options.messages;
        }
        for pair in &options.pairs {
            assert!(
                PAIRS.contains(&pair.as_str()),
                "--pairs: unknown pair {pair}; one of {PAIRS:?}"
            );
        }
        options
    }
}

/// The median rate of `runs`, as the table takes it, so the CPU shown is
/// that of the run the table's figure comes from.
fn median(runs: &[(f64, cpu::CpuUse)]) -> f64 {
    Spread::of(runs.iter().map(|(rate, _)| *rate).collect()).median
}

fn number(option: &str, value: &str) -> usize {
    value
        .replace(['_', ','], "")
        .parse()
        .unwrap_or_else(|_| panic!("{option}: not a number: {value}"))
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

struct Servers {
    postgres: String,
    postgres_wal: String,
    mysql: String,
    nats: String,
    kafka: String,
    amqp: String,
}

impl Servers {
    fn from_env() -> Servers {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_string());
        Servers {
            postgres: var(
                "OUTBOX_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            postgres_wal: var(
                "OUTBOX_POSTGRES_WAL_URL",
                "postgres://postgres@127.0.0.1:5433/test",
            ),
            mysql: var("OUTBOX_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
            nats: var("OUTBOX_NATS_URL", "nats://127.0.0.1:4222"),
            kafka: var("OUTBOX_KAFKA_BROKERS", "127.0.0.1:9092"),
            amqp: var("OUTBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        }
    }

    async fn backlog(&self, pair: &str, notify: bool) -> Backlog {
        let table = pair.replace('-', "_");
        if pair.starts_with("pg-") {
            Backlog::postgres(&self.postgres, &table, notify).await
        } else {
            Backlog::mysql(&self.mysql, &table).await
        }
    }

    async fn broker(&self, pair: &str) -> Broker {
        match pair.rsplit('-').next() {
            Some("nats") => Broker::nats(&self.nats).await,
            Some("kafka") => Broker::kafka(&self.kafka),
            _ => Broker::amqp(&self.amqp).await,
        }
    }
}

/// The database of a pair, as the reports name it.
pub fn database_of(pair: &str) -> &'static str {
    if pair.starts_with("pg-") {
        "PostgreSQL"
    } else {
        "MariaDB"
    }
}

/// A pair's name as people say it.
pub fn label(pair: &str) -> String {
    let (source, destination) = pair.split_once('-').expect("pair");
    let source = if source == "pg" {
        "PostgreSQL"
    } else {
        "MariaDB"
    };
    let destination = match destination {
        "nats" => "NATS JetStream",
        "kafka" => "Kafka (tansu)",
        _ => "RabbitMQ",
    };
    format!("{source} -> {destination}")
}

#[tokio::main]
async fn main() {
    // The in-process relays' warnings (lost batches, retries), when asked
    // for with RUST_LOG; the figures are measured without them.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let options = Options::parse();
    let servers = Servers::from_env();
    let naive_count = (options.messages / 500).clamp(100, 2000);
    let mut report = Report::new(std::env::args().skip(1).collect(), &options);
    println!(
        "{} messages of 200 bytes over {KEYS} keys, {} runs (naive: the first {naive_count} of the same backlog)",
        options.messages, options.runs
    );

    for pair in &options.pairs {
        let backlog = servers.backlog(pair, false).await;
        let broker = servers.broker(pair).await;
        let mut rates = [Vec::new(), Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new()];
        for _ in 0..options.runs {
            // Interleaved, so a drift of the machine touches all three.
            for (kind, rates) in rates.iter_mut().enumerate() {
                let count = if kind == 2 {
                    naive_count
                } else {
                    options.messages
                };
                let address = broker.prepare(pair).await;
                backlog.fill(&address, options.messages).await;
                let started = Instant::now();
                let cpu_before = CpuSample::take();
                match kind {
                    0 => drain::drain(&backlog, &broker, count).await,
                    1 => references::ceiling(&backlog, &broker).await,
                    _ => references::naive(&backlog, &broker, count).await,
                }
                let rate = count as f64 / started.elapsed().as_secs_f64();
                if let Some(cpu) = cpu.get_mut(kind) {
                    cpu.push((rate, CpuSample::take().since(&cpu_before)));
                }
                rates.push(rate);
                assert_eq!(
                    broker.stored(&address).await,
                    count as u64,
                    "{pair}: the broker does not hold every message, once"
                );
                broker.release(&address).await;
            }
        }
        backlog.truncate().await;
        let [relay, ceiling, naive] = rates.map(Spread::of);
        println!(
            "{:<32} relay {:>7.0}  ceiling {:>7.0}  naive {:>6.0} msg/s  relay/ceiling {:.2}  relay/naive {:.0}x",
            label(pair),
            relay.median,
            ceiling.median,
            naive.median,
            relay.median / ceiling.median,
            relay.median / naive.median
        );
        report.throughput(pair, relay, ceiling, naive);
        for (name, runs) in ["relay", "ceiling"].iter().zip(&cpu) {
            if let Some((_, used)) = runs.iter().find(|(rate, _)| *rate == median(runs)) {
                println!("{:<32} {name} CPU: {}", "", used.describe(name));
            }
        }
    }

    if options.small > 0 {
        let backlog = servers.backlog("pg-nats", false).await;
        let broker = servers.broker("pg-nats").await;
        let mut rates = Vec::new();
        for _ in 0..options.runs.max(5) {
            let address = broker.prepare("pg-nats").await;
            backlog.fill(&address, options.small).await;
            let started = Instant::now();
            drain::drain(&backlog, &broker, options.small).await;
            rates.push(options.small as f64 / started.elapsed().as_secs_f64());
            broker.release(&address).await;
        }
        let small = Spread::of(rates);
        println!(
            "PostgreSQL -> NATS JetStream with {} waiting: {:.0} msg/s",
            options.small, small.median
        );
        report.small_backlog(options.small, small);
    }

    if options.latency_seconds > 0 {
        // PostgreSQL both ways: NOTIFY wakes the relay at once, but
        // PostgreSQL commits notifying transactions one at a time.
        let setups = [
            ("pg-nats", true, "NOTIFY"),
            ("pg-nats", false, "polling"),
            ("mysql-nats", false, "polling"),
        ];
        for (pair, notify, wake_up) in setups {
            let setup = format!("{}, {wake_up}", label(pair));
            let backlog = servers.backlog(pair, notify).await;
            let Broker::Nats(destination) = servers.broker(pair).await else {
                unreachable!("a NATS pair")
            };
            for rate in [1000, 5000] {
                let broker = Broker::Nats(destination.clone());
                let address = broker.prepare(pair).await;
                let measured = latency::measure(
                    &backlog,
                    &destination,
                    &address,
                    rate,
                    options.latency_seconds,
                )
                .await;
                broker.release(&address).await;
                println!(
                    "{setup} at {rate} msg/s ({:.0} reached): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    measured.reached,
                    report::ms(measured.quantile(0.5)),
                    report::ms(measured.quantile(0.99)),
                    report::ms(measured.max())
                );
                report.latency(&setup, rate, measured);
            }
        }
    }

    if options.enqueue_seconds > 0 {
        // Default settings, as production runs them: PostgreSQL's writers
        // NOTIFY the relay when it waits, and the relay drains meanwhile.
        let Broker::Nats(destination) = servers.broker("pg-nats").await else {
            unreachable!("a NATS pair")
        };
        for pair in ["pg-nats", "mysql-nats"] {
            let backlog = servers.backlog(pair, true).await;
            let broker = Broker::Nats(destination.clone());
            let subject = broker.prepare(pair).await;
            let seconds = options.enqueue_seconds;
            let measure = async |extra, writers| {
                enqueue::measure(&backlog, extra, writers, seconds, &destination, &subject).await
            };
            // The kinds alternate within each run: the machine's speed drifts.
            let mut runs: Vec<Vec<enqueue::Cost>> = Extra::ALL.iter().map(|_| Vec::new()).collect();
            for _ in 0..options.runs {
                for (extra, costs) in Extra::ALL.iter().zip(&mut runs) {
                    costs.push(measure(*extra, enqueue::WRITERS).await);
                }
            }
            let costs: Vec<report::Costs> = runs.into_iter().map(report::Costs::of).collect();
            for (extra, cost) in Extra::ALL.iter().zip(&costs) {
                println!(
                    "{} one-row transaction, {} writers, {}: p50 {:.2} ms, {:.0}/s, added {} what SELECT 1 adds",
                    database_of(pair),
                    enqueue::WRITERS,
                    extra.label(),
                    report::ms(cost.p50),
                    cost.per_second,
                    report::added_ratio(&costs[0], &costs[1], cost),
                );
            }
            report.enqueue(database_of(pair), costs);
            for writers in [32, 64] {
                let (mut without, mut with) = (Vec::new(), Vec::new());
                for _ in 0..options.runs {
                    without.push(measure(Extra::Nothing, writers).await);
                    with.push(measure(Extra::MessageWhileRelaying, writers).await);
                }
                let (without, with) = (report::Costs::of(without), report::Costs::of(with));
                println!(
                    "{} {writers} writers, default settings: {:.0} commits/s alone, {:.0} with a message ({:.2})",
                    database_of(pair),
                    without.per_second,
                    with.per_second,
                    with.per_second / without.per_second
                );
                report.commit_rate(database_of(pair), writers, without, with);
            }
            broker.release(&subject).await;
            backlog.truncate().await;
        }
    }

    let wal_options = wal::WalOptions {
        messages: options.wal_messages,
        runs: options.runs,
        enqueue_seconds: options.enqueue_seconds,
        latency_seconds: options.latency_seconds,
        process_messages: if options.wal_messages > 0 {
            options.process_messages
        } else {
            0
        },
    };
    wal::run(&servers, &wal_options).await;

    if options.inbox_seconds > 0 {
        for database in ["PostgreSQL", "MariaDB", "SQLite"] {
            let consumer = match database {
                "PostgreSQL" => inbox::Consumer::on(&servers.backlog("pg-nats", false).await).await,
                "MariaDB" => inbox::Consumer::on(&servers.backlog("mysql-nats", false).await).await,
                _ => inbox::Consumer::sqlite().await,
            };
            let (mut without, mut apply, mut in_order) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..options.runs {
                let seconds = options.inbox_seconds;
                without.push(inbox::measure(&consumer, inbox::Mode::Without, seconds).await);
                apply.push(inbox::measure(&consumer, inbox::Mode::Apply, seconds).await);
                in_order.push(inbox::measure(&consumer, inbox::Mode::InOrder, seconds).await);
            }
            let without = report::Costs::of(without);
            let (apply, in_order) = (report::Costs::of(apply), report::Costs::of(in_order));
            println!(
                "{database} one-row consumer transaction, 8 consumers: p50 {:.2} ms {:.0}/s; with apply {:.2} ms {:.0}/s; with apply_in_order {:.2} ms {:.0}/s",
                report::ms(without.p50),
                without.per_second,
                report::ms(apply.p50),
                apply.per_second,
                report::ms(in_order.p50),
                in_order.per_second
            );
            report.inbox(database, without, apply);
            report.inbox(&format!("{database}, in order"), without, in_order);
        }
    }

    let fleet = |processes: usize, leader_only: bool, lanes: u16| processes::Fleet {
        processes,
        leader_only,
        lanes,
    };
    let process_runs: Vec<processes::Fleet> = (options.processes.iter())
        .map(|&n| fleet(n, false, 1))
        .chain(
            options
                .leader_only_processes
                .iter()
                .map(|&n| fleet(n, true, 1)),
        )
        .chain((options.lanes_processes.iter()).map(|&n| fleet(n, false, (4 * n).max(2) as u16)))
        .collect();
    if !process_runs.is_empty() {
        let backlog = servers.backlog("pg-nats", false).await;
        let broker = servers.broker("pg-nats").await;
        for &fleet in &process_runs {
            let processes::Fleet {
                processes,
                leader_only,
                lanes,
            } = fleet;
            backlog.lane_index(lanes).await;
            let mut rates = Vec::new();
            let mut peak = 0.0_f64;
            let mut claims = processes::Claims::default();
            let mut waits = waits::Waits::default();
            let mut reads = processes::IndexReads::default();
            for _ in 0..options.runs {
                let address = broker.prepare("pg-nats").await;
                backlog.fill(&address, options.process_messages).await;
                let drained = processes::drain(
                    &backlog,
                    &broker,
                    &servers.postgres,
                    &servers.nats,
                    &address,
                    fleet,
                    options.process_messages,
                )
                .await;
                rates.push(drained.rate);
                peak = drained.peak_mib.into_iter().fold(peak, f64::max);
                claims.count += drained.claims.count;
                claims.seconds += drained.claims.seconds;
                waits.add(&drained.waits);
                reads.add(&drained.reads);
                broker.release(&address).await;
            }
            backlog.lane_index(1).await;
            let rates = Spread::of(rates);
            let leading = match (leader_only, lanes) {
                (true, _) => ", leader only".to_string(),
                (false, 1) => String::new(),
                (false, lanes) => format!(", {lanes} lanes"),
            };
            println!(
                "{processes} outbox-relay process(es){leading}, PostgreSQL -> NATS JetStream: {:.0} msg/s, peak memory of a process {peak:.1} MiB; \
                 {:.0} claims, mean {:.1} ms, claim samples waiting for a lock {:.1} % of {}, for an LWLock {:.1} %; \
                 index entries read per message: waiting {:.2} (of which the lane index {:.2}), key {:.2}",
                rates.median,
                claims.count,
                claims.mean_ms(),
                waits.claim_lock_share() * 100.0,
                waits.claiming,
                waits.claim_lwlock_share() * 100.0,
                reads.waiting as f64 / (options.process_messages * options.runs) as f64,
                reads.lane as f64 / (options.process_messages * options.runs) as f64,
                reads.key as f64 / (options.process_messages * options.runs) as f64,
            );
            report.processes(
                options.process_messages,
                report::ProcessRow {
                    processes,
                    leader_only,
                    lanes,
                    rate: rates,
                    peak_mib: peak,
                    claims,
                    waits,
                    reads,
                    messages: options.process_messages * options.runs,
                },
            );
        }
    }

    let sustained_options = sustained::SustainedOptions {
        seconds: options.sustained_seconds,
        relays: options.sustained_relays.clone(),
        still_messages: options.process_messages,
        lanes_per_relay: options.sustained_lanes,
    };
    for run in sustained::run(&servers, &sustained_options).await {
        report.sustained(run);
    }

    print!("{}", report.markdown());
    if options.write {
        report.write();
    }
}
