//! Scenarios every Source passes, with the in-memory destination, by theme.

mod delivery;
mod isolation;
mod leases;

pub use delivery::*;
pub use isolation::*;
pub use leases::*;

use std::time::Duration;

use outbox_core::{Backoff, Message, RelayConfig};

const LEASE: Duration = Duration::from_secs(10);

const DEADLINE: Duration = Duration::from_secs(30);

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 50,
        max_concurrent_keys: 8,
        max_in_flight_per_key: 4,
        send_timeout: Duration::from_secs(2),
        poll_interval_min: Duration::from_millis(5),
        poll_interval_max: Duration::from_millis(50),
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
            multiplier: 2.0,
            jitter: 0.1,
        },
        ..RelayConfig::default()
    }
}

/// 30 messages over five keys (`other-0` to `other-4`), for scenarios
/// where one key misbehaves.
fn other_keys() -> Vec<Message> {
    (0..30)
        .map(|n| {
            Message::builder("events", format!("other-{}", n % 5))
                .build()
                .unwrap()
        })
        .collect()
}

fn ids(claim: &[Message]) -> Vec<uuid::Uuid> {
    claim.iter().map(|m| m.id).collect()
}
