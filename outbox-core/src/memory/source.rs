//! A [`Source`] over a shared in-memory table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::{Backlog, Claim, ClaimId, Error, Failure, LogLag, Message, OnDeadLetter, Source};

/// A dead-lettered message kept for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDeadLetter {
    /// The message as it was last claimed.
    pub message: Message,
    /// Why it was dead-lettered.
    pub error: String,
}

#[derive(Debug)]
struct Row {
    message: Message,
    dead: bool,
    last_error: Option<String>,
    not_before: Instant,
    leased_by: Option<ClaimId>,
    lease_until: Instant,
}

#[derive(Debug, Default)]
struct Table {
    next_seq: u64,
    rows: BTreeMap<u64, Row>,
    by_id: HashMap<Uuid, u64>,
}

/// An outbox table in memory. Clones share the table;
/// [`MemorySource::another_relay`] shares it with a lease of its own, as a
/// second relay process would. Rows are leased to a claim: reports change
/// only rows their claim still holds.
#[derive(Debug, Clone)]
pub struct MemorySource {
    table: Arc<Mutex<Table>>,
    notify: Arc<Notify>,
    lease: Duration,
    on_dead_letter: OnDeadLetter,
    batch_bytes: usize,
    log_lag: Option<LogLag>,
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

impl MemorySource {
    /// An empty table whose claims hold for `lease`.
    pub fn new(lease: Duration) -> Self {
        Self {
            table: Arc::default(),
            notify: Arc::default(),
            lease,
            on_dead_letter: OnDeadLetter::Continue,
            batch_bytes: usize::MAX,
            log_lag: None,
        }
    }

    /// Bounds each claim's payload bytes, as a database source's
    /// `batch_bytes` does (unbounded by default).
    pub fn batch_bytes(mut self, batch_bytes: usize) -> Self {
        self.batch_bytes = batch_bytes;
        self
    }

    /// Reports `lag` in every backlog, as a source reading a database's log
    /// does: for tests of health and metrics.
    pub fn with_log_lag(mut self, lag: LogLag) -> Self {
        self.log_lag = Some(lag);
        self
    }

    /// Chooses what later messages of a dead-lettered key do.
    pub fn on_dead_letter(mut self, policy: OnDeadLetter) -> Self {
        self.on_dead_letter = policy;
        self
    }

    /// The same table seen by another relay, with its own leases.
    pub fn another_relay(&self, lease: Duration) -> Self {
        Self {
            lease,
            ..self.clone()
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues messages, as a committed transaction would, and wakes relays.
    pub fn enqueue(&self, messages: impl IntoIterator<Item = Message>) {
        let now = Instant::now();
        let mut table = self.table();
        for message in messages {
            let seq = table.next_seq;
            table.next_seq += 1;
            table.by_id.insert(message.id, seq);
            table.rows.insert(
                seq,
                Row {
                    message,
                    dead: false,
                    last_error: None,
                    not_before: now,
                    leased_by: None,
                    lease_until: now,
                },
            );
        }
        drop(table);
        self.notify.notify_waiters();
    }

    /// Messages not yet delivered, dead letters excluded.
    pub fn waiting(&self) -> usize {
        self.table().rows.values().filter(|row| !row.dead).count()
    }

    /// The dead letters, oldest first.
    pub fn dead_letters(&self) -> Vec<MemoryDeadLetter> {
        self.table()
            .rows
            .values()
            .filter(|row| row.dead)
            .map(|row| MemoryDeadLetter {
                message: row.message.clone(),
                error: row.last_error.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// Puts a dead letter back in the delivery path with its attempts reset.
    /// Returns false if `id` is not a dead letter.
    pub fn requeue(&self, id: Uuid) -> bool {
        let mut table = self.table();
        let Some(seq) = table.by_id.get(&id).copied() else {
            return false;
        };
        let row = table.rows.get_mut(&seq).expect("index points at a row");
        if !row.dead {
            return false;
        }
        row.dead = false;
        row.message.attempts = 0;
        row.not_before = Instant::now();
        drop(table);
        self.notify.notify_waiters();
        true
    }

    /// Applies `change` to the row of each item `claim` still leases; rows
    /// whose lease was lost are left alone (fencing).
    fn update_leased<T>(
        &self,
        claim: ClaimId,
        items: &[T],
        id: impl Fn(&T) -> Uuid,
        mut change: impl FnMut(&mut Row, &T),
    ) {
        let now = Instant::now();
        let mut table = self.table();
        for item in items {
            let Some(seq) = table.by_id.get(&id(item)).copied() else {
                continue;
            };
            let row = table.rows.get_mut(&seq).expect("index points at a row");
            if row.leased_by == Some(claim) && row.lease_until > now {
                change(row, item);
            }
        }
    }
}

impl Source for MemorySource {
    type Item = Message;

    async fn claim(&self, limit: usize) -> Result<Claim<Message>, Error> {
        let claim = ClaimId::new();
        let now = Instant::now();
        let lease_until = now + self.lease;
        let mut table = self.table();
        let mut blocked: HashSet<String> = HashSet::new();
        let mut claimed: Vec<Message> = Vec::new();
        let mut bytes = 0_usize;
        for row in table.rows.values_mut() {
            if claimed.len() >= limit {
                break;
            }
            if row.dead {
                if self.on_dead_letter == OnDeadLetter::Park {
                    blocked.insert(row.message.ordering_key.clone());
                }
                continue;
            }
            let available = row.not_before <= now && row.lease_until <= now;
            if !available {
                blocked.insert(row.message.ordering_key.clone());
                continue;
            }
            if blocked.contains(&row.message.ordering_key) {
                continue;
            }
            // The first row whatever its size, then rows while they fit.
            let size = row.message.payload.len();
            if !claimed.is_empty() && bytes.saturating_add(size) > self.batch_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            row.leased_by = Some(claim);
            row.lease_until = lease_until;
            claimed.push(row.message.clone());
        }
        Ok(Claim::leased_since(claim, claimed, now))
    }

    async fn ack(&self, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        let now = Instant::now();
        let mut table = self.table();
        for item in items {
            let Some(seq) = table.by_id.get(&item.id).copied() else {
                continue;
            };
            let row = &table.rows[&seq];
            if row.leased_by == Some(claim) && row.lease_until > now {
                table.rows.remove(&seq);
                table.by_id.remove(&item.id);
            }
        }
        Ok(())
    }

    async fn retry(&self, claim: ClaimId, failures: &[Failure<Message>]) -> Result<(), Error> {
        let now = Instant::now();
        self.update_leased(
            claim,
            failures,
            |f| f.item.id,
            |row, failure| {
                row.message.attempts = failure.attempts;
                row.last_error = Some(failure.error.clone());
                row.not_before = now + failure.retry_after;
                row.leased_by = None;
                row.lease_until = now;
            },
        );
        Ok(())
    }

    async fn dead_letter(
        &self,
        claim: ClaimId,
        failures: &[Failure<Message>],
    ) -> Result<(), Error> {
        let now = Instant::now();
        self.update_leased(
            claim,
            failures,
            |f| f.item.id,
            |row, failure| {
                row.message.attempts = failure.attempts;
                row.last_error = Some(failure.error.clone());
                row.dead = true;
                row.leased_by = None;
                row.lease_until = now;
            },
        );
        Ok(())
    }

    async fn release(&self, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        let now = Instant::now();
        self.update_leased(
            claim,
            items,
            |m| m.id,
            |row, _| {
                row.leased_by = None;
                row.lease_until = now;
            },
        );
        self.notify.notify_waiters();
        Ok(())
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    async fn wait_for_work(&self) {
        self.notify.notified().await;
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        let table = self.table();
        let waiting: Vec<&Row> = table.rows.values().filter(|row| !row.dead).collect();
        let oldest_age = waiting
            .iter()
            .map(|row| row.message.created_at)
            .min()
            .map(|created| (chrono::Utc::now() - created).to_std().unwrap_or_default());
        Ok(Some(Backlog {
            waiting: waiting.len() as u64,
            oldest_age,
            dead_letters: (table.rows.len() - waiting.len()) as u64,
            log_lag: self.log_lag,
        }))
    }
}
