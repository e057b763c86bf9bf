//! Sustained load, as production runs it (issue 33, part 3): writers commit
//! at a fixed rate while `outbox-relay` processes deliver, with the
//! server's autovacuum on. The rate steps up while the relays keep up;
//! then the highest rate kept runs for the whole duration, reported per
//! minute (written and delivered rates, the backlog, commit to broker,
//! the claims' duration, the table's and its indexes' size, dead tuples
//! and autovacuum's runs). A step is short, and a rate kept for a step can
//! fall behind over minutes (the table and its indexes grow under it), so
//! a long run that falls behind stops, drains, and starts over a quarter
//! lower, until a rate holds for the whole duration. Last, the same
//! processes drain a still backlog, the figure the sustained rate is
//! compared with.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use futures_util::StreamExt;
use outbox_core::Message;
use sqlx::PgPool;

#[path = "../../tests/support/autovacuum.rs"]
mod autovacuum;

use crate::backlog::Backlog;
use crate::broker::{Broker, NATS_STREAM};
use crate::processes::{self, Claims, Relays};
use crate::report::{ms, thousands};
use crate::{Servers, KEYS};
use autovacuum::set_autovacuum;

/// Writer tasks, each on keys of its own (no writer waits for another's
/// per-key lock).
const WRITERS: usize = 16;
/// Messages per writer transaction. With one per transaction the writers'
/// own cost caps the rate on 2 cores far below the relays' (the enqueue
/// section), and with 10, 16 writers reached about 9,000 msg/s beside two
/// relays: the search would find the writers' limit, not the relays'.
const PER_TRANSACTION: usize = 50;
/// The rates tried, in messages per second, while the relays keep up.
const STEPS: [u64; 10] = [
    2_000, 4_000, 6_000, 8_000, 12_000, 16_000, 24_000, 32_000, 48_000, 64_000,
];
/// A step is kept when at most this many seconds of writes wait at its end.
const KEPT_WAITING_SECONDS: f64 = 2.0;
/// ... and the writers reached this share of the rate asked.
const KEPT_WRITTEN: f64 = 0.95;
/// ... and the relays delivered this share of what was written during the
/// step: a backlog within the bound above but growing (20,000 msg/s
/// written, 18,335 delivered, 26,463 waiting) was kept, and the long run
/// at that rate then fell behind from its first minute.
const KEPT_DELIVERED: f64 = 0.97;
/// How long a backlog may stay without shrinking before the section gives
/// up waiting for it to drain.
const STALL: Duration = Duration::from_secs(60);
/// A long run has fallen behind once more than this many seconds of
/// writes wait at a window's end: it stops, and the next starts lower.
const FELL_BEHIND_SECONDS: f64 = 5.0;
/// Most times the long run starts over lower.
const MOST_STEPS_DOWN: usize = 4;

/// What to run.
pub struct SustainedOptions {
    /// Length of the run at the highest rate kept (0 skips the section).
    pub seconds: u64,
    /// Numbers of relay processes, one run each.
    pub relays: Vec<usize>,
    /// The still backlog the same processes drain afterwards.
    pub still_messages: usize,
    /// Lanes of keys per relay process (0: none, the default).
    pub lanes_per_relay: u16,
}

/// One step of the search for the highest rate kept.
pub struct Step {
    pub asked: u64,
    pub written: f64,
    pub delivered: f64,
    pub waiting: i64,
    pub kept: bool,
}

/// One window (a minute, in a full run) of the sustained run.
pub struct Window {
    pub end: Duration,
    pub written: f64,
    pub delivered: f64,
    pub waiting: i64,
    pub p50: Duration,
    pub p99: Duration,
    pub claims: Claims,
    pub table: TableState,
}

impl Window {
    /// Whether writers at `rate` msg/s left more than
    /// [`FELL_BEHIND_SECONDS`] of their writes waiting at this window's end.
    fn fell_behind(&self, rate: u64) -> bool {
        self.waiting as f64 > rate as f64 * FELL_BEHIND_SECONDS
    }
}

/// The outbox table as PostgreSQL's statistics see it.
#[derive(Default, Clone, Copy)]
pub struct TableState {
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub dead_tuples: i64,
    pub autovacuums: i64,
}

/// A long run that fell behind and was given up for a lower rate.
pub struct GivenUp {
    pub rate: u64,
    /// How long it ran.
    pub after: Duration,
    /// Messages waiting then.
    pub waiting: i64,
}

/// One sustained run, with `relays` processes.
pub struct Sustained {
    pub relays: usize,
    /// The relays' `lanes` (1: none).
    pub lanes: u16,
    pub step_seconds: u64,
    pub steps: Vec<Step>,
    /// Long runs that fell behind, highest rate first.
    pub given_up: Vec<GivenUp>,
    /// The rate of the last long run, which ran for the whole duration.
    pub rate: u64,
    pub windows: Vec<Window>,
    /// The same processes on a still backlog, msg/s.
    pub still: f64,
    pub still_messages: usize,
}

/// Runs the section for each number of relays, autovacuum on.
pub async fn run(servers: &Servers, options: &SustainedOptions) -> Vec<Sustained> {
    if options.seconds == 0 || options.relays.is_empty() {
        return Vec::new();
    }
    let mut runs = Vec::new();
    for &relays in &options.relays {
        let table = format!("sustained_{relays}");
        // Default settings: writers notify a relay that waits.
        let backlog = Backlog::postgres(&servers.postgres, &table, true).await;
        let Backlog::Postgres { pool, .. } = &backlog else {
            unreachable!("a PostgreSQL table")
        };
        set_autovacuum(pool, true).await;
        let lanes = match options.lanes_per_relay {
            0 => 1,
            per_relay => (usize::from(per_relay) * relays).max(2) as u16,
        };
        backlog.lane_index(lanes).await;
        let fleet = processes::Fleet {
            processes: relays,
            leader_only: false,
            lanes,
        };
        let run = one_run(servers, &backlog, &table, fleet, options).await;
        backlog.lane_index(1).await;
        set_autovacuum(pool, false).await;
        backlog.truncate().await;
        println!("{}", run.summary());
        runs.push(run);
    }
    runs
}

async fn one_run(
    servers: &Servers,
    backlog: &Backlog,
    table: &str,
    fleet: processes::Fleet,
    options: &SustainedOptions,
) -> Sustained {
    let relays = fleet.processes;
    let broker = servers.broker("pg-nats").await;
    let Broker::Nats(destination) = &broker else {
        unreachable!("a NATS pair")
    };
    let subject = format!("outbox-bench.sustained-{relays}");
    bounded_stream(&broker).await;
    backlog.truncate().await;
    let arrivals = Arrivals::subscribe(destination.client(), &subject).await;
    let mut processes = Relays::start(backlog, &servers.postgres, &servers.nats, fleet);

    let step_seconds = (options.seconds / 10).clamp(5, 60);
    let mut steps = Vec::new();
    let mut rate = 0;
    // Up the steps to the first rate not kept, then two halvings of the
    // gap between it and the last kept.
    let mut failed = None;
    for asked in STEPS {
        let step = step(backlog, &arrivals, &subject, asked, step_seconds).await;
        processes.assert_running();
        steps.push(step);
        if !steps[steps.len() - 1].kept {
            failed = Some(asked);
            break;
        }
        rate = asked;
    }
    if let Some(mut failed) = failed {
        for _ in 0..2 {
            let asked = (rate + failed) / 2 / 500 * 500;
            if asked <= rate {
                break;
            }
            let step = step(backlog, &arrivals, &subject, asked, step_seconds).await;
            processes.assert_running();
            if step.kept {
                rate = asked;
            } else {
                failed = asked;
            }
            steps.push(step);
        }
    }
    if rate == 0 {
        println!("sustained, {relays} relay(s): no rate kept; the run goes on at the first step's");
        rate = STEPS[0];
    }

    let window = Duration::from_secs((options.seconds / 10).clamp(1, 60));
    let mut given_up = Vec::new();
    let windows = loop {
        let windows = long_run(
            backlog,
            table,
            &arrivals,
            &subject,
            &mut processes,
            rate,
            window,
            options.seconds,
        )
        .await;
        let last = windows.last().expect("a window");
        let behind = last.fell_behind(rate);
        let lower = rate * 3 / 4 / 500 * 500;
        if !behind || given_up.len() == MOST_STEPS_DOWN || lower < STEPS[0] {
            break windows;
        }
        println!(
            "sustained, {relays} relay(s): {rate} msg/s fell behind after {} s ({} waiting); \
             draining, then {lower} msg/s",
            last.end.as_secs(),
            last.waiting
        );
        given_up.push(GivenUp {
            rate,
            after: last.end,
            waiting: last.waiting,
        });
        drained(backlog).await;
        rate = lower;
    };
    let left = backlog.remaining().await;
    let stopped = Instant::now();
    drained(backlog).await;
    assert_eq!(
        backlog.remaining().await,
        0,
        "sustained: rows left in the outbox, none delivered for {} s",
        STALL.as_secs()
    );
    println!(
        "sustained, {relays} relay(s): the {left} left waiting when the writers stopped drained in {:.0} s",
        stopped.elapsed().as_secs_f64()
    );
    processes.stop();
    arrivals.stop();

    // The same processes on a still backlog, autovacuum still on.
    let address = broker.prepare("pg-nats").await;
    backlog.fill(&address, options.still_messages).await;
    let still = processes::drain(
        backlog,
        &broker,
        &servers.postgres,
        &servers.nats,
        &address,
        fleet,
        options.still_messages,
    )
    .await;
    broker.release(&address).await;
    Sustained {
        relays,
        lanes: fleet.lanes,
        step_seconds,
        steps,
        given_up,
        rate,
        windows,
        still: still.rate,
        still_messages: options.still_messages,
    }
}

/// Writers at `rate` msg/s for `seconds`, reported per `window`, until a
/// window ends with more than [`FELL_BEHIND_SECONDS`] of writes waiting;
/// the writers stop with it.
#[allow(clippy::too_many_arguments)]
async fn long_run(
    backlog: &Backlog,
    table: &str,
    arrivals: &Arrivals,
    subject: &str,
    processes: &mut Relays,
    rate: u64,
    window: Duration,
    seconds: u64,
) -> Vec<Window> {
    let Backlog::Postgres { pool, .. } = backlog else {
        unreachable!("a PostgreSQL table")
    };
    let relays = processes.count();
    let load = Load::start(backlog, subject, rate, arrivals.commits.clone());
    arrivals.take_window();
    let started = Instant::now();
    let mut windows = Vec::new();
    let mut claims_before = processes.claims().await;
    let mut written_before = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let end = started.elapsed() + window;
        tokio::time::sleep_until((started + end).into()).await;
        processes.assert_running();
        let (delivered, mut latencies) = arrivals.take_window();
        let written = load.written();
        let claims = processes.claims().await;
        latencies.sort_unstable();
        let quantile = |q: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
                .map_or(Duration::ZERO, |us| Duration::from_micros(*us))
        };
        let one = Window {
            end,
            written: (written - written_before) as f64 / window.as_secs_f64(),
            delivered: delivered as f64 / window.as_secs_f64(),
            waiting: backlog.remaining().await,
            p50: quantile(0.5),
            p99: quantile(0.99),
            claims: claims.since(&claims_before),
            table: table_state(pool, table).await,
        };
        println!(
            "sustained, {relays} relay(s) at {rate} msg/s, {:>4} s: written {:.0}, delivered {:.0}, waiting {}, p50 {:.1} ms, p99 {:.1} ms, claim {:.1} ms, table {:.1} MiB, indexes {:.1} MiB, dead {}, autovacuums {}",
            one.end.as_secs(),
            one.written,
            one.delivered,
            one.waiting,
            ms(one.p50),
            ms(one.p99),
            one.claims.mean_ms(),
            mib(one.table.table_bytes),
            mib(one.table.index_bytes),
            one.table.dead_tuples,
            one.table.autovacuums,
        );
        let behind = one.fell_behind(rate);
        windows.push(one);
        if behind {
            break;
        }
        claims_before = claims;
        written_before = written;
    }
    load.stop().await;
    windows
}

/// Writers at `asked` msg/s for `seconds`: kept when they reached it, the
/// relays delivered about as much, and at most [`KEPT_WAITING_SECONDS`] of
/// writes wait at its end. Waits for
/// the backlog to drain before it returns.
async fn step(
    backlog: &Backlog,
    arrivals: &Arrivals,
    subject: &str,
    asked: u64,
    seconds: u64,
) -> Step {
    let load = Load::start(backlog, subject, asked, arrivals.commits.clone());
    arrivals.take_window();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (written, _) = load.stop().await;
    let (delivered, _) = arrivals.take_window();
    let delivered = delivered as f64 / seconds as f64;
    let waiting = backlog.remaining().await;
    let kept = written >= asked as f64 * KEPT_WRITTEN
        && delivered >= written * KEPT_DELIVERED
        && waiting as f64 <= asked as f64 * KEPT_WAITING_SECONDS;
    println!(
        "sustained, step {asked} msg/s: written {written:.0}, delivered {delivered:.0}, waiting {waiting}{}",
        if kept { "" } else { ": not kept" }
    );
    drained(backlog).await;
    Step {
        asked,
        written,
        delivered,
        waiting,
        kept,
    }
}

/// A new stream for the benchmark's subjects holding at most the last
/// 2,000,000 messages: ten minutes of writes would otherwise pile up in
/// the broker and slow it down as they grow.
async fn bounded_stream(broker: &Broker) {
    let Broker::Nats(destination) = broker else {
        unreachable!("a NATS pair")
    };
    let js = destination.jetstream();
    let _ = js.delete_stream(NATS_STREAM).await;
    js.get_or_create_stream(stream::Config {
        name: NATS_STREAM.into(),
        subjects: vec!["outbox-bench.>".into()],
        max_messages: 2_000_000,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .expect("stream");
}

/// Waits until the table is empty, or until it stopped shrinking for
/// [`STALL`]. A fixed bound does not fit every run: a run that fell
/// behind leaves millions waiting (3,081,700 after ten minutes at 16,000
/// msg/s with one relay, 66,351 of them still there 300 s later).
async fn drained(backlog: &Backlog) {
    let mut least = backlog.remaining().await;
    let mut moved = Instant::now();
    while least > 0 && moved.elapsed() < STALL {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = backlog.remaining().await;
        if now < least {
            least = now;
            moved = Instant::now();
        }
    }
}

async fn table_state(pool: &PgPool, table: &str) -> TableState {
    let (table_bytes, index_bytes, dead_tuples, autovacuums): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT pg_table_size(s.relid), pg_indexes_size(s.relid), s.n_dead_tup, s.autovacuum_count \
             FROM pg_stat_user_tables AS s WHERE s.schemaname = 'outbox_bench' AND s.relname = $1",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("table statistics");
    TableState {
        table_bytes,
        index_bytes,
        dead_tuples,
        autovacuums,
    }
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// When each writer's transactions committed, in microseconds since
/// `epoch`, by transaction number: the subscriber finds a message's commit
/// from the writer and transaction its payload names.
struct Commits {
    epoch: Instant,
    by_writer: Vec<Mutex<Vec<u64>>>,
}

impl Commits {
    fn new() -> Arc<Self> {
        Arc::new(Commits {
            epoch: Instant::now(),
            by_writer: (0..WRITERS).map(|_| Mutex::new(Vec::new())).collect(),
        })
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

/// Writers at a fixed rate until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `rate` messages a second to `subject`, in transactions of
    /// [`PER_TRANSACTION`] spread over [`WRITERS`] writers. A payload starts
    /// with its writer and transaction number (for the subscriber), then
    /// padding to 200 bytes.
    fn start(backlog: &Backlog, subject: &str, rate: u64, commits: Arc<Commits>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let transactions_per_second = rate as f64 / PER_TRANSACTION as f64;
        let tasks = (0..WRITERS)
            .map(|writer| {
                let (backlog, subject) = (backlog.clone(), subject.to_string());
                let (stop, written, commits) = (stop.clone(), written.clone(), commits.clone());
                tokio::spawn(async move {
                    let mut key = writer;
                    let first = commits.by_writer[writer].lock().unwrap().len();
                    for number in first.. {
                        let global = (number - first) * WRITERS + writer;
                        let due = started
                            + Duration::from_secs_f64(global as f64 / transactions_per_second);
                        tokio::time::sleep_until(due.into()).await;
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let messages: Vec<Message> = (0..PER_TRANSACTION)
                            .map(|_| {
                                key = (key + WRITERS) % KEYS;
                                let mut payload = vec![b'x'; 200];
                                payload[..4].copy_from_slice(&(writer as u32).to_le_bytes());
                                payload[4..12].copy_from_slice(&(number as u64).to_le_bytes());
                                Message::builder(&subject, format!("key-{key}"))
                                    .payload(payload)
                                    .build()
                                    .expect("message")
                            })
                            .collect();
                        backlog.enqueue(&messages).await;
                        let at = commits.micros(Instant::now());
                        commits.by_writer[writer].lock().unwrap().push(at);
                        written.fetch_add(PER_TRANSACTION as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            written,
            started,
            tasks,
        }
    }

    /// Messages committed so far.
    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops the writers; the rate they reached and how many they wrote.
    async fn stop(self) -> (f64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        for task in self.tasks {
            task.await.expect("writer");
        }
        let written = self.written.load(Ordering::Relaxed);
        (written as f64 / elapsed.as_secs_f64(), written)
    }
}

/// A NATS subscriber noting each arrival's commit-to-broker time.
struct Arrivals {
    commits: Arc<Commits>,
    window: Arc<Mutex<(u64, Vec<u64>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Arrivals {
    async fn subscribe(client: &async_nats::Client, subject: &str) -> Arrivals {
        let commits = Commits::new();
        let window: Arc<Mutex<(u64, Vec<u64>)>> = Arc::default();
        let mut subscriber = client
            .subscribe(subject.to_string())
            .await
            .expect("subscribe");
        let task = {
            let (commits, window) = (commits.clone(), window.clone());
            tokio::spawn(async move {
                while let Some(message) = subscriber.next().await {
                    let at = commits.micros(Instant::now());
                    let payload = &message.payload;
                    if payload.len() < 12 {
                        continue;
                    }
                    let writer = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
                    let number = u64::from_le_bytes(payload[4..12].try_into().unwrap()) as usize;
                    // A message can arrive before its writer noted the
                    // commit: counted, at zero.
                    let committed = commits
                        .by_writer
                        .get(writer)
                        .and_then(|c| c.lock().unwrap().get(number).copied())
                        .unwrap_or(at);
                    let mut window = window.lock().unwrap();
                    window.0 += 1;
                    window.1.push(at.saturating_sub(committed));
                }
            })
        };
        Arrivals {
            commits,
            window,
            task,
        }
    }

    /// The arrivals since the last call: their count and their
    /// commit-to-broker times in microseconds.
    fn take_window(&self) -> (u64, Vec<u64>) {
        std::mem::take(&mut *self.window.lock().unwrap())
    }

    fn stop(self) {
        self.task.abort();
    }
}

impl Sustained {
    /// The delivered rate's lowest and highest window.
    fn delivered_range(&self) -> (f64, f64) {
        self.windows
            .iter()
            .fold((f64::MAX, 0.0_f64), |(low, high), w| {
                (low.min(w.delivered), high.max(w.delivered))
            })
    }

    /// The most messages waiting at a window's end.
    fn most_waiting(&self) -> i64 {
        self.windows.iter().map(|w| w.waiting).max().unwrap_or(0)
    }

    /// Whether every window ended with at most [`KEPT_WAITING_SECONDS`] of
    /// writes waiting, as a step is kept.
    fn kept_throughout(&self) -> bool {
        self.most_waiting() as f64 <= self.rate as f64 * KEPT_WAITING_SECONDS
    }

    /// The rate the relays sustained: the rate asked when they kept up
    /// throughout, else what they delivered on average while the writers
    /// wrote (a run that fell behind did not sustain the rate asked).
    fn sustained_rate(&self) -> f64 {
        if self.kept_throughout() || self.windows.is_empty() {
            return self.rate as f64;
        }
        self.windows.iter().map(|w| w.delivered).sum::<f64>() / self.windows.len() as f64
    }

    /// `, N lanes` with lanes, nothing without.
    fn lanes_label(&self) -> String {
        match self.lanes {
            1 => String::new(),
            lanes => format!(", {lanes} lanes"),
        }
    }

    /// One line for the console.
    pub fn summary(&self) -> String {
        let (low, high) = self.delivered_range();
        format!(
            "sustained, {} relay(s){}, autovacuum on: {}{} msg/s for {} s, {} (most waiting {}; delivered per window {:.0} - {:.0}); still backlog of {} drained at {:.0} msg/s; sustained / still {:.2}",
            self.relays,
            self.lanes_label(),
            self.given_up
                .iter()
                .map(|g| format!("{} msg/s fell behind after {} s, ", g.rate, g.after.as_secs()))
                .collect::<String>(),
            self.rate,
            self.windows.last().map_or(0, |w| w.end.as_secs()),
            if self.kept_throughout() { "kept up throughout" } else { "fell behind" },
            self.most_waiting(),
            low,
            high,
            self.still_messages,
            self.still,
            self.sustained_rate() / self.still
        )
    }

    /// The run's tables.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "\n### Sustained load, PostgreSQL -> NATS JetStream, {} `outbox-relay` process(es){}, autovacuum on\n\n\
             {WRITERS} writers commit {PER_TRANSACTION} messages per transaction at a fixed rate (default settings: \
             they notify a relay that waits). The rate steps up, {} s a step, while the writers reach \
             {:.0} % of it, the relays deliver {:.0} % of what was written and at most \
             {KEPT_WAITING_SECONDS} s of writes wait at the step's end; then the gap \
             between the last rate kept and the first not kept is halved twice:\n\n\
             | rate asked | written msg/s | delivered msg/s | waiting at the end | kept |\n|---|---|---|---|---|\n",
            self.relays,
            self.lanes_label(),
            self.step_seconds,
            KEPT_WRITTEN * 100.0,
            KEPT_DELIVERED * 100.0,
        );
        for step in &self.steps {
            md += &format!(
                "| {} | {} | {} | {} | {} |\n",
                thousands(step.asked as f64),
                thousands(step.written),
                thousands(step.delivered),
                thousands(step.waiting as f64),
                if step.kept { "yes" } else { "no" }
            );
        }
        if !self.given_up.is_empty() {
            md += &format!(
                "\nThe long run started at the highest rate kept and fell behind (more than \
                 {FELL_BEHIND_SECONDS} s of writes waiting at a window's end); each time it \
                 stopped, drained and started over a quarter lower: {}.\n",
                self.given_up
                    .iter()
                    .map(|g| format!(
                        "{} msg/s after {} s ({} waiting)",
                        thousands(g.rate as f64),
                        g.after.as_secs(),
                        thousands(g.waiting as f64)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        md += &format!(
            "\nThen {} msg/s for {} s. Claims: per second and mean duration, from the relays' \
             `outbox_claim_duration_seconds`; the table from `pg_stat_user_tables`:\n\n\
             | until | written msg/s | delivered msg/s | waiting | commit to broker p50 | p99 \
             | claims/s | claim, mean | table | indexes | dead tuples | autovacuums |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n",
            thousands(self.rate as f64),
            self.windows.last().map_or(0, |w| w.end.as_secs()),
        );
        for w in &self.windows {
            md += &format!(
                "| {} s | {} | {} | {} | {:.1} ms | {:.1} ms | {:.0} | {:.1} ms | {:.1} MiB | {:.1} MiB | {} | {} |\n",
                w.end.as_secs(),
                thousands(w.written),
                thousands(w.delivered),
                thousands(w.waiting as f64),
                ms(w.p50),
                ms(w.p99),
                w.claims.count / self.window_seconds(),
                w.claims.mean_ms(),
                mib(w.table.table_bytes),
                mib(w.table.index_bytes),
                thousands(w.table.dead_tuples as f64),
                w.table.autovacuums,
            );
        }
        let (low, high) = self.delivered_range();
        md += &format!(
            "\n{}: at most {} waiting at a window's end. Delivered per window {} – {} msg/s. The same \
             processes then drained a still backlog of {} at {} msg/s: the rate sustained ({}) is **{:.2}** of it.\n",
            if self.kept_throughout() {
                "Kept up throughout"
            } else {
                "Fell behind"
            },
            thousands(self.most_waiting() as f64),
            thousands(low),
            thousands(high),
            thousands(self.still_messages as f64),
            thousands(self.still),
            if self.kept_throughout() {
                "the rate asked".to_string()
            } else {
                format!("the mean delivered, {}", thousands(self.sustained_rate()))
            },
            self.sustained_rate() / self.still,
        );
        md
    }

    fn window_seconds(&self) -> f64 {
        match self.windows.as_slice() {
            [first, ..] => first.end.as_secs_f64(),
            [] => 1.0,
        }
    }
}
