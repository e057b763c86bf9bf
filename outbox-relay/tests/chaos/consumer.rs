//! The consumer's half under faults: four consumers apply what the broker
//! delivers through the database's inbox while the relays are struck, as a
//! service would, retrying a transaction the fault ended.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::databases::Database;

/// Consumers applying at once; copies of one message land on different
/// ones, so they race on its id.
const LANES: usize = 4;

/// How long one message may keep failing to apply (a database restart
/// takes seconds).
const RETRY_FOR: Duration = Duration::from_secs(60);

/// The deliveries a consumer reads, in arrival order, growing as they come.
pub type Deliveries = Arc<Mutex<Vec<(Uuid, Instant)>>>;

/// The amount a message adds to the business table: a function of its id,
/// so the expected sum needs no table of what was committed when.
pub fn amount_of(id: Uuid) -> i64 {
    (id.as_u128() % 1_000_003) as i64
}

/// Consumers tailing a record of deliveries until told to finish.
#[derive(Default)]
pub struct Consumers {
    finishing: AtomicBool,
    /// Deliveries applied as new.
    pub applied: AtomicUsize,
    /// Deliveries read, copies included.
    pub read: AtomicUsize,
    /// Transactions that failed and were tried again.
    pub retried: AtomicUsize,
}

impl Consumers {
    /// Consumers that apply a record already complete, then return.
    pub fn finishing() -> Self {
        let consumers = Self::default();
        consumers.finish();
        consumers
    }

    /// Applies each delivery in `deliveries` once it arrives, lane `n`
    /// taking every `LANES`-th; returns once [`finish`](Self::finish) was
    /// called and every delivery recorded by then is applied.
    pub async fn run(&self, database: &impl Database, deliveries: &Deliveries) {
        futures_util::future::join_all((0..LANES).map(|lane| async move {
            let mut next = lane;
            loop {
                // Read before the record: a finish seen here covers
                // everything the snapshot below holds.
                let finishing = self.finishing.load(Ordering::SeqCst);
                let ids: Vec<Uuid> = deliveries
                    .lock()
                    .unwrap()
                    .iter()
                    .skip(next)
                    .step_by(LANES)
                    .map(|(id, _)| *id)
                    .collect();
                if ids.is_empty() {
                    if finishing {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for id in ids {
                    self.apply(database, id).await;
                    next += LANES;
                }
            }
        }))
        .await;
    }

    /// Tells [`run`](Self::run) to return once it has caught up.
    pub fn finish(&self) {
        self.finishing.store(true, Ordering::SeqCst);
    }

    /// Applies one delivery, trying again while the database fails.
    async fn apply(&self, database: &impl Database, id: Uuid) {
        self.read.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            match database.apply(id, amount_of(id)).await {
                Ok(new) => {
                    if new {
                        self.applied.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => {
                    panic!("the consumer could not apply {id} for {RETRY_FOR:?}: {error}")
                }
            }
        }
    }
}
