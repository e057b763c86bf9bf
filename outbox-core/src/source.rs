//! Where messages come from: the outbox table, behind a lease.

use std::future::Future;
use std::time::Duration;

use crate::{BoxSource, Claim, ClaimId, Error, Item};

/// A retryable failure or a dead letter, reported for many items at once.
#[derive(Debug, Clone)]
pub struct Failure<I> {
    /// The item that failed.
    pub item: I,
    /// The error with its causes, stored as the row's last error.
    pub error: String,
    /// Attempts failed so far, this one included.
    pub attempts: u32,
    /// For a retry: wait at least this long before the next attempt. Sources
    /// store `now() + retry_after` by their own clock, so the wait survives
    /// restarts. Unused for dead letters.
    pub retry_after: Duration,
}

/// What happens to later messages of a key whose message was dead-lettered.
///
/// A source setting: the claim query enforces it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadLetter {
    /// Later messages of the key go on being delivered (the default): one
    /// poison message does not stop its entity.
    #[default]
    Continue,
    /// Later messages of the key wait until an operator requeues or deletes
    /// the dead letter, so consumers never see a gap in an entity's history.
    Park,
}

/// A database source's default byte budget per claim: 16 MiB of payloads.
/// A claim stops before the row that would take it past its budget (the
/// first row excepted, which travels alone when it is larger), so a relay's
/// memory is bounded by bytes as well as by `batch_size`.
pub const DEFAULT_BATCH_BYTES: usize = 16 << 20;

/// Size and age of what waits in the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Messages waiting to be delivered (not dead letters).
    pub waiting: u64,
    /// Age of the oldest waiting message.
    pub oldest_age: Option<Duration>,
    /// Dead letters kept for an operator.
    pub dead_letters: u64,
    /// For a source reading a database's log (PostgreSQL's write-ahead log
    /// through a replication slot): how far behind it is.
    pub log_lag: Option<LogLag>,
}

/// How far a source reading a database's log is behind the log's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogLag {
    /// Log written past the position the source confirmed: what the server
    /// keeps for it and what a restarted reader decodes again.
    pub bytes: u64,
    /// How long ago the oldest transaction read and not yet confirmed
    /// committed: zero when every transaction read is confirmed, `None`
    /// when the reporter reads nothing (an operator's view of the slot).
    pub age: Option<Duration>,
    /// The source's `max_lag_bytes`: above it the relay reports unhealthy.
    pub max_bytes: Option<u64>,
}

impl LogLag {
    /// Whether the lag is above the source's limit.
    pub fn is_over_limit(&self) -> bool {
        self.max_bytes.is_some_and(|max| self.bytes > max)
    }
}

/// The relay's side of an outbox: claims batches under a lease and records
/// what became of them.
///
/// # What a source promises
///
/// * **Lease.** Claimed items are not handed out again until this source
///   reports them or [`Source::lease`] passes; then any relay may claim them.
/// * **Order.** For each ordering key, a claim returns a prefix of the key's
///   waiting messages in enqueue order, and none at all while an earlier
///   message of the key is leased, waiting for its retry time, or (with
///   [`OnDeadLetter::Park`]) dead. This is what keeps a key in order across
///   retries, overlapping claims and several relays.
/// * **Fencing.** Every report names the claim it belongs to. A report for a
///   claim whose lease this source lost changes nothing, even when the same
///   source has since claimed the same items again under a new claim; it
///   may say so with a permanent error.
///
/// Reports carry many items of one claim, so a database source can use one
/// statement each.
pub trait Source: Send + Sync + 'static {
    /// What this source hands out.
    type Item: Item;

    /// Claims up to `limit` deliverable items under a lease of
    /// [`Source::lease`], as a new claim with an identity of its own.
    fn claim(&self, limit: usize) -> impl Future<Output = Result<Claim<Self::Item>, Error>> + Send;

    /// The items of `claim` were published: remove them from the delivery
    /// path.
    fn ack(
        &self,
        claim: ClaimId,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The items of `claim` failed and will be retried after their
    /// `retry_after`.
    fn retry(
        &self,
        claim: ClaimId,
        failures: &[Failure<Self::Item>],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The items of `claim` failed for good: keep them with their error,
    /// out of the delivery path, for an operator.
    fn dead_letter(
        &self,
        claim: ClaimId,
        failures: &[Failure<Self::Item>],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The items of `claim` were not attempted (shutdown, or an earlier
    /// message of their key failed): make them claimable again at once,
    /// attempts unchanged.
    fn release(
        &self,
        claim: ClaimId,
        items: &[Self::Item],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// How long a claim holds.
    fn lease(&self) -> Duration;

    /// Resolves when new work may have arrived (for instance a PostgreSQL
    /// NOTIFY), so the relay need not wait for its next poll. The default
    /// never resolves: the relay polls.
    fn wait_for_work(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Makes the source's progress durable. The relay calls it after its
    /// last report: at the end of [`Relay::run`](crate::Relay::run) and of
    /// each [`Relay::drain`](crate::Relay::drain). A source that records
    /// progress lazily (the PostgreSQL WAL source confirms its replication
    /// slot a moment after each acknowledgement) records it now, so a
    /// process that exits next sends nothing twice. The default does
    /// nothing: a table source's reports are durable when they return.
    fn checkpoint(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The backlog, for statistics and health; `None` when not supported.
    fn backlog(&self) -> impl Future<Output = Result<Option<Backlog>, Error>> + Send {
        async { Ok(None) }
    }

    /// This source behind one type, [`BoxSource`], for code that picks its
    /// source at run time.
    fn boxed(self) -> BoxSource<Self::Item>
    where
        Self: Sized,
    {
        BoxSource::new(self)
    }
}
