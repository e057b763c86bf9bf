//! `/metrics`: the figures the relay records through the `metrics` facade
//! (outbox-core's feature `metrics`), rendered in the Prometheus text
//! format by `metrics-exporter-prometheus`, the exporter a service
//! embedding the relay would install: the binary and such a service serve
//! the same series from the same code.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use outbox_core::BUCKETS_SECONDS;

/// How often recorded histogram samples are folded into their buckets, so
/// they do not pile up between scrapes (or with no scraper at all).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The exporter's settings: histograms with the relay's buckets.
fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets(&BUCKETS_SECONDS)
        .expect("the relay's buckets are not empty")
}

/// Installs the process's recorder and keeps it tidy on a task; the
/// handle renders what was recorded.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = builder()
        .install_recorder()
        .map_err(|err| format!("cannot install the metrics recorder: {err}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_EVERY).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use outbox_core::memory::{MemoryDestination, MemorySource};
    use outbox_core::RelayConfig;
    use outbox_testkit::{eventually, numbered_messages, run_relay};

    use super::*;

    /// The series a relay that delivered a message exposes, by name.
    async fn served() -> (HashSet<String>, String) {
        let handle = builder().install_recorder().expect("the only recorder");
        let source = MemorySource::default().with_log_lag(outbox_core::LogLag {
            bytes: 1,
            age: Some(Duration::ZERO),
            max_bytes: None,
        });
        source.enqueue(numbered_messages("t", 1, 2));
        let relay = run_relay(source, MemoryDestination::new(), RelayConfig::default());
        let stats = relay.stats.clone();
        let published = eventually(Duration::from_secs(5), || async {
            stats.snapshot().counts.published == 2 && stats.snapshot().backlog.is_some()
        })
        .await;
        relay.stop().await;
        assert!(published, "{:?}", stats.snapshot());
        let text = handle.render();
        let names = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split([' ', '{']).next())
            .map(str::to_string)
            .collect();
        (names, text)
    }

    /// Every series is served with its labels, histograms with the relay's
    /// buckets; and the dashboard and the alert rules in `deploy/` ask only
    /// for series served, so renaming a metric fails here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dashboard_and_alerts_ask_only_for_metrics_served() {
        let (served, text) = served().await;
        assert!(
            text.contains("outbox_published_total{destination=\"custom\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "outbox_end_to_end_latency_seconds_bucket{destination=\"custom\",le=\"0.005\"}"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "outbox_send_duration_seconds_count{destination=\"custom\",outcome=\"ok\"}"
            ),
            "{text}"
        );
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
                assert!(
                    served.contains(name),
                    "{file} asks for {name}, not served:\n{text}"
                );
            }
        }
    }
}
