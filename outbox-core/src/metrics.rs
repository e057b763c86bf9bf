//! The relay's figures through the `metrics` facade (feature `metrics`):
//! whatever recorder the embedding service installed (a Prometheus
//! exporter, StatsD, OpenTelemetry) receives them under the names
//! `outbox-relay` serves on `/metrics`. Without a recorder each call is a
//! no-op.
//!
//! Counters and the in-flight gauge are added to, not set, so several
//! relays in one process sum up; the backlog gauges describe the outbox
//! and are set to the last backlog read.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::{Backlog, Health};

/// Describes every metric once, for recorders that show help texts.
pub(crate) fn describe() {
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
    describe_histogram!(
        "outbox_batch_duration_seconds",
        "Time from claiming a batch to its last report."
    );
    describe_histogram!(
        "outbox_end_to_end_latency_seconds",
        "Time from a message's commit to the broker's acknowledgement."
    );
}

/// A non-empty claim of `items`.
pub(crate) fn claimed(items: u64) {
    counter!("outbox_batches_total").increment(1);
    gauge!("outbox_in_flight").increment(items as f64);
}

/// A reported batch's outcomes.
pub(crate) fn reported(published: u64, retried: u64, dead: u64, released: u64) {
    counter!("outbox_published_total").increment(published);
    counter!("outbox_retried_total").increment(retried);
    counter!("outbox_dead_lettered_total").increment(dead);
    counter!("outbox_released_total").increment(released);
    gauge!("outbox_in_flight").decrement((published + retried + dead + released) as f64);
}

/// A failed claim or report.
pub(crate) fn source_failed() {
    counter!("outbox_source_errors_total").increment(1);
}

/// A batch's time from claim to last report.
pub(crate) fn batch_latency(latency: Duration) {
    histogram!("outbox_batch_duration_seconds").record(latency.as_secs_f64());
}

/// A message's time from commit to acknowledgement.
pub(crate) fn end_to_end_latency(latency: Duration) {
    histogram!("outbox_end_to_end_latency_seconds").record(latency.as_secs_f64());
}

/// The backlog the source last reported.
pub(crate) fn backlog(backlog: &Backlog) {
    gauge!("outbox_backlog_waiting").set(backlog.waiting as f64);
    gauge!("outbox_backlog_dead_letters").set(backlog.dead_letters as f64);
    let oldest = backlog.oldest_age.map_or(0.0, |age| age.as_secs_f64());
    gauge!("outbox_oldest_waiting_age_seconds").set(oldest);
}

/// The relay's health, as 1 or 0.
pub(crate) fn health(health: &Health) {
    gauge!("outbox_healthy").set(if health.healthy { 1.0 } else { 0.0 });
}
