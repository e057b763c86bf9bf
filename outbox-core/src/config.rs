//! The relay's settings, with documented defaults, checked at start-up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Backoff, ConfigError};

/// Everything the relay can be told. `RelayConfig::default()` is a sensible
/// production start; [`RelayConfig::validate`] runs when the relay is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Most items claimed at once. Default 500.
    pub batch_size: usize,
    /// Most ordering keys being published at the same time. Default 256.
    pub max_concurrent_keys: usize,
    /// Most items of one key handed to the destination in one
    /// `send_ordered` call; the lease is checked between calls. Default 64.
    pub max_in_flight_per_key: usize,
    /// Attempts before a message is dead-lettered, at least 1. Default 10.
    pub max_attempts: u32,
    /// Wait between attempts of a message.
    pub backoff: Backoff,
    /// Longest wait for the destination to acknowledge one `send_ordered`
    /// call; past it the items count as failed (temporary). Must be shorter
    /// than the source's lease. Default 10 s.
    #[serde(with = "duration_ms")]
    pub send_timeout: Duration,
    /// Wait before the next claim after one came back empty; it doubles while
    /// the outbox stays empty, up to `poll_interval_max`. Default 10 ms.
    #[serde(with = "duration_ms")]
    pub poll_interval_min: Duration,
    /// Longest wait between claims when idle (a source that signals new work
    /// wakes the relay sooner). Default 1 s.
    #[serde(with = "duration_ms")]
    pub poll_interval_max: Duration,
    /// Claim and deliver the next batch while the current one is being
    /// published (two batches open at once, each with up to
    /// `max_concurrent_keys` keys), so a slow key does not hold back the
    /// keys of the next batch. Default true.
    pub prefetch: bool,
    /// On shutdown, how long in-flight keys may go on publishing before the
    /// rest of their items are released. Default 10 s.
    #[serde(with = "duration_ms")]
    pub shutdown_timeout: Duration,
    /// The health check reports a stall when no claim succeeded, or no
    /// claimed item reached an outcome, for this long. Default 60 s.
    #[serde(with = "duration_ms")]
    pub stall_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_concurrent_keys: 256,
            max_in_flight_per_key: 64,
            max_attempts: 10,
            backoff: Backoff::default(),
            send_timeout: Duration::from_secs(10),
            poll_interval_min: Duration::from_millis(10),
            poll_interval_max: Duration::from_secs(1),
            prefetch: true,
            shutdown_timeout: Duration::from_secs(10),
            stall_after: Duration::from_secs(60),
        }
    }
}

impl RelayConfig {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("batch_size", self.batch_size)?;
        positive("max_concurrent_keys", self.max_concurrent_keys)?;
        positive("max_in_flight_per_key", self.max_in_flight_per_key)?;
        positive("max_attempts", self.max_attempts as usize)?;
        self.backoff.validate("backoff")?;
        nonzero("send_timeout", self.send_timeout)?;
        nonzero("poll_interval_min", self.poll_interval_min)?;
        if self.poll_interval_max < self.poll_interval_min {
            return Err(ConfigError::new(
                "poll_interval_max",
                format!(
                    "must be at least poll_interval_min ({:?})",
                    self.poll_interval_min
                ),
            ));
        }
        nonzero("stall_after", self.stall_after)?;
        Ok(())
    }

    /// Checks the settings that depend on the source's lease.
    pub fn validate_with_lease(&self, lease: Duration) -> Result<(), ConfigError> {
        self.validate()?;
        // A tenth of the lease is kept for the batch's reports (see
        // `Relay::send_window`).
        let longest = lease - lease / 10;
        if self.send_timeout >= longest {
            return Err(ConfigError::new(
                "send_timeout",
                format!(
                    "must be shorter than nine tenths of the source's lease ({lease:?}), got {:?}: \
                     a send outliving its lease could be published twice out of order, and the \
                     last tenth is kept for reporting the batch",
                    self.send_timeout
                ),
            ));
        }
        Ok(())
    }
}

fn positive(setting: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(setting, "must be at least 1"));
    }
    Ok(())
}

fn nonzero(setting: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(setting, "must be greater than zero"));
    }
    Ok(())
}

/// Serde helper: a `Duration` written as whole milliseconds.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes milliseconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    /// Reads milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RelayConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_setting() {
        let config = RelayConfig {
            batch_size: 0,
            ..RelayConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.setting, "batch_size");
        assert!(err.to_string().contains("`batch_size`"), "{err}");

        let err = RelayConfig::default()
            .validate_with_lease(Duration::from_secs(5))
            .unwrap_err();
        assert_eq!(err.setting, "send_timeout");
    }

    #[test]
    fn a_send_timeout_that_leaves_no_time_to_report_is_refused() {
        let config = RelayConfig {
            send_timeout: Duration::from_millis(9500),
            ..RelayConfig::default()
        };
        let err = config
            .validate_with_lease(Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(err.setting, "send_timeout");
        let config = RelayConfig {
            send_timeout: Duration::from_secs(8),
            ..RelayConfig::default()
        };
        config.validate_with_lease(Duration::from_secs(10)).unwrap();
    }
}
