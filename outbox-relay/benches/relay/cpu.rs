//! CPU time per component, read from `/proc`, to tell which one saturates
//! during a drain: this process (the relay or a reference), the database,
//! the broker. On a 2-core machine, cores used adding up to about 2 means
//! the machine is the limit; then CPU per message says whose share to cut.

use std::time::Instant;

/// The database's and the broker's processes, by the name the kernel gives
/// them (`comm`); the benchmark itself is counted by its pid.
const COMPONENTS: [&[&str]; 2] = [
    &["postgres", "mariadbd", "mysqld"],
    &["nats-server", "tansu", "beam.smp"],
];

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks used so far: this process, then each of [`COMPONENTS`].
#[derive(Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    own: u64,
    components: [u64; COMPONENTS.len()],
    machine: u64,
}

/// Cores used on average between two samples.
pub struct CpuUse {
    /// This process: the relay or the reference being measured.
    pub own: f64,
    /// The database's processes.
    pub database: f64,
    /// The broker's processes.
    pub broker: f64,
    /// Every process of the machine, those that ended in between too (a
    /// WAL relay's walsender ends with its connection, before the second
    /// sample): what the others leave is mostly such processes.
    pub machine: f64,
}

impl CpuSample {
    /// Reads every process's CPU time now. Processes that end in between
    /// take their time with them: short-lived ones are not counted.
    pub fn take() -> CpuSample {
        let own_pid = std::process::id();
        let mut sample = CpuSample {
            at: Instant::now(),
            own: 0,
            components: [0; COMPONENTS.len()],
            machine: read_machine().unwrap_or(0),
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return sample;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Some((comm, ticks)) = read_stat(pid) else {
                continue;
            };
            if pid == own_pid {
                sample.own = ticks;
                continue;
            }
            if let Some(at) = COMPONENTS
                .iter()
                .position(|names| names.contains(&comm.as_str()))
            {
                sample.components[at] += ticks;
            }
        }
        sample
    }

    /// Cores each component used on average since `earlier`.
    pub fn since(&self, earlier: &CpuSample) -> CpuUse {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let cores =
            |now: u64, then: u64| now.saturating_sub(then) as f64 / TICKS_PER_SECOND / seconds;
        CpuUse {
            own: cores(self.own, earlier.own),
            database: cores(self.components[0], earlier.components[0]),
            broker: cores(self.components[1], earlier.components[1]),
            machine: cores(self.machine, earlier.machine),
        }
    }
}

impl CpuUse {
    /// "relay 0.90, database 0.60, broker 0.40 cores (machine 1.95)".
    pub fn describe(&self, own: &str) -> String {
        format!(
            "{own} {:.2}, database {:.2}, broker {:.2} cores (machine {:.2})",
            self.own, self.database, self.broker, self.machine
        )
    }
}

/// The machine's busy ticks so far, every core: the first line of
/// `/proc/stat` less its idle and iowait columns.
fn read_machine() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy = ticks.iter().take(8).sum::<u64>() - ticks.get(3)? - ticks.get(4)?;
    Some(busy)
}

/// The name and user + system ticks of process `pid`.
fn read_stat(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may hold spaces, so split at the
    // last parenthesis.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    // After comm: state is field 3 of the man page, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}
