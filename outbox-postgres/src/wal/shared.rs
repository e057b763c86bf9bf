//! What the log reader and the relay's source share: the held messages,
//! the keys waiting in the failures table, the table's leases, and whether
//! this relay holds the slot now.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex as SyncMutex;
use std::time::{Duration, Instant};

use outbox_core::ClaimId;
use tokio::sync::{watch, Mutex, Notify};
use uuid::Uuid;

use super::pending::Pending;
use super::sweep::Sweep;

/// The state behind one lock, held across the failures table's statements
/// so that a key cannot be parked and unparked at once.
#[derive(Default)]
pub(crate) struct State {
    /// Messages read from the log and not settled.
    pub(crate) pending: Pending,
    /// Keys whose new messages go to the failures table.
    pub(crate) parked: HashSet<String>,
    /// Failures-table messages handed out: claim, since when, key.
    pub(crate) table_leases: HashMap<Uuid, (ClaimId, Instant, String)>,
    /// Keys leased when the reader lost the slot, or whose leased messages
    /// moved to the failures table, by claim: their sends may still be
    /// under way, so the same keys, read again or waiting in the table,
    /// wait for the claim's report or for its lease to lapse.
    pub(crate) stale: HashMap<String, (ClaimId, Instant)>,
    /// When the parked keys were last read from the table.
    pub(crate) parked_read_at: Option<Instant>,
    /// The table mode's rows read and not yet deleted.
    pub(crate) sweep: Sweep,
}

impl State {
    /// The position the slot may be confirmed to now: past settled
    /// transactions, and never past a table row not yet deleted.
    pub(crate) fn confirmable(&mut self) -> u64 {
        self.pending.confirmable().min(self.sweep.limit())
    }

    /// Keys a claim must not hand out from memory or the table now.
    pub(crate) fn busy_keys(&self, lease: Duration) -> HashSet<String> {
        let mut keys = self.leased_elsewhere(lease);
        keys.extend(
            self.pending
                .leases(lease)
                .into_iter()
                .map(|(key, _, _)| key),
        );
        keys
    }

    /// The busy keys a claim of held messages must be told of: those with
    /// a failures-table row handed out, and those of a lost claim. The
    /// keys of held messages leased now it finds itself ([`Pending::claim`]
    /// meets a key's leased messages before its others). Collecting those
    /// too cost a copy of every key in flight, up to two batches of them,
    /// on every claim.
    pub(crate) fn leased_elsewhere(&self, lease: Duration) -> HashSet<String> {
        let now = Instant::now();
        let mut keys: HashSet<String> = self
            .table_leases
            .values()
            .filter(|(_, at, _)| now.duration_since(*at) < lease)
            .map(|(_, _, key)| key.clone())
            .collect();
        keys.extend(
            self.stale
                .iter()
                .filter(|(_, (_, at))| now.duration_since(*at) < lease)
                .map(|(key, _)| key.clone()),
        );
        keys
    }

    /// The reader lost the slot: what it held may be read again by it or
    /// by another relay, so it is dropped, and the keys leased now wait.
    pub(crate) fn reset(&mut self, lease: Duration) {
        for (key, claim, at) in self.pending.leases(lease) {
            self.stale.insert(key, (claim, at));
        }
        for (_, (claim, at, key)) in self.table_leases.drain() {
            self.stale.insert(key, (claim, at));
        }
        self.pending = Pending::default();
        self.parked_read_at = None;
    }

    /// A report of `claim` arrived: its stale keys are free.
    pub(crate) fn reported(&mut self, claim: ClaimId) {
        self.stale.retain(|_, (c, _)| *c != claim);
    }
}

/// Where the reader stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    /// Not connected yet.
    Starting,
    /// Another relay holds the slot.
    StandingBy,
    /// Holds the slot; `caught_up` once it has read everything committed
    /// before it took the slot.
    Reading { caught_up: bool },
    /// The last attempt failed, for a reason other than another reader.
    Failed(String),
    /// The source was dropped; the reader confirms and lets go of the slot.
    Stopping,
}

/// Shared between the reader task and the source.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Woken when a transaction with messages was read.
    pub(crate) work: Notify,
    /// Woken when held messages were settled (the reader may be waiting
    /// for room).
    pub(crate) room: Notify,
    pub(crate) status: watch::Sender<Status>,
    /// How many messages the reader holds, as of the last change: the
    /// reader checks it for room without taking the state's lock.
    pub(crate) held: std::sync::atomic::AtomicUsize,
    /// The position the server was last told the slot is confirmed to.
    pub(crate) reported: watch::Sender<u64>,
    /// The reader's last tick: a relay whose process was stopped for long
    /// may have lost the slot without knowing yet.
    tick: SyncMutex<Instant>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            work: Notify::new(),
            room: Notify::new(),
            status: watch::channel(Status::Starting).0,
            reported: watch::channel(0).0,
            held: std::sync::atomic::AtomicUsize::new(0),
            tick: SyncMutex::new(Instant::now()),
        }
    }

    /// Records how many messages `state` holds.
    pub(crate) fn count_held(&self, state: &State) {
        self.held
            .store(state.pending.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Records where the reader stands, unless the source is gone.
    pub(crate) fn set(&self, status: Status) {
        self.status.send_if_modified(|now| {
            let changed = *now != Status::Stopping && *now != status;
            if changed {
                *now = status;
            }
            changed
        });
    }

    /// The reader is running.
    pub(crate) fn tick(&self) {
        *self.tick.lock().expect("not poisoned") = Instant::now();
    }

    /// Whether claims may be handed out: the reader holds the slot and
    /// ticked within `stale_after` (a process stopped longer may have lost
    /// the slot to another relay while it slept).
    pub(crate) fn may_claim(&self, stale_after: Duration) -> bool {
        matches!(*self.status.borrow(), Status::Reading { .. })
            && self.tick.lock().expect("not poisoned").elapsed() < stale_after
    }

    /// Whether the reader reads the slot and has caught up.
    pub(crate) fn is_caught_up(&self) -> bool {
        *self.status.borrow() == Status::Reading { caught_up: true }
    }

    /// Waits, at most `limit`, for the reader's first outcome: reading,
    /// standing by, or failed.
    pub(crate) async fn started_in(&self, limit: Duration) -> Status {
        self.wait_in(limit, |s| *s != Status::Starting).await
    }

    /// Waits, at most `limit`, until the reader reads the slot and has
    /// caught up (or failed, or the source is gone): a claim right after a
    /// reader took the slot hands out everything committed before, so
    /// `Relay::drain` drains, and a standby's claim waits for its turn.
    pub(crate) async fn caught_up_in(&self, limit: Duration) {
        self.wait_in(limit, |s| {
            matches!(
                s,
                Status::Reading { caught_up: true } | Status::Failed(_) | Status::Stopping
            )
        })
        .await;
    }

    async fn wait_in(&self, limit: Duration, done: impl FnMut(&Status) -> bool) -> Status {
        let mut status = self.status.subscribe();
        let _ = tokio::time::timeout(limit, status.wait_for(done)).await;
        let now = status.borrow().clone();
        now
    }
}
