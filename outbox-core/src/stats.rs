//! Counters and health of a running relay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Backlog, Histogram};

/// Live statistics of one relay, shared with whoever exports them.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    stall_after: Duration,
    /// Items published and acknowledged.
    pub published: AtomicU64,
    /// Failed attempts that will be retried.
    pub retried: AtomicU64,
    /// Items dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Items handed back unattempted (shutdown, or behind a failure of their key).
    pub released: AtomicU64,
    /// Items claimed and not yet reported.
    pub in_flight: AtomicU64,
    /// Batches claimed (non-empty).
    pub batches: AtomicU64,
    /// Claims or reports that failed against the source.
    pub source_errors: AtomicU64,
    /// Time from claim to the last report of a batch.
    pub batch_latency: Histogram,
    /// Time from an item's commit to its acknowledgement by the destination.
    pub end_to_end_latency: Histogram,
    last_claim_ms: AtomicU64,
    last_progress_ms: AtomicU64,
    /// Batches in a row released unsent because their lease left no time.
    unsent_in_a_row: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The last backlog the source reported, and when.
    backlog: Mutex<Option<(Backlog, Instant)>>,
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
            published: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            released: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            source_errors: AtomicU64::new(0),
            batch_latency: Histogram::default(),
            end_to_end_latency: Histogram::default(),
            last_claim_ms: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
            unsent_in_a_row: AtomicU64::new(0),
            last_error: Mutex::new(None),
            backlog: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(crate) fn claim_succeeded(&self) {
        self.last_claim_ms.store(self.now_ms(), Ordering::Relaxed);
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

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
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
    /// The last covers a relay whose claims succeed and come back empty
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
        let in_flight = self.in_flight.load(Ordering::Relaxed);
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
        } else {
            (true, "claiming and delivering".to_string())
        };
        Health {
            healthy,
            reason,
            last_error,
        }
    }
}
