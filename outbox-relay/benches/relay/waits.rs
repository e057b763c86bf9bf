//! What the relays' PostgreSQL sessions wait for, sampled from
//! `pg_stat_activity` every 10 ms: how often a claim statement was running,
//! and how often it was waiting for a heavyweight lock (a row, a
//! transaction, an advisory lock: the turn-taking that would cap relays
//! added to a larger machine) or for a lightweight one (a buffer's content
//! lock, the WAL insert lock).

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Samples counted over one drain.
#[derive(Debug, Default, Clone, Copy)]
pub struct Waits {
    /// Samples taken.
    pub samples: u64,
    /// Sessions seen running a claim statement (the claim or its relock:
    /// the statements that lock rows), summed over the samples.
    pub claiming: u64,
    /// Of those, waiting for a heavyweight lock.
    pub claiming_on_lock: u64,
    /// Of those, waiting for a lightweight lock.
    pub claiming_on_lwlock: u64,
}

impl Waits {
    /// Adds the counts of another drain.
    pub fn add(&mut self, other: &Waits) {
        self.samples += other.samples;
        self.claiming += other.claiming;
        self.claiming_on_lock += other.claiming_on_lock;
        self.claiming_on_lwlock += other.claiming_on_lwlock;
    }

    /// The share of claim samples waiting for a heavyweight lock.
    pub fn claim_lock_share(&self) -> f64 {
        share(self.claiming_on_lock, self.claiming)
    }

    /// The share of claim samples waiting for a lightweight lock.
    pub fn claim_lwlock_share(&self) -> f64 {
        share(self.claiming_on_lwlock, self.claiming)
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A task sampling the sessions of one `application_name` until finished.
pub struct WaitSampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<Waits>,
}

impl WaitSampler {
    /// Starts sampling the sessions named `application` on the server at
    /// `url`, on a connection of its own.
    pub async fn start(url: &str, application: &str) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .expect("PostgreSQL for the wait sampler");
        let (stop, mut stopped) = watch::channel(false);
        let application = application.to_string();
        let task = tokio::spawn(async move {
            let mut waits = Waits::default();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                let rows: Vec<(bool, String)> = sqlx::query_as(
                    "SELECT query LIKE '%FOR UPDATE%', coalesce(wait_event_type, '') \
                     FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
                )
                .bind(&application)
                .fetch_all(&pool)
                .await
                .expect("sample pg_stat_activity");
                waits.samples += 1;
                for (claiming, wait) in rows {
                    if claiming {
                        waits.claiming += 1;
                        waits.claiming_on_lock += u64::from(wait == "Lock");
                        waits.claiming_on_lwlock += u64::from(wait == "LWLock");
                    }
                }
            }
            pool.close().await;
            waits
        });
        WaitSampler { stop, task }
    }

    /// Stops sampling and returns the counts.
    pub async fn finish(self) -> Waits {
        self.stop.send(true).ok();
        self.task.await.expect("wait sampler")
    }
}
