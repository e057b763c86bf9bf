//! The relay's side of the WAL outbox: claims from what the reader holds
//! and from the failures table, and settles what the relay reports.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::{Backlog, Claim, ClaimId, Error, Failure, LogLag, Message, Source};
use sqlx::PgPool;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::failures::{Failures, Parked};
use super::lag::slot_lag_bytes;
use super::reader::{move_behind_settled, Reader};
use super::shared::{Shared, State, Status};
use super::sweep::Sweeper;
use super::table::OutboxTable;
use super::WalConfig;
use crate::row::Decoded;

/// How often a claim reads again which keys wait in the failures table (an
/// operator may have requeued a dead letter).
const PARKED_REFRESH: Duration = Duration::from_secs(1);

/// A relay's source reading the log through a replication slot. Only one
/// relay reads a slot: the others' sources stand by, claim nothing, and
/// take over when its connection ends.
pub struct WalSource {
    config: Arc<WalConfig>,
    pool: PgPool,
    failures: Arc<Failures>,
    shared: Arc<Shared>,
    /// The table mode's deletes of rows read.
    sweeper: Option<Arc<Sweeper>>,
    _reader: DropGuard,
}

impl std::fmt::Debug for WalSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalSource")
            .field("slot", &self.config.slot)
            .finish()
    }
}

impl WalSource {
    pub(crate) fn start(
        config: Arc<WalConfig>,
        pool: PgPool,
        failures: Arc<Failures>,
        table: Option<OutboxTable>,
    ) -> Self {
        let shared = Arc::new(Shared::new());
        let stop = CancellationToken::new();
        let sweeper =
            table.map(|table| Arc::new(Sweeper::new(table, pool.clone(), shared.clone())));
        if let Some(sweeper) = &sweeper {
            tokio::spawn(sweeper.clone().run(stop.clone()));
        }
        let reader = Reader {
            config: config.clone(),
            pool: pool.clone(),
            failures: failures.clone(),
            sweeper: sweeper.clone(),
            shared: shared.clone(),
        };
        reader.start(stop.clone());
        Self {
            config,
            pool,
            failures,
            shared,
            sweeper,
            _reader: stop.drop_guard(),
        }
    }

    /// Waits, at most `limit`, for the reader's first outcome; an error if
    /// it failed.
    pub(crate) async fn started(&self, limit: Duration) -> Result<(), Error> {
        match self.shared.started_in(limit).await {
            Status::Failed(why) => Err(Error::permanent(format!(
                "the replication connection to slot `{}` failed: {why}",
                self.config.slot
            ))),
            _ => Ok(()),
        }
    }

    /// Whether this source holds the slot now (the others stand by).
    pub fn is_reading(&self) -> bool {
        self.shared.may_claim(self.config.lease / 2)
    }

    /// A handle that reads what this source holds without keeping it alive,
    /// for health checks and tests that hand the source to a relay.
    pub fn monitor(&self) -> WalMonitor {
        WalMonitor {
            shared: Arc::downgrade(&self.shared),
            lease: self.config.lease,
        }
    }

    async fn refresh_parked(&self, state: &mut State) -> Result<(), Error> {
        if state
            .parked_read_at
            .is_some_and(|at| at.elapsed() < PARKED_REFRESH)
        {
            return Ok(());
        }
        let parked = self.failures.parked_keys(&self.pool).await?;
        self.set_parked(state, parked).await
    }

    /// Takes `parked`, as just read from the failures table, as the keys
    /// whose messages go there. A key parked from elsewhere (an operator
    /// requeued a dead letter of it, or a relay that lost the slot without
    /// knowing yet wrote a failure) may have messages held here, read
    /// before: they go to the table first, in log order, so they leave
    /// ahead of what the reader reads next; one leased now keeps its key
    /// busy until its claim reports.
    async fn set_parked(&self, state: &mut State, parked: HashSet<String>) -> Result<(), Error> {
        let held: Vec<Message> = parked
            .difference(&state.parked)
            .flat_map(|key| state.pending.later_of_key(key, None))
            .collect();
        let rows: Vec<Parked> = held.iter().map(Parked::waiting).collect();
        self.failures.insert(&self.pool, &rows).await?;
        for message in &held {
            if let Some(lease) = state.pending.lease_of(message.id, self.config.lease) {
                state.stale.insert(message.ordering_key.clone(), lease);
            }
        }
        state.pending.settle_taken(held.iter().map(|m| m.id));
        self.settled(state);
        state.parked = parked;
        state.parked_read_at = Some(Instant::now());
        Ok(())
    }

    /// Splits `ids` into those `claim` leased from the failures table and
    /// the others.
    fn from_table(state: &State, claim: ClaimId, ids: &[Uuid]) -> (Vec<Uuid>, Vec<Uuid>) {
        ids.iter().partition(|id| {
            state
                .table_leases
                .get(id)
                .is_some_and(|(c, _, _)| *c == claim)
        })
    }

    /// Moves held messages that failed, and the later held messages of
    /// their keys, to the failures table, and parks their keys.
    async fn park(
        &self,
        state: &mut State,
        claim: ClaimId,
        failures: &[Failure<Message>],
        dead: bool,
    ) -> Result<(), Error> {
        let park_key = !dead || self.config.on_dead_letter == outbox_core::OnDeadLetter::Park;
        let mut moved: Vec<(Message, u32, Duration, Option<String>, bool)> = Vec::new();
        for failure in failures {
            if !state.pending.holds(claim, failure.item.id) {
                continue;
            }
            let item = &failure.item;
            moved.push((
                item.clone(),
                failure.attempts,
                failure.retry_after,
                Some(failure.error.clone()),
                dead,
            ));
            if park_key {
                for later in state
                    .pending
                    .later_of_key(&item.ordering_key, Some(item.id))
                {
                    if !moved.iter().any(|m| m.0.id == later.id) {
                        moved.push((later, 0, Duration::ZERO, None, false));
                    }
                }
            }
        }
        let rows: Vec<Parked> = moved
            .iter()
            .map(|(message, attempts, retry_after, error, dead)| Parked {
                message,
                attempts: *attempts,
                retry_after: *retry_after,
                error: error.as_deref(),
                dead: *dead,
            })
            .collect();
        self.failures.insert(&self.pool, &rows).await?;
        for (message, ..) in &moved {
            if park_key {
                state.parked.insert(message.ordering_key.clone());
            }
        }
        state.pending.settle_taken(moved.iter().map(|m| m.0.id));
        Ok(())
    }

    /// Records failures of messages claimed from the failures table.
    async fn fail_in_table(
        &self,
        state: &mut State,
        claim: ClaimId,
        failures: &[Failure<Message>],
        dead: bool,
    ) -> Result<(), Error> {
        let ids: Vec<Uuid> = failures.iter().map(|f| f.item.id).collect();
        let (table, _) = Self::from_table(state, claim, &ids);
        let failed: Vec<_> = failures
            .iter()
            .filter(|f| table.contains(&f.item.id))
            .map(|f| (f.item.id, f.attempts, f.retry_after, f.error.as_str()))
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        self.failures.fail(&self.pool, &failed, dead).await?;
        for id in &table {
            state.table_leases.remove(id);
        }
        state.parked_read_at = None;
        Ok(())
    }

    /// A claim of what the reader holds now and of what is due in the
    /// failures table; empty while this source does not read the slot.
    async fn claim_held(&self, limit: usize) -> Result<Claim<Message>, Error> {
        if !self.is_reading() {
            return Ok(Claim::empty());
        }
        let lease = self.config.lease;
        let mut state = self.shared.state.lock().await;
        self.refresh_parked(&mut state).await?;
        let claim = ClaimId::new();
        let now = Instant::now();
        let mut items = Vec::new();
        if !state.parked.is_empty() {
            let busy = state.busy_keys(lease);
            let mut skipped: HashSet<String> = HashSet::new();
            let mut dead = Vec::new();
            for row in self.failures.due(&self.pool, limit).await? {
                match row {
                    Decoded::Message(message) => {
                        let key = &message.ordering_key;
                        if busy.contains(key) || skipped.contains(key) {
                            skipped.insert(key.clone());
                            continue;
                        }
                        state
                            .table_leases
                            .insert(message.id, (claim, now, key.clone()));
                        items.push(message);
                    }
                    Decoded::Malformed {
                        key,
                        attempts,
                        reason,
                    } => dead.push((key, attempts.max(0) as u32 + 1, Duration::ZERO, reason)),
                }
            }
            if !dead.is_empty() {
                let failed: Vec<_> = dead
                    .iter()
                    .map(|(id, attempts, wait, reason)| (*id, *attempts, *wait, reason.as_str()))
                    .collect();
                self.failures.fail(&self.pool, &failed, true).await?;
            }
        }
        let mut blocked = state.leased_elsewhere(lease);
        blocked.extend(state.parked.iter().cloned());
        blocked.extend(items.iter().map(|m| m.ordering_key.clone()));
        let budget = self
            .config
            .batch_bytes
            .saturating_sub(items.iter().map(|m| m.payload.len()).sum());
        let held = state.pending.claim(
            claim,
            limit - items.len(),
            if items.is_empty() {
                self.config.batch_bytes
            } else {
                budget
            },
            &blocked,
            lease,
        );
        items.extend(held);
        Ok(Claim::leased_since(claim, items, now))
    }

    /// Held messages were settled: the reader may go on reading.
    fn settled(&self, state: &State) {
        self.shared.count_held(state);
        self.shared.room.notify_waiters();
    }
}

impl Drop for WalSource {
    fn drop(&mut self) {
        // Claims end with the source, before the reader lets go of the slot.
        self.shared.status.send_replace(Status::Stopping);
    }
}

/// What a [`WalSource`] holds, read from elsewhere (see
/// [`WalSource::monitor`]).
#[derive(Debug, Clone)]
pub struct WalMonitor {
    shared: std::sync::Weak<Shared>,
    lease: Duration,
}

impl WalMonitor {
    /// Whether the source reads the slot and has read everything committed
    /// before it took the slot (a reader starting on a slot far behind
    /// first decodes the log since the slot's restart position).
    pub fn is_caught_up(&self) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|shared| shared.is_caught_up())
    }

    /// Messages read from the log and not yet settled, while the source
    /// holds the slot; `None` when it does not (standing by, or dropped).
    pub async fn held(&self) -> Option<usize> {
        let shared = self.shared.upgrade()?;
        if !shared.may_claim(self.lease / 2) {
            return None;
        }
        let held = shared.state.lock().await.pending.len();
        Some(held)
    }
}

impl Source for WalSource {
    type Item = Message;

    /// Hands out what the reader holds. Only when that is nothing and the
    /// reader has not caught up yet (it just took the slot, or stands by)
    /// does the claim wait, until it holds something or has caught up, at
    /// most a quarter of the lease: so a
    /// claim right after the start sees everything committed before, and
    /// an empty claim means the outbox was empty (what `Relay::drain`
    /// stops on), while a reader paused with `max_held` messages never
    /// holds claims back.
    async fn claim(&self, limit: usize) -> Result<Claim<Message>, Error> {
        let deadline = Instant::now() + self.config.lease / 4;
        loop {
            let claim = self.claim_held(limit).await?;
            if !claim.is_empty() || self.shared.is_caught_up() || Instant::now() >= deadline {
                return Ok(claim);
            }
            self.shared.caught_up_in(Duration::from_millis(10)).await;
        }
    }

    fn lease(&self) -> Duration {
        self.config.lease
    }

    async fn ack(&self, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        let ids: Vec<Uuid> = items.iter().map(|m| m.id).collect();
        let mut state = self.shared.state.lock().await;
        state.reported(claim);
        let (table, held) = Self::from_table(&state, claim, &ids);
        if !table.is_empty() {
            self.failures.delete(&self.pool, &table).await?;
            for id in &table {
                state.table_leases.remove(id);
            }
            // A key whose last waiting message left goes back to the log.
            let parked = self.failures.parked_keys(&self.pool).await?;
            self.set_parked(&mut state, parked).await?;
        }
        state.pending.settle(claim, held);
        self.settled(&state);
        Ok(())
    }

    async fn retry(&self, claim: ClaimId, failures: &[Failure<Message>]) -> Result<(), Error> {
        let mut state = self.shared.state.lock().await;
        state.reported(claim);
        self.fail_in_table(&mut state, claim, failures, false)
            .await?;
        self.park(&mut state, claim, failures, false).await?;
        self.settled(&state);
        Ok(())
    }

    async fn dead_letter(
        &self,
        claim: ClaimId,
        failures: &[Failure<Message>],
    ) -> Result<(), Error> {
        let mut state = self.shared.state.lock().await;
        state.reported(claim);
        self.fail_in_table(&mut state, claim, failures, true)
            .await?;
        self.park(&mut state, claim, failures, true).await?;
        self.settled(&state);
        Ok(())
    }

    async fn release(&self, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        let ids: Vec<Uuid> = items.iter().map(|m| m.id).collect();
        let mut state = self.shared.state.lock().await;
        state.reported(claim);
        let (table, held) = Self::from_table(&state, claim, &ids);
        for id in &table {
            state.table_leases.remove(id);
        }
        state.pending.release(claim, held);
        Ok(())
    }

    /// Confirms the slot past everything settled and waits (at most two
    /// seconds) until the server was told: unsettled messages behind
    /// settled ones move to the failures table first, and the table
    /// mode's rows read are deleted.
    async fn checkpoint(&self) {
        if let Some(sweeper) = &self.sweeper {
            if let Err(err) = sweeper.all().await {
                tracing::warn!(slot = %self.config.slot, "deleting rows read from the log: {err}");
            }
        }
        let target = {
            let mut state = self.shared.state.lock().await;
            move_behind_settled(&mut state, &self.failures, &self.pool, &self.config.slot).await;
            self.settled(&state);
            state.confirmable()
        };
        let mut reported = self.shared.reported.subscribe();
        let told = reported.wait_for(|at| *at >= target);
        if tokio::time::timeout(Duration::from_secs(2), told)
            .await
            .is_err()
        {
            tracing::warn!(slot = %self.config.slot, "the slot's position was not confirmed in time");
        }
    }

    async fn wait_for_work(&self) {
        self.shared.work.notified().await
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        let (held, held_oldest, unconfirmed) = {
            let mut state = self.shared.state.lock().await;
            let unconfirmed = state.pending.oldest_unconfirmed();
            (
                state.pending.len() as u64,
                state.pending.oldest(),
                unconfirmed,
            )
        };
        let (table, table_oldest) = self.failures.waiting(&self.pool).await?;
        let oldest = held_oldest.into_iter().chain(table_oldest).min();
        let age = |at: chrono::DateTime<chrono::Utc>| {
            (chrono::Utc::now() - at).to_std().unwrap_or_default()
        };
        let lag = slot_lag_bytes(&self.pool, &self.config.slot).await?;
        Ok(Some(Backlog {
            waiting: held + table,
            oldest_age: oldest.map(age),
            dead_letters: self.failures.count_dead(&self.pool).await?,
            // Only the reading relay knows what it read and did not confirm.
            log_lag: lag.map(|bytes| LogLag {
                bytes,
                age: self
                    .is_reading()
                    .then(|| unconfirmed.map_or(Duration::ZERO, age)),
                max_bytes: self.config.max_lag_bytes,
            }),
        }))
    }
}
