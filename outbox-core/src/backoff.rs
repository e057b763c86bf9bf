//! Exponential backoff with jitter between delivery attempts.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// How long a failed message waits before its next attempt.
///
/// The wait after the `n`-th failure is `initial * multiplier^(n-1)`, capped at
/// `max`, then shortened by a random fraction of up to `jitter` so that many
/// messages failing together do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backoff {
    /// Wait after the first failure. Default 1 s.
    #[serde(with = "crate::config::duration_ms")]
    pub initial: Duration,
    /// Longest wait. Default 5 min.
    #[serde(with = "crate::config::duration_ms")]
    pub max: Duration,
    /// Growth per failure, at least 1. Default 2.
    pub multiplier: f64,
    /// Fraction of the wait taken off at random, 0 to 1. Default 0.2.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait after `failures` failed attempts (1 for the first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = base.min(self.max.as_secs_f64());
        let cut = if self.jitter > 0.0 {
            rand::rng().random_range(0.0..=self.jitter)
        } else {
            0.0
        };
        Duration::from_secs_f64(capped * (1.0 - cut))
    }

    /// Checks the settings; `prefix` names where they sit (`backoff`).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.initial.is_zero() {
            return Err(ConfigError::new(
                format!("{prefix}.initial"),
                "must be greater than zero",
            ));
        }
        if self.max < self.initial {
            return Err(ConfigError::new(
                format!("{prefix}.max"),
                format!("must be at least {prefix}.initial ({:?})", self.initial),
            ));
        }
        if !(self.multiplier >= 1.0 && self.multiplier.is_finite()) {
            return Err(ConfigError::new(
                format!("{prefix}.multiplier"),
                format!(
                    "must be a finite number of at least 1, got {}",
                    self.multiplier
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                format!("{prefix}.jitter"),
                format!("must be between 0 and 1, got {}", self.jitter),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
        };
        assert_eq!(backoff.delay(1), Duration::from_millis(100));
        assert_eq!(backoff.delay(2), Duration::from_millis(200));
        assert_eq!(backoff.delay(4), Duration::from_millis(800));
        assert_eq!(backoff.delay(5), Duration::from_secs(1));
        assert_eq!(backoff.delay(500), Duration::from_secs(1));
    }

    #[test]
    fn jitter_only_shortens() {
        let backoff = Backoff {
            jitter: 0.5,
            ..Backoff::default()
        };
        for _ in 0..1000 {
            let delay = backoff.delay(3);
            assert!(delay <= Duration::from_secs(4) && delay >= Duration::from_secs(2));
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let err = Backoff {
            jitter: 1.5,
            ..Backoff::default()
        }
        .validate("backoff")
        .unwrap_err();
        assert_eq!(err.setting, "backoff.jitter");
    }
}
