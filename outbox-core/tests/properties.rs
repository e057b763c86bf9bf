//! Property tests of the scheduler on the in-memory pair: for random keys and
//! failure patterns, each key's order holds and every message ends delivered
//! or dead-lettered as configured.

use std::collections::HashSet;
use std::time::Duration;

use outbox_core::memory::{MemoryDestination, MemorySource};
use outbox_core::{Backoff, Message, OnDeadLetter, RelayConfig};
use outbox_testkit::{eventually, run_relay};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Temporary(u32),
    Permanent,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        3 => (1u32..5).prop_map(Fault::Temporary),
        1 => Just(Fault::Permanent),
    ]
}

const MAX_ATTEMPTS: u32 = 3;

fn scenario(keys: Vec<(u8, Fault)>, policy: OnDeadLetter, batch_size: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let source = MemorySource::default().on_dead_letter(policy);
        let destination = MemoryDestination::new();
        let messages: Vec<Message> = keys
            .iter()
            .map(|(key, _)| Message::builder("t", format!("k{key}")).build().unwrap())
            .collect();
        let mut doomed = HashSet::new();
        for (message, (_, fault)) in messages.iter().zip(&keys) {
            match fault {
                Fault::None => {}
                Fault::Temporary(n) => {
                    destination.fail_times(message.id, *n);
                    if *n >= MAX_ATTEMPTS {
                        doomed.insert(message.id);
                    }
                }
                Fault::Permanent => {
                    destination.fail_permanently(message.id);
                    doomed.insert(message.id);
                }
            }
        }
        // With parking, everything after the first doomed message of its key
        // stays waiting: it is never attempted, so it is neither delivered
        // nor dead-lettered, however it would have fared.
        let mut parked_keys = HashSet::new();
        let mut expected_delivered = Vec::new();
        let mut expected_dead = HashSet::new();
        for message in &messages {
            let parked =
                policy == OnDeadLetter::Park && parked_keys.contains(&message.ordering_key);
            if parked {
                continue;
            }
            if doomed.contains(&message.id) {
                expected_dead.insert(message.id);
                parked_keys.insert(message.ordering_key.clone());
            } else {
                expected_delivered.push(message.clone());
            }
        }
        source.enqueue(messages.clone());
        let config = RelayConfig {
            batch_size,
            max_attempts: MAX_ATTEMPTS,
            max_in_flight_per_key: 2,
            send_timeout: Duration::from_secs(2),
            poll_interval_min: Duration::from_millis(1),
            poll_interval_max: Duration::from_millis(5),
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(4),
                multiplier: 2.0,
                jitter: 0.5,
            },
            ..RelayConfig::default()
        };
        let relay = run_relay(source.clone(), destination.clone(), config);
        let settled = eventually(Duration::from_secs(20), || async {
            destination.sent_count() >= expected_delivered.len()
                && source.dead_letters().len() == expected_dead.len()
        })
        .await;
        relay.stop().await;
        assert!(
            settled,
            "did not settle: {} sent, {} dead",
            destination.sent_count(),
            source.dead_letters().len()
        );

        let sent: Vec<_> = destination
            .sent()
            .into_iter()
            .map(|s| s.message.id)
            .collect();
        let wanted: Vec<_> = expected_delivered.iter().map(|m| m.id).collect();
        // Per key, delivered ids must equal the expected ids in enqueue order.
        for key in keys
            .iter()
            .map(|(k, _)| format!("k{k}"))
            .collect::<HashSet<_>>()
        {
            let of_key = |ids: &[uuid::Uuid]| -> Vec<uuid::Uuid> {
                ids.iter()
                    .filter(|id| {
                        messages
                            .iter()
                            .any(|m| m.id == **id && m.ordering_key == key)
                    })
                    .copied()
                    .collect()
            };
            assert_eq!(of_key(&sent), of_key(&wanted), "key {key}");
        }
        let dead: HashSet<_> = source
            .dead_letters()
            .into_iter()
            .map(|d| d.message.id)
            .collect();
        assert_eq!(dead, expected_dead);
        let left = source.waiting();
        let parked = messages.len() - expected_delivered.len() - expected_dead.len();
        assert_eq!(left, parked, "messages left waiting");
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn order_holds_and_everything_settles_when_continuing(
        keys in prop::collection::vec((0u8..6, fault()), 1..60),
        batch_size in 1usize..20,
    ) {
        scenario(keys, OnDeadLetter::Continue, batch_size);
    }

    #[test]
    fn order_holds_and_everything_settles_when_parking(
        keys in prop::collection::vec((0u8..6, fault()), 1..60),
        batch_size in 1usize..20,
    ) {
        scenario(keys, OnDeadLetter::Park, batch_size);
    }
}
