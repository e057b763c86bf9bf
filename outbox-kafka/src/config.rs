//! Settings of the Kafka destination, checked at start-up.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_core::ConfigError;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

/// Where and how to produce.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, such as `broker-1:9092,broker-2:9092`.
    pub brokers: String,
    /// Any other librdkafka producer property, by name (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`,
    /// `compression.type`, `linger.ms`, ...). They override the defaults
    /// below; a property librdkafka does not know, or a bad value, fails at
    /// start-up naming the property. Values of properties whose name holds
    /// `password` or `secret` are never printed.
    pub properties: BTreeMap<String, String>,
    /// Longest a send waits for a message to be acknowledged, the
    /// producer's retries included. Must be shorter than the relay's
    /// `send_timeout`. Default 8 s.
    ///
    /// The destination keeps this deadline itself, and librdkafka's own
    /// `message.timeout.ms` is infinite (so it cannot be set in
    /// `properties`): librdkafka fails a message that waited that long in
    /// its queue and goes on with the later messages of its partition, so a
    /// key's later message could be stored without the earlier one and the
    /// earlier one sent again after it. When a send's deadline passes, the
    /// destination replaces the producer instead, and the old one's queue is
    /// discarded whole.
    pub delivery_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_string(),
            properties: BTreeMap::new(),
            delivery_timeout: Duration::from_secs(8),
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(name, value)| {
                let secret = name.contains("password") || name.contains("secret");
                (name.as_str(), if secret { "***" } else { value.as_str() })
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("properties", &shown)
            .field("delivery_timeout", &self.delivery_timeout)
            .finish()
    }
}

/// librdkafka's names for its per-message timeout, which stays infinite.
const LOCAL_TIMEOUTS: [&str; 2] = ["message.timeout.ms", "delivery.timeout.ms"];

impl KafkaConfig {
    /// The librdkafka configuration: safe defaults, then the user's
    /// properties.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "0");
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }

    /// Checks the settings and builds the producer; a bad property is named.
    pub(crate) fn producer(&self) -> Result<FutureProducer, ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::new("brokers", "must not be empty"));
        }
        if let Some(name) = self
            .properties
            .keys()
            .find(|name| LOCAL_TIMEOUTS.contains(&name.as_str()))
        {
            return Err(ConfigError::new(
                format!("properties.{name}"),
                "is kept infinite by the destination, which fails a send after delivery_timeout \
                 itself (a message librdkafka times out lets the later ones of its key overtake \
                 it): set delivery_timeout instead",
            ));
        }
        if self.delivery_timeout < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "delivery_timeout",
                "must be at least 100 ms",
            ));
        }
        self.client_config().create().map_err(|err| {
            // Find which property librdkafka refused, to name it.
            let culprit = self.properties.iter().find(|(name, value)| {
                let mut alone = ClientConfig::new();
                alone
                    .set("bootstrap.servers", &self.brokers)
                    .set(*name, *value);
                alone.create::<FutureProducer>().is_err()
            });
            match culprit {
                Some((name, _)) => ConfigError::new(format!("properties.{name}"), err.to_string()),
                None => ConfigError::new("properties", err.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_property_is_named() {
        let mut config = KafkaConfig::default();
        config.properties.insert("linger.ms".into(), "5".into());
        config
            .properties
            .insert("no.such.property".into(), "1".into());
        let err = config.producer().err().expect("refused");
        assert_eq!(err.setting, "properties.no.such.property", "{err}");
    }

    #[test]
    fn a_bad_value_is_named() {
        let mut config = KafkaConfig::default();
        config.properties.insert("acks".into(), "sometimes".into());
        let err = config.producer().err().expect("refused");
        assert_eq!(err.setting, "properties.acks", "{err}");
    }

    #[test]
    fn librdkafkas_own_message_timeout_is_refused_and_named() {
        for name in LOCAL_TIMEOUTS {
            let mut config = KafkaConfig::default();
            config.properties.insert(name.into(), "5000".into());
            let err = config.producer().err().expect("refused");
            assert_eq!(err.setting, format!("properties.{name}"), "{err}");
            assert!(err.to_string().contains("delivery_timeout"), "{err}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let mut config = KafkaConfig::default();
        config
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
