//! The relay's figures reach an installed `metrics` recorder (feature
//! `metrics`), under the names `outbox-relay` serves, agreeing with its
//! `Stats`. One test per binary: the recorder is global.

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use outbox_core::memory::{MemoryDestination, MemorySource};
use outbox_core::RelayConfig;
use outbox_testkit::{eventually, numbered_messages, run_relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_records_its_figures_through_the_metrics_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let source = MemorySource::default();
    let destination = MemoryDestination::new();
    let messages = numbered_messages("t", 3, 2);
    destination.fail_times(messages[0].id, 1);
    destination.fail_permanently(messages[1].id);
    source.enqueue(messages);
    let config = RelayConfig {
        send_timeout: Duration::from_secs(1),
        backoff: outbox_core::Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            ..Default::default()
        },
        ..RelayConfig::default()
    };
    let relay = run_relay(source.clone(), destination.clone(), config);
    let stats = relay.stats.clone();
    let settled = eventually(Duration::from_secs(5), || async {
        let counts = stats.snapshot().counts;
        counts.published == 5 && counts.in_flight == 0
    })
    .await;
    relay.stop().await;
    assert!(settled, "{:?}", stats.snapshot().counts);

    // The snapshot empties the recorder: one, after the relay stopped.
    let recorded: HashMap<String, (Option<String>, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, help, value)| {
            let help = help.map(|h| h.to_string());
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
            (name, (help, value))
        })
        .collect();
    // The memory destination's kind is the default, `custom`.
    let value = |name: &str| {
        let name = format!("{name}{{destination=custom}}");
        &recorded
            .get(&name)
            .unwrap_or_else(|| panic!("{name} not recorded: {recorded:?}"))
            .1
    };
    let counts = stats.snapshot().counts;
    for (name, expected) in [
        ("outbox_published_total", 5),
        ("outbox_retried_total", 1),
        ("outbox_dead_lettered_total", 1),
        ("outbox_released_total", counts.released),
        ("outbox_batches_total", counts.batches),
    ] {
        assert_eq!(value(name), &DebugValue::Counter(expected), "{name}");
    }
    assert_eq!(value("outbox_in_flight"), &DebugValue::Gauge(0.0.into()));
    assert_eq!(value("outbox_healthy"), &DebugValue::Gauge(1.0.into()));
    match value("outbox_end_to_end_latency_seconds") {
        DebugValue::Histogram(values) => assert_eq!(values.len(), 5, "{values:?}"),
        other => panic!("not a histogram: {other:?}"),
    }
    match value("outbox_batch_duration_seconds") {
        DebugValue::Histogram(values) => {
            assert_eq!(values.len() as u64, counts.batches, "{values:?}")
        }
        other => panic!("not a histogram: {other:?}"),
    }
    let sends = |outcome: &str| {
        let name = format!("outbox_send_duration_seconds{{destination=custom,outcome={outcome}}}");
        match recorded.get(&name).map(|(_, value)| value) {
            Some(DebugValue::Histogram(values)) => values.len(),
            other => panic!("{name}: {other:?}"),
        }
    };
    assert!(sends("ok") >= 3, "a run per key at least");
    assert_eq!(sends("error"), 2, "a send failed, then one for good");
    match value("outbox_claim_duration_seconds") {
        DebugValue::Histogram(values) => {
            assert!(values.len() as u64 >= counts.batches, "{values:?}")
        }
        other => panic!("not a histogram: {other:?}"),
    }
    let help = recorded["outbox_published_total{destination=custom}"]
        .0
        .as_deref();
    assert_eq!(
        help,
        Some("Messages published and acknowledged by the broker.")
    );
}
