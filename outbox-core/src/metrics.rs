//! The relay's figures through the `metrics` facade (feature `metrics`):
//! whatever recorder the embedding service installed (a Prometheus
//! exporter, StatsD, OpenTelemetry) receives them under the names
//! `outbox-relay` serves on `/metrics`. Without a recorder each call is a
//! no-op.
//!
//! Every series has the label `destination`, the broker's kind
//! ([`Destination::messaging_system`](crate::Destination::messaging_system):
//! `kafka`, `rabbitmq`, `nats`), and the send durations an `outcome` (`ok`,
//! `error`): labels of a few values each. Topics and keys are not labels, as
//! a deployment may have any number of them.
//!
//! Counters and the in-flight gauge are added to, not set, so several
//! relays in one process sum up; the backlog gauges describe the outbox
//! and are set to the last backlog read.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Histogram,
};

use crate::{Backlog, Health};

/// Describes every metric, for recorders that show help texts, and
/// registers the counters of a relay publishing to a `destination` kind at
/// zero, so a rate over one that never moved is 0 rather than no data.
pub(crate) fn describe(destination: &'static str) {
    for name in [
        "outbox_published_total",
        "outbox_retried_total",
        "outbox_dead_lettered_total",
        "outbox_released_total",
        "outbox_batches_total",
        "outbox_source_errors_total",
    ] {
        counter!(name, "destination" => destination).increment(0);
    }
    describe_counter!(
        "outbox_published_total",
        "Messages published and acknowledged by the broker."
    );
    describe_counter!(
        "outbox_retried_total",
        "Failed attempts that will be retried."
    );
    describe_counter!("outbox_dead_lettered_total", "Messages dead-lettered.");
    describe_counter!(
        "outbox_released_total",
        "Claimed messages handed back unattempted."
    );
    describe_counter!("outbox_batches_total", "Non-empty batches claimed.");
    describe_counter!(
        "outbox_source_errors_total",
        "Claims or reports that failed against the source."
    );
    describe_gauge!("outbox_in_flight", "Messages claimed and not yet reported.");
    describe_gauge!(
        "outbox_healthy",
        "1 while the relay claims and delivers, 0 when it stalls."
    );
    describe_gauge!("outbox_backlog_waiting", "Messages waiting for delivery.");
    describe_gauge!(
        "outbox_backlog_dead_letters",
        "Dead letters kept for an operator."
    );
    describe_gauge!(
        "outbox_oldest_waiting_age_seconds",
        "Age of the oldest waiting message (0 when none waits)."
    );
    describe_gauge!(
        "outbox_log_lag_bytes",
        "For a source reading a database's log: log written past its confirmed position."
    );
    describe_gauge!(
        "outbox_log_lag_seconds",
        "For a source reading a database's log: age of the oldest transaction read and not confirmed."
    );
    describe_histogram!(
        "outbox_claim_duration_seconds",
        "Time a claim took at the source, empty claims included."
    );
    describe_histogram!(
        "outbox_send_duration_seconds",
        "Time from sending a run of one key's messages to the broker's last answer."
    );
    describe_histogram!(
        "outbox_batch_duration_seconds",
        "Time from claiming a batch to its last report."
    );
    describe_histogram!(
        "outbox_end_to_end_latency_seconds",
        "Time from a message's commit to the broker's acknowledgement."
    );
}

/// A claim of `items` (none counts only its duration).
pub(crate) fn claimed(destination: &'static str, items: u64, took: Duration) {
    histogram!("outbox_claim_duration_seconds", "destination" => destination)
        .record(took.as_secs_f64());
    if items > 0 {
        counter!("outbox_batches_total", "destination" => destination).increment(1);
        gauge!("outbox_in_flight", "destination" => destination).increment(items as f64);
    }
}

/// One relay's handles on the series it records once per message or per
/// key: the facade's macros look a series up by its name and labels on
/// every call (about 1 % of a relay draining tens of thousands of
/// messages a second, besides the record itself). Each handle is looked up at its first
/// use rather than when the relay is built, so a recorder installed in
/// between still receives everything.
#[derive(Default)]
pub(crate) struct Handles {
    sent_ok: OnceLock<Histogram>,
    sent_error: OnceLock<Histogram>,
    end_to_end: OnceLock<Histogram>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles").finish_non_exhaustive()
    }
}

impl Handles {
    /// A run of one key's messages sent, all acknowledged (`ok`) or not.
    pub(crate) fn sent(&self, destination: &'static str, took: Duration, ok: bool) {
        let (handle, outcome) = if ok {
            (&self.sent_ok, "ok")
        } else {
            (&self.sent_error, "error")
        };
        handle
            .get_or_init(|| {
                histogram!("outbox_send_duration_seconds", "destination" => destination, "outcome" => outcome)
            })
            .record(took.as_secs_f64());
    }

    /// A message's time from commit to acknowledgement.
    pub(crate) fn end_to_end_latency(&self, destination: &'static str, latency: Duration) {
        self.end_to_end
            .get_or_init(
                || histogram!("outbox_end_to_end_latency_seconds", "destination" => destination),
            )
            .record(latency.as_secs_f64());
    }
}

/// A reported batch's outcomes.
pub(crate) fn reported(
    destination: &'static str,
    published: u64,
    retried: u64,
    dead: u64,
    released: u64,
) {
    let label = [("destination", destination)];
    counter!("outbox_published_total", &label).increment(published);
    counter!("outbox_retried_total", &label).increment(retried);
    counter!("outbox_dead_lettered_total", &label).increment(dead);
    counter!("outbox_released_total", &label).increment(released);
    gauge!("outbox_in_flight", &label).decrement((published + retried + dead + released) as f64);
}

/// A failed claim or report.
pub(crate) fn source_failed(destination: &'static str) {
    counter!("outbox_source_errors_total", "destination" => destination).increment(1);
}

/// A batch's time from claim to last report.
pub(crate) fn batch_latency(destination: &'static str, latency: Duration) {
    histogram!("outbox_batch_duration_seconds", "destination" => destination)
        .record(latency.as_secs_f64());
}

/// The backlog the source last reported.
pub(crate) fn backlog(destination: &'static str, backlog: &Backlog) {
    let label = [("destination", destination)];
    gauge!("outbox_backlog_waiting", &label).set(backlog.waiting as f64);
    gauge!("outbox_backlog_dead_letters", &label).set(backlog.dead_letters as f64);
    let oldest = backlog.oldest_age.map_or(0.0, |age| age.as_secs_f64());
    gauge!("outbox_oldest_waiting_age_seconds", &label).set(oldest);
    if let Some(lag) = backlog.log_lag {
        gauge!("outbox_log_lag_bytes", &label).set(lag.bytes as f64);
        if let Some(age) = lag.age {
            gauge!("outbox_log_lag_seconds", &label).set(age.as_secs_f64());
        }
    }
}

/// The relay's health, as 1 or 0.
pub(crate) fn health(destination: &'static str, health: &Health) {
    gauge!("outbox_healthy", "destination" => destination).set(if health.healthy {
        1.0
    } else {
        0.0
    });
}
