//! The figures of one benchmark run: printed as Markdown and, with
//! `--write`, put into BENCHMARKS.md with the charts.

use std::path::PathBuf;
use std::time::Duration;

use crate::enqueue::Cost;
use crate::latency::Latency;
use crate::processes::{Claims, IndexReads};
use crate::sustained::Sustained;
use crate::waits::Waits;
use crate::{chart, label, Options, KEYS};

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

/// The median of several runs, with their smallest and largest.
#[derive(Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        Spread {
            median: values[values.len() / 2],
            min: values[0],
            max: values[values.len() - 1],
        }
    }

    fn cell(&self) -> String {
        format!(
            "{} ({} – {})",
            thousands(self.median),
            thousands(self.min),
            thousands(self.max)
        )
    }
}

/// Medians of several enqueue-cost runs of one mode.
#[derive(Clone, Copy)]
pub struct Costs {
    pub per_second: f64,
    pub p50: Duration,
}

impl Costs {
    pub fn of(runs: Vec<Cost>) -> Costs {
        let per_second = Spread::of(runs.iter().map(|c| c.per_second).collect()).median;
        let mut p50s: Vec<Duration> = runs.iter().map(|c| c.p50).collect();
        p50s.sort();
        Costs {
            per_second,
            p50: p50s[p50s.len() / 2],
        }
    }
}

pub struct Report {
    command: String,
    messages: usize,
    runs: usize,
    throughput: Vec<(String, Spread, Spread, Spread)>,
    small: Option<(usize, Spread)>,
    latency: Vec<(String, u64, Latency)>,
    enqueue: Vec<(String, Vec<Costs>)>,
    commit_rates: Vec<(String, usize, Costs, Costs)>,
    inbox: Vec<(String, Costs, Costs)>,
    processes: Vec<ProcessRow>,
    process_messages: usize,
    sustained: Vec<Sustained>,
}

/// One line of the processes' table.
pub struct ProcessRow {
    pub processes: usize,
    /// With `leader_only = true`: one relay claims, the others stand by.
    pub leader_only: bool,
    /// Lanes of keys (1: none).
    pub lanes: u16,
    pub rate: Spread,
    pub peak_mib: f64,
    /// Over every run.
    pub claims: Claims,
    /// Over every run.
    pub waits: Waits,
    /// Over every run.
    pub reads: IndexReads,
    /// Delivered over every run.
    pub messages: usize,
}

impl Report {
    pub fn new(args: Vec<String>, options: &Options) -> Report {
        let args: Vec<String> = args.into_iter().filter(|a| a != "--bench").collect();
        Report {
            command: format!(
                "cargo bench -p txoutbox-relay --bench relay -- {}",
                args.join(" ")
            )
            .trim_end()
            .to_string(),
            messages: options.messages,
            runs: options.runs,
            throughput: Vec::new(),
            small: None,
            latency: Vec::new(),
            enqueue: Vec::new(),
            commit_rates: Vec::new(),
            inbox: Vec::new(),
            processes: Vec::new(),
            process_messages: 0,
            sustained: Vec::new(),
        }
    }

    pub fn throughput(&mut self, pair: &str, relay: Spread, ceiling: Spread, naive: Spread) {
        self.throughput
            .push((pair.to_string(), relay, ceiling, naive));
    }

    pub fn small_backlog(&mut self, waiting: usize, rate: Spread) {
        self.small = Some((waiting, rate));
    }

    /// A latency run; `setup` is how it was run ("PostgreSQL -> NATS
    /// JetStream, NOTIFY").
    pub fn latency(&mut self, setup: &str, rate: u64, measured: Latency) {
        self.latency.push((setup.to_string(), rate, measured));
    }

    /// A database's costs, one per [`Extra::ALL`](crate::enqueue::Extra::ALL).
    pub fn enqueue(&mut self, database: &str, costs: Vec<Costs>) {
        self.enqueue.push((database.to_string(), costs));
    }

    pub fn commit_rate(&mut self, database: &str, writers: usize, without: Costs, with: Costs) {
        self.commit_rates
            .push((database.to_string(), writers, without, with));
    }

    pub fn inbox(&mut self, database: &str, without: Costs, with: Costs) {
        self.inbox.push((database.to_string(), without, with));
    }

    pub fn processes(&mut self, messages: usize, row: ProcessRow) {
        self.process_messages = messages;
        self.processes.push(row);
    }

    pub fn sustained(&mut self, run: Sustained) {
        self.sustained.push(run);
    }

    /// Every table, between the marks `write` replaces.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "{BEGIN}\n## Measured by the benchmark program\n\n```\n{}\n```\n\n\
             {}, {}. {} messages of 200 bytes waiting, over {} keys; every figure \
             is the median of {} runs (min – max), servers on loopback as \
             `scripts/services.sh up` leaves them (PostgreSQL with autovacuum off).\n",
            self.command,
            machine(),
            chrono::Utc::now().format("%Y-%m-%d"),
            thousands(self.messages as f64),
            thousands(KEYS as f64),
            self.runs,
        );
        if !self.throughput.is_empty() {
            md += "\n### Drain throughput, one relay in the benchmark's process\n\n\
                   The naive relay is timed on the first messages of the same backlog.\n\n\
                   | pair | relay msg/s | ceiling msg/s | naive msg/s | relay / ceiling | relay / naive |\n\
                   |---|---|---|---|---|---|\n";
            for (pair, relay, ceiling, naive) in &self.throughput {
                md += &format!(
                    "| {} | {} | {} | {} | {:.2} | {:.0}x |\n",
                    label(pair),
                    relay.cell(),
                    ceiling.cell(),
                    naive.cell(),
                    relay.median / ceiling.median,
                    relay.median / naive.median
                );
            }
            md += "\n![Drain throughput per pair](benchmarks/throughput.svg)\n";
        }
        if let Some((waiting, small)) = &self.small {
            md += &format!(
                "\n### Backlog size, PostgreSQL -> NATS JetStream\n\n\
                 | waiting | relay msg/s |\n|---|---|\n| {} | {} |\n",
                thousands(*waiting as f64),
                small.cell()
            );
            if let Some((_, big, _, _)) = self.throughput.iter().find(|t| t.0 == "pg-nats") {
                md += &format!(
                    "| {} | {} |\n\nWith {} waiting / with {} waiting: **{:.2}**\n",
                    thousands(self.messages as f64),
                    big.cell(),
                    thousands(self.messages as f64),
                    thousands(*waiting as f64),
                    big.median / small.median
                );
            }
        }
        if !self.latency.is_empty() {
            md += "\n### Commit to broker under steady load\n\n\
                   Writers commit one message per transaction (one writer per 125 msg/s, \
                   at least 8); the relay runs with its default settings, waking on \
                   PostgreSQL's NOTIFY (`notify = true`, the default: writers notify while the relay waits) or \
                   polling (MariaDB; PostgreSQL with `notify = false`); a NATS \
                   subscriber notes each arrival.\n\n\
                   | pair, wake-up | load asked (reached), msg/s | p50 | p99 | max |\n|---|---|---|---|---|\n";
            for (setup, rate, measured) in &self.latency {
                md += &format!(
                    "| {} | {} ({}) | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                    setup,
                    thousands(*rate as f64),
                    thousands(measured.reached),
                    ms(measured.quantile(0.5)),
                    ms(measured.quantile(0.99)),
                    ms(measured.max())
                );
            }
            md += "\n![Latency distribution](benchmarks/latency.svg)\n";
        }
        md += &enqueue_table(&self.enqueue, &self.commit_rates);
        md += &cost_table(
            "Inbox cost: a one-row consumer transaction, 8 consumers",
            "the inbox",
            &self.inbox,
        );
        if !self.processes.is_empty() {
            md += &format!(
                "\n### `outbox-relay` processes, PostgreSQL -> NATS JetStream, {} waiting\n\n\
                 Claims: their count and mean duration over every run, from the relays' \
                 `outbox_claim_duration_seconds`. Waiting for a lock: the share of the samples \
                 of `pg_stat_activity` (every 10 ms) in which a relay's session running a claim \
                 statement waited for a heavyweight lock (row, transaction, advisory) or a \
                 lightweight one (buffer content, WAL insert). Index entries read per message \
                 (`idx_tup_read`): the `waiting` index is the claims' scan, which steps over rows \
                 other batches hold; the `key` index is their look-back. \
                 \"leader only\": the relays run with `leader_only = true`, one claiming and \
                 the others standing by. \"N lanes\": the relays run with `lanes = N`, each \
                 claim taking the rows of one lane of keys no other batch holds; their scan \
                 is the lane index, counted under `waiting`.\n\n\
                 | processes | msg/s, first start to last exit | peak resident memory of a process \
                 | claims | claim, mean | claim samples waiting: lock | LWLock \
                 | index entries read per message: `waiting` | `key` |\n\
                 |---|---|---|---|---|---|---|---|---|\n",
                thousands(self.process_messages as f64)
            );
            for row in &self.processes {
                md += &format!(
                    "| {} | {} | {:.1} MiB | {} | {:.1} ms | {:.1} % of {} | {:.1} % | {:.2} | {:.2} |\n",
                    match (row.leader_only, row.lanes) {
                        (true, _) => format!("{}, leader only", row.processes),
                        (false, 1) => row.processes.to_string(),
                        (false, lanes) => format!("{}, {lanes} lanes", row.processes),
                    },
                    row.rate.cell(),
                    row.peak_mib,
                    thousands(row.claims.count),
                    row.claims.mean_ms(),
                    row.waits.claim_lock_share() * 100.0,
                    thousands(row.waits.claiming as f64),
                    row.waits.claim_lwlock_share() * 100.0,
                    row.reads.waiting as f64 / row.messages.max(1) as f64,
                    row.reads.key as f64 / row.messages.max(1) as f64,
                );
            }
        }
        for run in &self.sustained {
            md += &run.markdown();
        }
        md + END + "\n"
    }

    /// Replaces the marked part of BENCHMARKS.md (or puts it after the
    /// title) and writes the charts into `benchmarks/`.
    pub fn write(&self) {
        let root = workspace_root();
        let path = root.join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        let new = match (old.find(BEGIN), old.find(END)) {
            (Some(begin), Some(end)) => {
                format!(
                    "{}{}{}",
                    &old[..begin],
                    self.markdown(),
                    &old[end + END.len() + 1..]
                )
            }
            _ => {
                let title_end = old.find('\n').map_or(old.len(), |i| i + 1);
                format!(
                    "{}\n{}\n{}",
                    &old[..title_end],
                    self.markdown(),
                    &old[title_end..]
                )
            }
        };
        std::fs::write(&path, new).expect("write BENCHMARKS.md");
        let charts = root.join("benchmarks");
        std::fs::create_dir_all(&charts).expect("benchmarks/");
        let bars: Vec<_> = self
            .throughput
            .iter()
            .map(|(pair, relay, ceiling, naive)| {
                (label(pair), relay.median, ceiling.median, naive.median)
            })
            .collect();
        std::fs::write(charts.join("throughput.svg"), chart::throughput(&bars))
            .expect("throughput.svg");
        let lines: Vec<_> = self
            .latency
            .iter()
            .map(|(setup, rate, measured)| {
                let points = chart::QUANTILES
                    .iter()
                    .map(|&q| ms(measured.quantile(q)))
                    .collect();
                (
                    format!("{setup}, {} msg/s", thousands(*rate as f64)),
                    points,
                )
            })
            .collect();
        std::fs::write(charts.join("latency.svg"), chart::latency(&lines)).expect("latency.svg");
        println!("wrote {} and benchmarks/*.svg", path.display());
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Cores and memory of this machine.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores, {memory_gib:.0} GiB")
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What a message adds to a business transaction's p50, in multiples of
/// what an empty statement adds ("1.5x"), or "n/a" with the floor's figure
/// when the floor added too little to divide by.
pub fn added_ratio(nothing: &Costs, floor: &Costs, message: &Costs) -> String {
    let floor_added = ms(floor.p50) - ms(nothing.p50);
    // In a noisy run the floor's p50 can come out level with the
    // transaction alone, or below it: a ratio to that says nothing.
    if floor_added < 0.02 {
        return format!("n/a (the floor added {floor_added:+.2} ms)");
    }
    format!("{:.1}x", (ms(message.p50) - ms(nothing.p50)) / floor_added)
}

/// A table of what `extra` adds to a transaction, per database; empty
/// without rows.
fn enqueue_table(rows: &[(String, Vec<Costs>)], rates: &[(String, usize, Costs, Costs)]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n### Enqueue cost: a one-row business transaction, 8 writers, default settings\n\n\
         `SELECT 1` is the floor, the round trip any enqueue call pays. The relay, when one \
         drains, runs with default settings in the benchmark's process and publishes to NATS \
         JetStream, on the same 2 cores as the database and the writers; PostgreSQL's writers \
         NOTIFY it while it waits for work.\n\n\
         | database | transaction | p50 | tx/s | added p50 | added / floor's |\n\
         |---|---|---|---|---|---|\n",
    );
    for (database, costs) in rows {
        let (nothing, floor) = (&costs[0], &costs[1]);
        for (extra, cost) in crate::enqueue::Extra::ALL.iter().zip(costs) {
            md += &format!(
                "| {database} | {} | {:.2} ms | {} | {:+.2} ms | {} |\n",
                extra.label(),
                ms(cost.p50),
                thousands(cost.per_second),
                ms(cost.p50) - ms(nothing.p50),
                added_ratio(nothing, floor, cost),
            );
        }
    }
    if !rates.is_empty() {
        md += "\n| database | writers | commits/s alone | commits/s with a message | with / alone |\n\
               |---|---|---|---|---|\n";
        for (database, writers, without, with) in rates {
            md += &format!(
                "| {database} | {writers} | {} | {} | {:.2} |\n",
                thousands(without.per_second),
                thousands(with.per_second),
                with.per_second / without.per_second
            );
        }
    }
    md
}

fn cost_table(title: &str, extra: &str, rows: &[(String, Costs, Costs)]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\n### {title}\n\n\
         | database | without {extra}: p50, tx/s | with {extra}: p50, tx/s | added p50 |\n\
         |---|---|---|---|\n"
    );
    for (database, without, with) in rows {
        md += &format!(
            "| {} | {:.2} ms, {} | {:.2} ms, {} | {:+.1} % |\n",
            database,
            ms(without.p50),
            thousands(without.per_second),
            ms(with.p50),
            thousands(with.per_second),
            (ms(with.p50) / ms(without.p50) - 1.0) * 100.0
        );
    }
    md
}
