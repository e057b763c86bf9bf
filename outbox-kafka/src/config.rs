//! Settings of the Kafka destination, checked at start-up.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_core::{CloudEvents, ConfigError};
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
    /// start-up naming the property. Properties that would let librdkafka
    /// drop a message or reorder a key's messages are refused, named:
    /// `enable.idempotence` other than true, `acks` other than `all`/`-1`,
    /// more than 5 requests in flight, no retries. Values of secret-bearing
    /// properties (passwords, secrets, private keys, tokens,
    /// `sasl.oauthbearer.config`) are never printed.
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
    /// Publish each message as a CloudEvent 1.0, in binary or structured
    /// mode, under this protocol's binding. Default none: messages go out
    /// as they are.
    pub cloud_events: Option<CloudEvents>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_string(),
            properties: BTreeMap::new(),
            delivery_timeout: Duration::from_secs(8),
            cloud_events: None,
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret(name) {
                    "***"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("properties", &shown)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("cloud_events", &self.cloud_events)
            .finish()
    }
}

/// librdkafka's names for its per-message timeout, which stays infinite.
const LOCAL_TIMEOUTS: [&str; 2] = ["message.timeout.ms", "delivery.timeout.ms"];

/// Whether a property's value is a secret (a password, a private key, a
/// token or the configuration that holds one): never printed.
fn is_secret(name: &str) -> bool {
    [
        "password",
        "secret",
        "key.pem",
        "oauthbearer.config",
        "token",
    ]
    .iter()
    .any(|part| name.contains(part))
}

/// Why a property's value would let librdkafka drop a message, or store a
/// key's later message before an earlier one, behind the destination's
/// back; `None` when it keeps the guarantees. The destination pipelines a
/// key's messages and relies on the idempotent producer, with every
/// replica's acknowledgement, to keep a partition's order across retries.
fn unsafe_property(name: &str, value: &str) -> Option<&'static str> {
    let value = value.trim().to_ascii_lowercase();
    let number = value.parse::<i64>().ok();
    match name {
        "enable.idempotence" if !matches!(value.as_str(), "true" | "1") => Some(
            "must stay true: without the idempotent producer a retried batch can be stored \
             after a later one, out of order",
        ),
        "acks" | "request.required.acks" if !matches!(value.as_str(), "all" | "-1") => Some(
            "must be all (or -1): a message acknowledged by the leader alone is lost \
             when the leader fails",
        ),
        "max.in.flight.requests.per.connection" | "max.in.flight"
            if number.is_none_or(|n| n > 5) =>
        {
            Some("must be at most 5: the idempotent producer keeps order only up to 5 requests in flight")
        }
        "retries" | "message.send.max.retries" if number.is_none_or(|n| n < 1) => Some(
            "must be at least 1: the idempotent producer retries to keep order",
        ),
        _ => None,
    }
}

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
        if let Some((name, reason)) = self
            .properties
            .iter()
            .find_map(|(name, value)| Some((name, unsafe_property(name, value)?)))
        {
            return Err(ConfigError::new(format!("properties.{name}"), reason));
        }
        if let Some(cloud_events) = &self.cloud_events {
            cloud_events.validate()?;
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
        for name in [
            "sasl.password",
            "ssl.key.pem",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
        ] {
            let mut config = KafkaConfig::default();
            config.properties.insert(name.into(), "hunter2".into());
            assert!(!format!("{config:?}").contains("hunter2"), "{name}");
        }
    }

    #[test]
    fn properties_that_would_break_order_or_lose_messages_are_refused_and_named() {
        for (name, value) in [
            ("enable.idempotence", "false"),
            ("enable.idempotence", "0"),
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
            ("max.in.flight.requests.per.connection", "6"),
            ("max.in.flight", "100"),
            ("retries", "0"),
            ("message.send.max.retries", "0"),
        ] {
            let mut config = KafkaConfig::default();
            config.properties.insert(name.into(), value.into());
            let err = config.producer().err().expect(name);
            assert_eq!(err.setting, format!("properties.{name}"), "{err}");
        }
        for (name, value) in [
            ("acks", "all"),
            ("acks", "-1"),
            ("enable.idempotence", "true"),
            ("max.in.flight.requests.per.connection", "5"),
        ] {
            let mut config = KafkaConfig::default();
            config.properties.insert(name.into(), value.into());
            let _producer = config.producer().expect(name);
        }
    }
}
