//! The relay's statistics in the Prometheus text format (version 0.0.4).

use std::fmt::Write;

use outbox_core::{HistogramSnapshot, StatsSnapshot, BUCKETS_SECONDS};

/// Renders every counter, gauge and histogram of a relay's `stats`.
pub fn render(stats: &StatsSnapshot) -> String {
    let mut out = String::new();
    let counts = stats.counts;
    let counters = [
        (
            "outbox_published_total",
            "Messages published and acknowledged by the broker.",
            counts.published,
        ),
        (
            "outbox_retried_total",
            "Failed attempts that will be retried.",
            counts.retried,
        ),
        (
            "outbox_dead_lettered_total",
            "Messages dead-lettered.",
            counts.dead_lettered,
        ),
        (
            "outbox_released_total",
            "Claimed messages handed back unattempted.",
            counts.released,
        ),
        (
            "outbox_batches_total",
            "Non-empty batches claimed.",
            counts.batches,
        ),
        (
            "outbox_source_errors_total",
            "Claims or reports that failed against the database.",
            counts.source_errors,
        ),
    ];
    for (name, help, counter) in counters {
        metric(&mut out, name, help, "counter", counter as f64);
    }
    metric(
        &mut out,
        "outbox_in_flight",
        "Messages claimed and not yet reported.",
        "gauge",
        counts.in_flight as f64,
    );
    let health = &stats.health;
    metric(
        &mut out,
        "outbox_healthy",
        "1 while the relay claims and delivers, 0 when it stalls.",
        "gauge",
        if health.healthy { 1.0 } else { 0.0 },
    );
    if let Some(backlog) = stats.backlog {
        metric(
            &mut out,
            "outbox_backlog_waiting",
            "Messages waiting for delivery.",
            "gauge",
            backlog.waiting as f64,
        );
        metric(
            &mut out,
            "outbox_backlog_dead_letters",
            "Dead letters kept for an operator.",
            "gauge",
            backlog.dead_letters as f64,
        );
        metric(
            &mut out,
            "outbox_oldest_waiting_age_seconds",
            "Age of the oldest waiting message (0 when none waits).",
            "gauge",
            backlog.oldest_age.map_or(0.0, |age| age.as_secs_f64()),
        );
    }
    histogram(
        &mut out,
        "outbox_batch_duration_seconds",
        "Time from claiming a batch to its last report.",
        &stats.batch_latency,
    );
    histogram(
        &mut out,
        "outbox_end_to_end_latency_seconds",
        "Time from a message's commit to the broker's acknowledgement.",
        &stats.end_to_end_latency,
    );
    out
}

fn metric(out: &mut String, name: &str, help: &str, kind: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

fn histogram(out: &mut String, name: &str, help: &str, snapshot: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, count) in BUCKETS_SECONDS.iter().zip(&snapshot.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", snapshot.count);
    let _ = writeln!(
        out,
        "{name}_sum {}\n{name}_count {}",
        snapshot.sum_seconds, snapshot.count
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use outbox_core::{Histogram, Stats};

    use super::*;

    #[test]
    fn counters_and_histograms_are_rendered() {
        let mut stats = Stats::new(Duration::from_secs(60)).snapshot();
        stats.counts.published = 7;
        let end_to_end = Histogram::default();
        end_to_end.observe(Duration::from_millis(3));
        stats.end_to_end_latency = end_to_end.snapshot();
        let text = render(&stats);
        assert!(
            text.contains("# TYPE outbox_published_total counter\noutbox_published_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("outbox_end_to_end_latency_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("outbox_end_to_end_latency_seconds_bucket{le=\"0.002\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("outbox_end_to_end_latency_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("outbox_end_to_end_latency_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
    }

    /// The dashboard and the alert rules in `deploy/` ask only for series
    /// this exposition has, so renaming a metric fails here.
    #[test]
    fn the_dashboard_and_alerts_ask_only_for_metrics_served() {
        let mut stats = Stats::new(Duration::from_secs(60)).snapshot();
        stats.backlog = Some(outbox_core::Backlog {
            waiting: 0,
            oldest_age: None,
            dead_letters: 0,
        });
        let text = render(&stats);
        let served: std::collections::HashSet<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split([' ', '{']).next())
            .collect();
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for file in ["outbox-dashboard.json", "outbox-alerts.yml"] {
            let content = std::fs::read_to_string(deploy.join(file)).unwrap();
            let asked: Vec<&str> = content
                .match_indices("outbox_")
                .map(|(at, _)| {
                    let rest = &content[at..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                        .unwrap_or(rest.len());
                    &rest[..end]
                })
                .collect();
            assert!(asked.len() > 5, "{file}: {asked:?}");
            for name in asked {
                assert!(served.contains(name), "{file} asks for {name}, not served");
            }
        }
    }
}
