//! The relay loop: claim, deliver, report, repeat; wake on new work; stop
//! gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::deliver_batch::{deliver_batch, BatchOutcome, Bounds};
use crate::{ClaimId, ConfigError, Destination, Error, Item, RelayConfig, Source, Stats};

/// How often the relay asks its source for the backlog.
const BACKLOG_REFRESH: Duration = Duration::from_secs(5);
/// Attempts at reporting outcomes to the source before leaving the rows to
/// their lease (they are then delivered again: at least once).
const REPORT_ATTEMPTS: u32 = 3;

/// Moves items from a [`Source`] to a [`Destination`], keeping the outbox
/// contract: order per key, no head-of-line blocking across keys, retries with
/// backoff, dead letters, graceful shutdown.
pub struct Relay<S, D> {
    source: S,
    destination: D,
    config: RelayConfig,
    stats: Arc<Stats>,
}

/// What one [`Relay::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Non-empty batches claimed.
    pub batches: u64,
    /// Items published and acknowledged.
    pub published: u64,
    /// Failed attempts, to be retried after their backoff.
    pub retried: u64,
    /// Items dead-lettered.
    pub dead_lettered: u64,
    /// Items handed back unattempted (their lease left no time to send).
    pub released: u64,
}

/// A claimed batch, its claim's identity (which its reports name), when
/// the relay asked for it and when its lease began.
struct Claimed<I> {
    claim: ClaimId,
    items: Vec<I>,
    at: Instant,
    leased_at: Instant,
}

/// The part of a lease kept free after the last send may end, so that the
/// batch's reports reach the source before it ends the lease (a database's
/// idle timeout, say): a tenth.
const LEASE_MARGIN_DIVISOR: u32 = 10;

impl<S, D> Relay<S, D>
where
    S: Source,
    D: Destination<Item = S::Item>,
{
    /// Builds a relay; fails if a setting is invalid, naming it.
    pub fn new(source: S, destination: D, config: RelayConfig) -> Result<Self, ConfigError> {
        let lease = source.lease();
        config.validate_with_lease(lease)?;
        if config.send_timeout > lease / 2 {
            tracing::warn!(
                ?lease,
                send_timeout = ?config.send_timeout,
                "send_timeout is over half the source's lease: a send may start only in the first \
                 {:?} of a lease, and a claim slower than that under load releases its batch unsent",
                Self::send_window(lease, config.send_timeout)
            );
        }
        let stats = Arc::new(
            Stats::new(config.stall_after).for_destination(destination.messaging_system()),
        );
        #[cfg(feature = "metrics")]
        crate::metrics::describe(destination.messaging_system());
        Ok(Self {
            source,
            destination,
            config,
            stats,
        })
    }

    /// Live statistics and health, readable while the relay runs.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The source, for operator calls.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Runs until `shutdown` is cancelled, then stops claiming, lets in-flight
    /// keys finish within `shutdown_timeout`, reports every outcome, releases
    /// what it still holds and flushes the destination.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let relay = Arc::new(self);
        let stop = Arc::new(AtomicBool::new(false));
        let most_batches = if relay.config.prefetch { 2 } else { 1 };
        let mut idle = relay.config.poll_interval_min;
        // The backlog is counted off the claim path: a count of a large
        // outbox can take seconds, which claims must not wait for.
        // Stopped when `run` returns or its future is dropped.
        let _backlog = AbortOnDrop(tokio::spawn({
            let relay = Arc::clone(&relay);
            async move {
                loop {
                    relay.refresh_backlog().await;
                    tokio::time::sleep(BACKLOG_REFRESH).await;
                }
            }
        }));
        tracing::info!(batch_size = relay.config.batch_size, "relay started");
        // Each batch is delivered, then reported, by a task of its own. With
        // `prefetch` the next batch is claimed and delivered alongside, so a
        // slow key of one batch does not hold back the keys of the next: two
        // open batches never share a key, since a source never hands out a
        // key with an unreported earlier message. A claim waits while
        // `most_batches` are open (a source may hold a connection per open
        // batch, and the claim needs one more), and after a short claim
        // (the outbox was drained: claiming again at once finds little).
        let mut batches: JoinSet<()> = JoinSet::new();
        let mut short = false;

        while !shutdown.is_cancelled() {
            if batches.len() >= most_batches || (short && !batches.is_empty()) {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    Some(done) = batches.join_next() => finished(done),
                }
                continue;
            }
            let claimed = relay.claim_to_its_end(&shutdown).await;
            if shutdown.is_cancelled() {
                // Claimed as shutdown came: given back at once, unsent.
                if let Some(batch) = claimed.filter(|batch| !batch.items.is_empty()) {
                    let released = BatchOutcome {
                        released: batch.items,
                        ..BatchOutcome::default()
                    };
                    relay.report(batch.claim, released, batch.at).await;
                }
                break;
            }
            match claimed {
                Some(batch) if !batch.items.is_empty() => {
                    idle = relay.config.poll_interval_min;
                    short = batch.items.len() < relay.config.batch_size;
                    let (relay, stop, shutdown) =
                        (Arc::clone(&relay), Arc::clone(&stop), shutdown.clone());
                    batches.spawn(async move {
                        let (claim, claimed_at) = (batch.claim, batch.at);
                        let outcome = relay.deliver(batch, &stop, &shutdown).await;
                        relay.report(claim, outcome, claimed_at).await;
                    });
                }
                _ => {
                    // Nothing to claim: wait for new work, the poll
                    // interval, or an open batch to end (its keys may have
                    // more waiting).
                    tokio::select! {
                        biased;
                        Some(done) = batches.join_next(), if !batches.is_empty() => finished(done),
                        () = relay.wait_idle(idle, &shutdown) => {
                            idle = (idle * 2).min(relay.config.poll_interval_max);
                        }
                    }
                }
            }
        }
        // Open batches finish on their own: their keys get `shutdown_timeout`
        // to go on publishing, then release what they did not send.
        while let Some(done) = batches.join_next().await {
            finished(done);
        }
        if let Err(err) = relay.destination.flush().await {
            tracing::warn!(error = %err.report(), "destination flush on shutdown failed");
        }
        relay.source.checkpoint().await;
        tracing::info!("relay stopped");
        Ok(())
    }

    /// Delivers what is waiting now, batch after batch, until a claim comes
    /// back empty; then flushes the destination and says what became of the
    /// items. For tests, command-line tools and scheduled jobs that deliver
    /// and exit (a service runs [`run`](Self::run)). It keeps every promise
    /// of `run`: order per key, retries, dead letters. A message whose retry
    /// is not due yet, and the rest of its key, stay waiting for a later
    /// drain or relay. A failed claim ends the drain with its error; a
    /// failed report leaves the items to their lease, as in `run`.
    pub async fn drain(&self) -> Result<Drained, Error> {
        let (stop, shutdown) = (AtomicBool::new(false), CancellationToken::new());
        let before = self.stats.snapshot().counts;
        loop {
            let batch = self.claim_batch().await?;
            if batch.items.is_empty() {
                break;
            }
            let (claim, claimed_at) = (batch.claim, batch.at);
            let outcome = self.deliver(batch, &stop, &shutdown).await;
            self.report(claim, outcome, claimed_at).await;
        }
        self.destination.flush().await?;
        self.source.checkpoint().await;
        let after = self.stats.snapshot().counts;
        Ok(Drained {
            batches: after.batches - before.batches,
            published: after.published - before.published,
            retried: after.retried - before.retried,
            dead_lettered: after.dead_lettered - before.dead_lettered,
            released: after.released - before.released,
        })
    }

    /// How long into a lease a send may still start: it ends by the lease's
    /// end less a tenth, leaving that for the batch's reports.
    fn send_window(lease: Duration, send_timeout: Duration) -> Duration {
        lease.saturating_sub(send_timeout + lease / LEASE_MARGIN_DIVISOR)
    }

    /// Claims a batch; `None` on error (logged and counted) or shutdown.
    async fn claim(&self, shutdown: &CancellationToken) -> Option<Claimed<S::Item>> {
        if shutdown.is_cancelled() {
            return None;
        }
        match self.claim_batch().await {
            Ok(batch) => Some(batch),
            Err(err) => {
                tracing::warn!(error = %err.report(), "claim failed; will try again");
                None
            }
        }
    }

    /// Claims a batch (see [`claim`](Self::claim)), never cut short by
    /// shutdown: a source's claim dropped half-way can leave its connection
    /// inside a transaction (sqlx 0.8.6 returns a PostgreSQL connection
    /// whose `BEGIN` was cancelled to the pool still in it, sqlx#4393,
    /// where the application's next writes would run and be lost), and the
    /// rows it had taken would wait out their lease. After shutdown, the
    /// claim gets `shutdown_timeout` to end.
    async fn claim_to_its_end(&self, shutdown: &CancellationToken) -> Option<Claimed<S::Item>> {
        let claim = self.claim(shutdown);
        tokio::pin!(claim);
        tokio::select! {
            biased;
            claimed = &mut claim => claimed,
            _ = shutdown.cancelled() => {
                tokio::time::timeout(self.config.shutdown_timeout, claim).await.ok().flatten()
            }
        }
    }

    /// Claims a batch and counts it, or counts the error.
    async fn claim_batch(&self) -> Result<Claimed<S::Item>, Error> {
        let at = Instant::now();
        match self.source.claim(self.config.batch_size).await {
            Ok(claim) => {
                let (id, leased_at) = (claim.id(), claim.leased_at());
                let items = claim.into_items();
                self.stats.claimed(items.len(), at.elapsed());
                Ok(Claimed {
                    claim: id,
                    items,
                    at,
                    leased_at,
                })
            }
            Err(err) => {
                self.stats.source_failed(format!("claim: {}", err.report()));
                Err(err)
            }
        }
    }

    async fn wait_idle(&self, wait: Duration, shutdown: &CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = self.source.wait_for_work() => {}
        }
    }

    async fn refresh_backlog(&self) {
        match self.source.backlog().await {
            Ok(Some(backlog)) => self.stats.set_backlog(backlog),
            Ok(None) => {}
            Err(err) => tracing::debug!(error = %err.report(), "backlog query failed"),
        }
        self.stats.record_health();
    }

    /// Delivers one batch; once shutdown's grace period is over, keys stop
    /// starting new sends.
    async fn deliver(
        &self,
        batch: Claimed<S::Item>,
        stop: &AtomicBool,
        shutdown: &CancellationToken,
    ) -> BatchOutcome<S::Item> {
        let span =
            tracing::info_span!("outbox_batch", run_id = %Uuid::now_v7(), size = batch.items.len());
        let bounds = Bounds {
            last_send_start: batch.leased_at
                + Self::send_window(self.source.lease(), self.config.send_timeout),
            stop,
            stats: &self.stats,
        };
        let delivery =
            deliver_batch(&self.destination, batch.items, &self.config, &bounds).instrument(span);
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(self.config.shutdown_timeout).await;
            stop.store(true, Ordering::Relaxed);
            std::future::pending::<Infallible>().await
        };
        tokio::select! {
            outcome = delivery => outcome,
            never = grace => match never {},
        }
    }

    /// Tells the source what became of a batch, one call per kind of outcome.
    async fn report(
        &self,
        claim: ClaimId,
        mut outcome: BatchOutcome<S::Item>,
        claimed_at: Instant,
    ) {
        let stats = &self.stats;
        // Items the lease left no time to send are released with the rest:
        // a source whose lease is the claim's transaction commits a batch
        // only once every item is reported, and a batch left open would lose
        // its acknowledgements when the lease rolls it back. A release after
        // the lease changes nothing (fencing).
        let expired = outcome.expired.len();
        outcome.released.append(&mut outcome.expired);
        let now = SystemTime::now();
        for item in &outcome.delivered {
            if let Some(created) = item.created_at() {
                let latency = now.duration_since(created).unwrap_or_default();
                stats.observe_end_to_end(latency);
            }
        }
        let ack = async {
            if !outcome.delivered.is_empty() {
                self.with_retries("ack", || self.source.ack(claim, &outcome.delivered))
                    .await;
            }
        };
        let retry = async {
            if !outcome.retry.is_empty() {
                self.with_retries("retry", || self.source.retry(claim, &outcome.retry))
                    .await;
            }
        };
        let dead = async {
            if !outcome.dead.is_empty() {
                self.with_retries("dead_letter", || {
                    self.source.dead_letter(claim, &outcome.dead)
                })
                .await;
            }
        };
        let release = async {
            if !outcome.released.is_empty() {
                self.with_retries("release", || self.source.release(claim, &outcome.released))
                    .await;
            }
        };
        tokio::join!(ack, retry, dead, release);

        stats.reported(
            outcome.delivered.len(),
            outcome.retry.len(),
            outcome.dead.len(),
            outcome.released.len(),
        );
        let total = outcome.delivered.len()
            + outcome.retry.len()
            + outcome.dead.len()
            + outcome.released.len();
        if total > outcome.released.len() {
            stats.progressed();
        }
        stats.batch_sent(expired > 0 && total == outcome.released.len());
        if expired > 0 {
            tracing::warn!(
                count = expired,
                "the lease left no time to send these items; released to the next claim"
            );
        }
        stats.observe_batch(claimed_at.elapsed());
        tracing::debug!(
            delivered = outcome.delivered.len(),
            retried = outcome.retry.len(),
            dead_lettered = outcome.dead.len(),
            released = outcome.released.len(),
            "batch reported"
        );
    }

    /// Runs a report call, retrying temporary errors a few times. If it still
    /// fails the rows keep their lease and are claimed again when it ends.
    async fn with_retries<F, Fut>(&self, what: &str, mut call: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), Error>>,
    {
        for attempt in 1..=REPORT_ATTEMPTS {
            match call().await {
                Ok(()) => return,
                Err(err) => {
                    self.stats
                        .source_failed(format!("{what}: {}", err.report()));
                    tracing::warn!(what, attempt, error = %err.report(), "reporting to the source failed");
                    if !err.is_temporary() || attempt == REPORT_ATTEMPTS {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
    }
}

/// Aborts a task when dropped, so a task of the relay's never outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs a batch task that panicked.
fn finished(done: Result<(), JoinError>) {
    if let Err(err) = done {
        tracing::error!(error = %err, "delivering or reporting a batch failed");
    }
}
