//! Counters and health of a running relay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Backlog, Histogram, HistogramSnapshot, LogLag};

/// Live statistics of one relay, shared with whoever exports them. Read
/// them with [`snapshot`](Stats::snapshot); only the relay writes them.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    stall_after: Duration,
    /// The relay's destination kind, the label of its metrics.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    destination: &'static str,
    /// Updated together, once per claim and per report, so a snapshot
    /// never counts an item twice or not at all.
    counts: Mutex<Counts>,
    batch_latency: Histogram,
    end_to_end_latency: Histogram,
    #[cfg(feature = "metrics")]
    handles: crate::metrics::Handles,
    last_claim_ms: AtomicU64,
    last_progress_ms: AtomicU64,
    /// Batches in a row released unsent because their lease left no time.
    unsent_in_a_row: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The last backlog the source reported, and when.
    backlog: Mutex<Option<(Backlog, Instant)>>,
}

/// The relay's counters at one instant. Every item claimed since start is
/// in exactly one of `published`, `retried`, `dead_lettered`, `released`
/// and `in_flight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Items published and acknowledged.
    pub published: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Items dead-lettered.
    pub dead_lettered: u64,
    /// Items handed back unattempted (shutdown, or behind a failure of their key).
    pub released: u64,
    /// Items claimed and not yet reported.
    pub in_flight: u64,
    /// Batches claimed (non-empty).
    pub batches: u64,
    /// Claims or reports that failed against the source.
    pub source_errors: u64,
}

/// A copy of a relay's [`Stats`], taken by [`Stats::snapshot`].
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    /// The counters, consistent with each other.
    pub counts: Counts,
    /// Time from claim to the last report of a batch.
    pub batch_latency: HistogramSnapshot,
    /// Time from an item's commit to its acknowledgement by the destination.
    pub end_to_end_latency: HistogramSnapshot,
    /// The last backlog the source reported, if it reports one.
    pub backlog: Option<Backlog>,
    /// Whether the relay is making progress.
    pub health: Health,
}

/// Batches in a row released unsent before the relay reports unhealthy.
const UNSENT_BATCHES_UNHEALTHY: u64 = 3;

/// Whether the relay is making progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// True while claims succeed and claimed items reach an outcome.
    pub healthy: bool,
    /// Why, in words.
    pub reason: String,
    /// The last error from the source or destination, if any.
    pub last_error: Option<String>,
}

impl Stats {
    /// Fresh statistics; `stall_after` sets when the health check gives up.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            stall_after,
            destination: "custom",
            counts: Mutex::new(Counts::default()),
            batch_latency: Histogram::default(),
            end_to_end_latency: Histogram::default(),
            #[cfg(feature = "metrics")]
            handles: crate::metrics::Handles::default(),
            last_claim_ms: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            unsent_in_a_row: AtomicU64::new(0),
            last_error: Mutex::new(None),
            backlog: Mutex::new(None),
        }
    }

    /// These statistics for a relay publishing to a `destination` kind.
    pub(crate) fn for_destination(mut self, destination: &'static str) -> Self {
        self.destination = destination;
        self
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The statistics now: counters, histograms, backlog and health.
    pub fn snapshot(&self) -> StatsSnapshot {
        // Copied in a statement of its own: the guard must be gone before
        // `health` locks the counts again.
        let counts = *self.counts();
        StatsSnapshot {
            counts,
            batch_latency: self.batch_latency.snapshot(),
            end_to_end_latency: self.end_to_end_latency.snapshot(),
            backlog: self.backlog(),
            health: self.health(),
        }
    }

    /// Counts a successful claim of `items` (none: an empty claim).
    pub(crate) fn claimed(&self, items: usize, took: Duration) {
        self.last_claim_ms.store(self.now_ms(), Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::claimed(self.destination, items as u64, took);
        #[cfg(not(feature = "metrics"))]
        let _ = took;
        if items > 0 {
            let mut counts = self.counts();
            counts.batches += 1;
            counts.in_flight += items as u64;
        }
    }

    /// Counts the outcomes of a reported batch, taking them out of flight.
    pub(crate) fn reported(&self, published: usize, retried: usize, dead: usize, released: usize) {
        let mut counts = self.counts();
        counts.published += published as u64;
        counts.retried += retried as u64;
        counts.dead_lettered += dead as u64;
        counts.released += released as u64;
        let total = (published + retried + dead + released) as u64;
        counts.in_flight = counts.in_flight.saturating_sub(total);
        #[cfg(feature = "metrics")]
        crate::metrics::reported(
            self.destination,
            published as u64,
            retried as u64,
            dead as u64,
            released as u64,
        );
    }

    /// Counts a failed claim or report and keeps its error for [`Health`].
    pub(crate) fn source_failed(&self, error: String) {
        self.counts().source_errors += 1;
        #[cfg(feature = "metrics")]
        crate::metrics::source_failed(self.destination);
        self.record_error(error);
    }

    pub(crate) fn observe_batch(&self, latency: Duration) {
        self.batch_latency.observe(latency);
        #[cfg(feature = "metrics")]
        crate::metrics::batch_latency(self.destination, latency);
    }

    pub(crate) fn observe_end_to_end(&self, latency: Duration) {
        self.end_to_end_latency.observe(latency);
        #[cfg(feature = "metrics")]
        self.handles.end_to_end_latency(self.destination, latency);
    }

    /// A run of one key's messages sent, all acknowledged (`ok`) or not.
    #[cfg(feature = "metrics")]
    pub(crate) fn observe_send(&self, took: Duration, ok: bool) {
        self.handles.sent(self.destination, took, ok);
    }

    /// Evaluates health, which (feature `metrics`) also sets its gauge;
    /// the relay calls it with each backlog refresh.
    pub(crate) fn record_health(&self) {
        self.health();
    }

    pub(crate) fn progressed(&self) {
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// Counts a reported batch: `unsent` when the lease left no time to
    /// send any of it.
    pub(crate) fn batch_sent(&self, unsent: bool) {
        if unsent {
            self.unsent_in_a_row.fetch_add(1, Ordering::Relaxed);
        } else {
            self.unsent_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    pub(crate) fn set_backlog(&self, backlog: Backlog) {
        #[cfg(feature = "metrics")]
        crate::metrics::backlog(self.destination, &backlog);
        *self.backlog.lock().unwrap_or_else(|e| e.into_inner()) = Some((backlog, Instant::now()));
    }

    /// The last backlog the source reported, if it reports one.
    pub fn backlog(&self) -> Option<Backlog> {
        self.backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(backlog, _)| backlog)
    }

    /// The waiting messages and the age of the oldest now, by the last
    /// backlog the source reported: when one has waited past `stall_after`
    /// and no item reached an outcome since that backlog was read (an
    /// outcome since makes it stale until the next).
    fn waiting_too_long(&self) -> Option<(u64, Duration)> {
        let (backlog, read_at) = (*self.backlog.lock().unwrap_or_else(|e| e.into_inner()))?;
        let read_ms = read_at.saturating_duration_since(self.started).as_millis() as u64;
        if self.last_progress_ms.load(Ordering::Relaxed) > read_ms {
            return None;
        }
        let oldest = backlog.oldest_age? + read_at.elapsed();
        (backlog.waiting > 0 && oldest > self.stall_after).then_some((backlog.waiting, oldest))
    }

    /// Time since the last item reached an outcome (published, retried,
    /// dead-lettered), or since start if none did.
    pub fn since_progress(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_progress_ms.load(Ordering::Relaxed)),
        )
    }

    /// Whether the relay is making progress: a claim succeeded within
    /// `stall_after`, the last batches were not all released unsent for
    /// want of time in their lease, and, if items are in flight, or
    /// messages have waited longer than `stall_after` (by the source's
    /// backlog), one item reached an outcome within `stall_after`.
    ///
    /// And, for a source reading a database's log, the log it has not
    /// confirmed is within its `max_lag_bytes`.
    ///
    /// The last but one covers a relay whose claims succeed and come back empty
    /// while messages wait: their rows held by a stalled relay, behind a
    /// head waiting for its retry, or (with `OnDeadLetter::Park`) behind a
    /// dead letter until an operator requeues it. It says the outbox is
    /// not delivering, which every relay on it then reports.
    pub fn health(&self) -> Health {
        let now = self.now_ms();
        let since_claim =
            Duration::from_millis(now.saturating_sub(self.last_claim_ms.load(Ordering::Relaxed)));
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let in_flight = self.counts().in_flight;
        let unsent = self.unsent_in_a_row.load(Ordering::Relaxed);
        let (healthy, reason) = if since_claim > self.stall_after {
            (false, format!("no successful claim for {since_claim:?}"))
        } else if unsent >= UNSENT_BATCHES_UNHEALTHY {
            (
                false,
                format!(
                    "{unsent} batches in a row released unsent: their lease left no time to \
                     send (claims slower than the lease less send_timeout)"
                ),
            )
        } else if in_flight > 0 && self.since_progress() > self.stall_after {
            (
                false,
                format!(
                    "{in_flight} items in flight and none reached an outcome for {:?}",
                    self.since_progress()
                ),
            )
        } else if let Some((waiting, oldest)) = self
            .waiting_too_long()
            .filter(|_| self.since_progress() > self.stall_after)
        {
            (
                false,
                format!(
                    "{waiting} messages waiting, the oldest for {oldest:?}, and none reached \
                     an outcome for {:?}",
                    self.since_progress()
                ),
            )
        } else if let Some(lag) = self
            .backlog()
            .and_then(|b| b.log_lag)
            .filter(LogLag::is_over_limit)
        {
            (
                false,
                format!(
                    "the source is {} bytes behind the end of its log, more than its \
                     max_lag_bytes ({}): the database keeps that log for it",
                    lag.bytes,
                    lag.max_bytes.unwrap_or_default()
                ),
            )
        } else {
            (true, "claiming and delivering".to_string())
        };
        let health = Health {
            healthy,
            reason,
            last_error,
        };
        #[cfg(feature = "metrics")]
        crate::metrics::health(self.destination, &health);
        health
    }
}
