//! Delivering one claimed batch: grouped by ordering key, each key in order,
//! keys concurrently up to a limit, a failure stopping only its own key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures_util::stream::{self, StreamExt};

use crate::error::bounded;
use crate::{Destination, Error, ErrorKind, Failure, Item, RelayConfig, Stats};

/// What became of each item of a batch, ready to report to the source.
#[derive(Debug)]
pub(crate) struct BatchOutcome<I> {
    /// Acknowledged by the destination.
    pub delivered: Vec<I>,
    /// Failed, to be retried later.
    pub retry: Vec<Failure<I>>,
    /// Failed for good.
    pub dead: Vec<Failure<I>>,
    /// Not attempted, or sent behind a failure of their key: hand back.
    pub released: Vec<I>,
    /// Not attempted because the lease would end before their send could:
    /// not sent, and released by the relay with the rest (a release after
    /// the lease changes nothing).
    pub expired: Vec<I>,
}

impl<I> Default for BatchOutcome<I> {
    fn default() -> Self {
        Self {
            delivered: Vec::new(),
            retry: Vec::new(),
            dead: Vec::new(),
            released: Vec::new(),
            expired: Vec::new(),
        }
    }
}

impl<I> BatchOutcome<I> {
    fn absorb(&mut self, other: BatchOutcome<I>) {
        self.delivered.extend(other.delivered);
        self.retry.extend(other.retry);
        self.dead.extend(other.dead);
        self.released.extend(other.released);
        self.expired.extend(other.expired);
    }
}

/// Limits one batch's delivery works within.
pub(crate) struct Bounds<'a> {
    /// No send may start after this instant: the lease would end mid-send.
    pub last_send_start: Instant,
    /// Set on shutdown once the grace period is over: start no new sends.
    pub stop: &'a AtomicBool,
    /// Where each run of a key's sends is timed (feature `metrics`).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub stats: &'a Stats,
}

/// Splits `items` into groups by ordering key, keeping claim order inside each.
/// Keys are borrowed from the items while the groups are numbered, so no key
/// is copied.
pub(crate) fn group_by_key<I: Item>(items: Vec<I>) -> Vec<Vec<I>> {
    let mut group_of: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let slots: Vec<usize> = items
        .iter()
        .map(|item| {
            let next = group_of.len();
            *group_of.entry(item.ordering_key()).or_insert(next)
        })
        .collect();
    let mut groups: Vec<Vec<I>> = (0..group_of.len()).map(|_| Vec::new()).collect();
    for (item, slot) in items.into_iter().zip(slots) {
        groups[slot].push(item);
    }
    groups
}

/// Delivers a batch and sorts every item into an outcome.
pub(crate) async fn deliver_batch<D: Destination>(
    destination: &D,
    items: Vec<D::Item>,
    config: &RelayConfig,
    bounds: &Bounds<'_>,
) -> BatchOutcome<D::Item> {
    // Sized for the common outcome, everything delivered, so that gathering
    // the groups' outcomes does not grow it again and again.
    let all = BatchOutcome {
        delivered: Vec::with_capacity(items.len()),
        ..BatchOutcome::default()
    };
    let groups = group_by_key(items);
    stream::iter(groups)
        .map(|group| deliver_group(destination, group, config, bounds))
        .buffer_unordered(config.max_concurrent_keys)
        .fold(all, |mut all, one| async move {
            all.absorb(one);
            all
        })
        .await
}

/// Delivers the items of one key in order, in chunks, stopping at the first
/// failure: the failed item is retried or dead-lettered, the rest released so
/// they wait for it.
async fn deliver_group<D: Destination>(
    destination: &D,
    items: Vec<D::Item>,
    config: &RelayConfig,
    bounds: &Bounds<'_>,
) -> BatchOutcome<D::Item> {
    let mut outcome = BatchOutcome::default();
    let mut rest = items;
    loop {
        // Most keys' items fit in one chunk: the group itself, not a copy.
        let after = if rest.len() > config.max_in_flight_per_key {
            rest.split_off(config.max_in_flight_per_key)
        } else {
            Vec::new()
        };
        let chunk = std::mem::replace(&mut rest, after);
        if chunk.is_empty() {
            return outcome;
        }
        if bounds.stop.load(Ordering::Relaxed) {
            outcome.released.extend(chunk);
            outcome.released.extend(rest);
            return outcome;
        }
        if Instant::now() >= bounds.last_send_start {
            outcome.expired.extend(chunk);
            outcome.expired.extend(rest);
            return outcome;
        }
        #[cfg(feature = "opentelemetry")]
        let spans = crate::publish_span::open(destination.messaging_system(), &chunk);
        #[cfg(feature = "metrics")]
        let sending = Instant::now();
        let results = send_chunk(destination, &chunk, config).await;
        #[cfg(feature = "metrics")]
        bounds
            .stats
            .observe_send(sending.elapsed(), results.iter().all(Result::is_ok));
        #[cfg(feature = "opentelemetry")]
        crate::publish_span::close(spans, &results);
        let mut failed = false;
        for (item, result) in chunk.into_iter().zip(results) {
            if failed {
                outcome.released.push(item);
                continue;
            }
            match result {
                Ok(()) => outcome.delivered.push(item),
                Err(error) => {
                    failed = true;
                    classify(item, error, config, &mut outcome);
                }
            }
        }
        if failed {
            outcome.released.extend(rest);
            return outcome;
        }
    }
}

async fn send_chunk<D: Destination>(
    destination: &D,
    chunk: &[D::Item],
    config: &RelayConfig,
) -> Vec<Result<(), Error>> {
    let send = std::panic::AssertUnwindSafe(destination.send_ordered(chunk));
    let guarded = futures_util::FutureExt::catch_unwind(send);
    match tokio::time::timeout(config.send_timeout, guarded).await {
        Ok(Ok(mut results)) => {
            // A destination returning too few results must not lose items.
            results.truncate(chunk.len());
            while results.len() < chunk.len() {
                results.push(Err(Error::temporary(
                    "destination returned no result for this message",
                )));
            }
            results
        }
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            let message = format!("destination panicked: {what}");
            chunk
                .iter()
                .map(|_| Err(Error::temporary(&message)))
                .collect()
        }
        Err(_) => {
            let message = format!(
                "destination did not acknowledge within send_timeout ({:?})",
                config.send_timeout
            );
            chunk
                .iter()
                .map(|_| Err(Error::temporary(&message)))
                .collect()
        }
    }
}

/// Decides between retry and dead letter for a failed item.
fn classify<I: Item>(item: I, error: Error, config: &RelayConfig, outcome: &mut BatchOutcome<I>) {
    let attempts = item.attempts().saturating_add(1);
    // Stored as the row's last error: a broker's error may be of any length.
    let report = bounded(error.report());
    match error.kind() {
        ErrorKind::Permanent => {
            tracing::warn!(id = %item.id(), key = item.ordering_key(), attempts, error = %report,
                "permanent failure, dead-lettering");
            outcome.dead.push(Failure {
                item,
                error: report,
                attempts,
                retry_after: Default::default(),
            });
        }
        ErrorKind::Temporary if attempts >= config.max_attempts => {
            tracing::warn!(id = %item.id(), key = item.ordering_key(), attempts, error = %report,
                "attempts exhausted, dead-lettering");
            outcome.dead.push(Failure {
                item,
                error: bounded(format!("gave up after {attempts} attempts: {report}")),
                attempts,
                retry_after: Default::default(),
            });
        }
        ErrorKind::Temporary => {
            let retry_after = config.backoff.delay(attempts);
            tracing::info!(id = %item.id(), key = item.ordering_key(), attempts, ?retry_after,
                error = %report, "delivery failed, will retry");
            outcome.retry.push(Failure {
                item,
                error: report,
                attempts,
                retry_after,
            });
        }
    }
}
