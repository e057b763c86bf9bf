//! `outbox-relay` processes, as deployed: drains by 1, 2, 4 or 8 of them
//! on one backlog, with the peak resident memory of each, how long their
//! claims took and what their database sessions waited for.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::backlog::Backlog;
use crate::broker::Broker;
use crate::drain;
use crate::waits::{WaitSampler, Waits};

/// The `application_name` the relays' database sessions carry, by which
/// [`WaitSampler`] finds them.
pub const APPLICATION: &str = "outbox-bench-relay";

/// What one drain by processes measured.
pub struct ProcessDrain {
    /// Messages per second, from the first start to the last exit.
    pub rate: f64,
    /// Peak resident memory of each process (`VmHWM`), in MiB.
    pub peak_mib: Vec<f64>,
    /// Claims made by all the processes and the time they took.
    pub claims: Claims,
    /// What the processes' database sessions waited for (PostgreSQL).
    pub waits: Waits,
    /// Index entries the drain read (the table outbox; zero for the WAL's).
    pub reads: IndexReads,
}

/// Entries read from the table outbox's indexes (`idx_tup_read`): the
/// `waiting` index is the claims' scan, which steps over the rows other
/// batches hold locked (with lanes, the lane index `<table>_l<lanes>` is,
/// and counts here); the `key` index is the claims' look-back.
#[derive(Debug, Default, Clone, Copy)]
pub struct IndexReads {
    pub waiting: i64,
    pub key: i64,
    /// Of `waiting`, those read from a lane index.
    pub lane: i64,
}

impl IndexReads {
    /// The table's counters now (zero for the WAL outbox).
    pub async fn of(backlog: &Backlog) -> IndexReads {
        let Backlog::Postgres { pool, outbox } = backlog else {
            return IndexReads::default();
        };
        let table = &outbox.config().table;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT indexrelname::text, idx_tup_read FROM pg_stat_user_indexes \
             WHERE schemaname = 'outbox_bench' AND relname = $1",
        )
        .bind(table)
        .fetch_all(pool)
        .await
        .expect("index statistics");
        let read = |scan: &dyn Fn(&str) -> bool| {
            rows.iter()
                .filter(|(name, _)| name.strip_prefix(table.as_str()).is_some_and(scan))
                .map(|(_, reads)| reads)
                .sum()
        };
        let lane = |suffix: &str| {
            suffix
                .strip_prefix("_l")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        IndexReads {
            waiting: read(&|suffix| suffix == "_waiting" || lane(suffix)),
            key: read(&|suffix| suffix == "_key"),
            lane: read(&lane),
        }
    }

    pub fn since(&self, earlier: &IndexReads) -> IndexReads {
        IndexReads {
            waiting: self.waiting - earlier.waiting,
            key: self.key - earlier.key,
            lane: self.lane - earlier.lane,
        }
    }

    pub fn add(&mut self, other: &IndexReads) {
        self.waiting += other.waiting;
        self.key += other.key;
        self.lane += other.lane;
    }
}

/// Claims counted by the relays' `outbox_claim_duration_seconds`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Claims {
    pub count: f64,
    pub seconds: f64,
}

impl Claims {
    /// The mean claim's duration, in milliseconds (0 without claims).
    pub fn mean_ms(&self) -> f64 {
        if self.count > 0.0 {
            self.seconds / self.count * 1000.0
        } else {
            0.0
        }
    }

    /// The claims made between `earlier` and these totals.
    pub fn since(&self, earlier: &Claims) -> Claims {
        Claims {
            count: self.count - earlier.count,
            seconds: self.seconds - earlier.seconds,
        }
    }
}

/// Running `outbox-relay` processes on one outbox, each serving `/metrics`
/// on a port of its own.
pub struct Relays {
    children: Vec<Child>,
    ports: Vec<u16>,
    settings: PathBuf,
}

/// How many relay processes run, whether only a leader claims, and over
/// how many lanes of keys they claim.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub processes: usize,
    /// `leader_only = true`: one claims, the others stand by.
    pub leader_only: bool,
    /// `lanes` (1: none); the table needs the lane index (see
    /// [`Backlog::lane_index`]).
    pub lanes: u16,
}

impl Fleet {
    /// `processes` relays, every one claiming.
    pub fn all_claiming(processes: usize) -> Fleet {
        Fleet {
            processes,
            leader_only: false,
            lanes: 1,
        }
    }
}

impl Relays {
    /// Starts `processes` relays on the PostgreSQL `backlog` (the table or
    /// the WAL outbox, on the server at `postgres_url`), publishing to NATS.
    pub fn start(backlog: &Backlog, postgres_url: &str, nats_url: &str, fleet: Fleet) -> Self {
        let url = with_application_name(postgres_url);
        let mut source = backlog.relay_source_settings(&url);
        if fleet.leader_only {
            source.push_str("leader_only = true\n");
        }
        if fleet.lanes > 1 {
            source.push_str(&format!("lanes = {}\n", fleet.lanes));
        }
        let settings = settings(&source, nats_url);
        let ports: Vec<u16> = (0..fleet.processes).map(|_| spare_port()).collect();
        let children = ports
            .iter()
            .map(|port| {
                Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
                    .arg("--config")
                    .arg(&settings)
                    .arg("run")
                    .env_remove("RUST_LOG")
                    .env("OUTBOX_HTTP__LISTEN", format!("127.0.0.1:{port}"))
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("outbox-relay")
            })
            .collect();
        Relays {
            children,
            ports,
            settings,
        }
    }

    /// Panics if a process has exited.
    pub fn assert_running(&mut self) {
        for child in &mut self.children {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "an outbox-relay process exited"
            );
        }
    }

    /// Peak resident memory of each process, in MiB.
    pub fn peak_mib(&self) -> Vec<f64> {
        self.children.iter().map(|c| peak_mib(c.id())).collect()
    }

    /// How many processes run.
    pub fn count(&self) -> usize {
        self.children.len()
    }

    /// Every process's claims so far, from its `/metrics` (a process not
    /// serving yet counts none).
    pub async fn claims(&self) -> Claims {
        let mut total = Claims::default();
        for port in &self.ports {
            if let Some(text) = scrape(*port).await {
                total.count += series_sum(&text, "outbox_claim_duration_seconds_count");
                total.seconds += series_sum(&text, "outbox_claim_duration_seconds_sum");
            }
        }
        total
    }

    /// Stops every process with SIGTERM and checks each exits cleanly.
    pub fn stop(mut self) {
        for child in &self.children {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "SIGTERM to outbox-relay");
        }
        for child in &mut self.children {
            let status = child.wait().expect("wait");
            assert!(status.success(), "outbox-relay exited with {status}");
        }
        std::fs::remove_file(&self.settings).ok();
    }
}

/// A section that panics (an assertion on what was delivered) leaves no
/// process running: the next run would share the database with it.
impl Drop for Relays {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Starts `processes` relays on the filled PostgreSQL `backlog`, waits for
/// the broker to hold `count` messages at `address` while sampling what
/// the relays' sessions wait for, notes each process's peak memory and its
/// claims, stops them and checks the table is empty.
pub async fn drain(
    backlog: &Backlog,
    broker: &Broker,
    postgres_url: &str,
    nats_url: &str,
    address: &str,
    fleet: Fleet,
    count: usize,
) -> ProcessDrain {
    let reads_before = IndexReads::of(backlog).await;
    let sampler = WaitSampler::start(postgres_url, APPLICATION).await;
    let started = Instant::now();
    let mut relays = Relays::start(backlog, postgres_url, nats_url, fleet);
    let deadline = Instant::now() + Duration::from_secs(600);
    while broker.stored(address).await < count as u64 {
        relays.assert_running();
        assert!(
            Instant::now() < deadline,
            "processes: drain took over 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let waits = sampler.finish().await;
    let peak_mib = relays.peak_mib();
    let claims = relays.claims().await;
    relays.stop();
    // The relays' sessions report their counters as they end.
    sessions_ended(postgres_url).await;
    let reads = IndexReads::of(backlog).await.since(&reads_before);
    let rate = count as f64 / elapsed.as_secs_f64();
    assert_eq!(
        backlog.remaining().await,
        0,
        "processes: rows left in the outbox"
    );
    ProcessDrain {
        rate,
        peak_mib,
        claims,
        waits,
        reads,
    }
}

/// Waits (at most 10 s) until no session of the relays is left on the
/// server at `url`.
async fn sessions_ended(url: &str) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("PostgreSQL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(APPLICATION)
                .fetch_one(&pool)
                .await
                .expect("pg_stat_activity");
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.close().await;
}

/// `url` with the relays' `application_name`.
fn with_application_name(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={APPLICATION}")
}

/// The relay's settings file: the same relay settings as the in-process
/// drain, warnings only; the HTTP endpoint's port is given per process.
fn settings(source: &str, nats_url: &str) -> PathBuf {
    let config = drain::config();
    let text = format!(
        r#"[source]
{source}
[destination]
kind = "nats"
url = "{nats_url}"

[relay]
batch_size = {batch}
max_concurrent_keys = {keys}

[log]
level = "warn"
"#,
        batch = config.batch_size,
        keys = config.max_concurrent_keys,
    );
    let path = std::env::temp_dir().join(format!("outbox-bench-{}.toml", uuid::Uuid::now_v7()));
    std::fs::write(&path, text).expect("settings file");
    path
}

fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a spare port")
        .port()
}

/// The body of `GET /metrics` on `port`, or `None` when nothing answers.
async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// The sum of every series named `name` (whatever its labels) in a
/// Prometheus text body.
fn series_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `VmHWM` of a running process, in MiB.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024.0
}
