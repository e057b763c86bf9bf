//! Drains by `outbox-relay` processes, as deployed: 1, 2 or 4 of them on
//! one backlog, and the peak resident memory of each.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::backlog::Backlog;
use crate::broker::Broker;
use crate::drain;

/// What one drain by processes measured.
pub struct ProcessDrain {
    /// Messages per second, from the first start to the last exit.
    pub rate: f64,
    /// Peak resident memory of each process (`VmHWM`), in MiB.
    pub peak_mib: Vec<f64>,
}

/// Starts `processes` relays on the filled PostgreSQL `backlog` (the table
/// or the WAL outbox, on the server at `postgres_url`), waits for
/// the broker to hold `count` messages at `address`, notes each process's
/// peak memory, stops them with SIGTERM and checks the table is empty.
pub async fn drain(
    backlog: &Backlog,
    broker: &Broker,
    postgres_url: &str,
    nats_url: &str,
    address: &str,
    processes: usize,
    count: usize,
) -> ProcessDrain {
    let settings = settings(&backlog.relay_source_settings(postgres_url), nats_url);
    let started = Instant::now();
    let mut children: Vec<Child> = (0..processes)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
                .arg("--config")
                .arg(&settings)
                .arg("run")
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .spawn()
                .expect("outbox-relay")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    while broker.stored(address).await < count as u64 {
        for child in &mut children {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "an outbox-relay process exited during the drain"
            );
        }
        assert!(
            Instant::now() < deadline,
            "processes: drain took over 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak_mib = children.iter().map(|c| peak_mib(c.id())).collect();
    for child in &children {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "SIGTERM to outbox-relay");
    }
    for child in &mut children {
        let status = child.wait().expect("wait");
        assert!(status.success(), "outbox-relay exited with {status}");
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    std::fs::remove_file(&settings).ok();
    assert_eq!(
        backlog.remaining().await,
        0,
        "processes: rows left in the outbox"
    );
    ProcessDrain { rate, peak_mib }
}

/// The relay's settings file: the same relay settings as the in-process
/// drain, no HTTP endpoint, warnings only.
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

[http]
listen = ""

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
