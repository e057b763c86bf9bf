//! The `[destination]` table: `kind` and the settings of that broker only,
//! so a setting in the wrong place is refused by name when the file is read.
//! The `Debug` of each hides every secret: a URL's credentials, the values
//! of Kafka properties, the NATS token and nkey.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use outbox_core::{redact_url, CloudEvents, CloudEventsMode};
use serde::Deserialize;

/// Which broker receives the messages, with its settings.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DestinationSettings {
    /// `outbox-kafka`.
    Kafka(KafkaSettings),
    /// `outbox-amqp` (RabbitMQ).
    Amqp(AmqpSettings),
    /// `outbox-nats`, JetStream or core.
    Nats(NatsSettings),
}

/// `kind = "kafka"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Producer properties, passed to librdkafka as they are. TLS: the
    /// `ssl.*` properties.
    #[serde(default)]
    pub properties: BTreeMap<String, toml::Value>,
    /// Delivery timeout, in ms.
    pub timeout_ms: Option<u64>,
    /// Publish each message as a CloudEvent (`[destination.cloud_events]`).
    pub cloud_events: Option<CloudEventsSettings>,
}

/// `kind = "amqp"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Server URL, `amqp://` or `amqps://`.
    pub url: String,
    /// A PEM file of CA certificates to trust besides the system's (a
    /// private CA); needs an `amqps://` URL.
    pub root_certificates: Option<PathBuf>,
    /// For mutual TLS: a PEM file with the relay's client certificate.
    /// Needs `client_key`.
    pub client_certificate: Option<PathBuf>,
    /// The PEM file of `client_certificate`'s private key.
    pub client_key: Option<PathBuf>,
    /// Publish each message as a CloudEvent (`[destination.cloud_events]`).
    pub cloud_events: Option<CloudEventsSettings>,
}

/// How NATS messages are published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsModeSetting {
    /// JetStream, acknowledged (the default).
    #[default]
    Jetstream,
    /// Core NATS, at most once.
    Core,
}

/// `kind = "nats"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL.
    pub url: String,
    /// `jetstream` (default) or `core`.
    #[serde(default)]
    pub mode: NatsModeSetting,
    /// Put before every destination to make the subject.
    #[serde(default)]
    pub subject_prefix: String,
    /// A PEM file of CA certificates to trust besides the system's (a
    /// private CA); NATS then requires TLS.
    pub root_certificates: Option<PathBuf>,
    /// For mutual TLS: a PEM file with the relay's client certificate.
    /// Needs `client_key`; NATS then requires TLS.
    pub client_certificate: Option<PathBuf>,
    /// The PEM file of `client_certificate`'s private key.
    pub client_key: Option<PathBuf>,
    /// JetStream ack timeout, in ms.
    pub timeout_ms: Option<u64>,
    /// A token to authenticate with (instead of one in the URL).
    pub token: Option<String>,
    /// An nkey seed (`SU...`) to authenticate with.
    pub nkey: Option<String>,
    /// A `.creds` file (a user JWT and its nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// Publish each message as a CloudEvent (`[destination.cloud_events]`).
    pub cloud_events: Option<CloudEventsSettings>,
}

/// `[destination.cloud_events]`: messages published as CloudEvents 1.0.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsSettings {
    /// `binary` (attributes as headers) or `structured` (one JSON event).
    pub mode: CloudEventsModeSetting,
    /// The `source` attribute, a URI-reference naming the producer.
    pub source: String,
}

/// `[destination.cloud_events] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloudEventsModeSetting {
    /// The attributes as broker headers, the payload as written.
    Binary,
    /// The whole event as JSON in the payload.
    Structured,
}

impl CloudEventsSettings {
    /// The destinations' setting.
    pub fn to_config(&self) -> CloudEvents {
        CloudEvents {
            mode: match self.mode {
                CloudEventsModeSetting::Binary => CloudEventsMode::Binary,
                CloudEventsModeSetting::Structured => CloudEventsMode::Structured,
            },
            source: self.source.clone(),
        }
    }
}

impl DestinationSettings {
    /// The broker's name, as `kind` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kafka(_) => "kafka",
            Self::Amqp(_) => "amqp",
            Self::Nats(_) => "nats",
        }
    }

    /// Where the broker is, as a log line may show it.
    pub fn address(&self) -> String {
        match self {
            Self::Kafka(kafka) => kafka.brokers.clone(),
            Self::Amqp(amqp) => redact_url(&amqp.url),
            Self::Nats(nats) => redact_url(&nats.url),
        }
    }

    /// The broker's own delivery deadline, where it has one.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Self::Kafka(kafka) => kafka.timeout_ms,
            Self::Nats(nats) => nats.timeout_ms,
            Self::Amqp(_) => None,
        }
        .map(Duration::from_millis)
    }

    /// The CloudEvents envelope, if one is set.
    pub fn cloud_events(&self) -> Option<CloudEvents> {
        match self {
            Self::Kafka(kafka) => kafka.cloud_events.as_ref(),
            Self::Amqp(amqp) => amqp.cloud_events.as_ref(),
            Self::Nats(nats) => nats.cloud_events.as_ref(),
        }
        .map(CloudEventsSettings::to_config)
    }

    /// Every file setting, by name, with its path if set.
    pub fn files(&self) -> Vec<(&'static str, Option<&PathBuf>)> {
        match self {
            Self::Kafka(_) => Vec::new(),
            Self::Amqp(amqp) => vec![
                ("root_certificates", amqp.root_certificates.as_ref()),
                ("client_certificate", amqp.client_certificate.as_ref()),
                ("client_key", amqp.client_key.as_ref()),
            ],
            Self::Nats(nats) => vec![
                ("root_certificates", nats.root_certificates.as_ref()),
                ("client_certificate", nats.client_certificate.as_ref()),
                ("client_key", nats.client_key.as_ref()),
                ("credentials_file", nats.credentials_file.as_ref()),
            ],
        }
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("cloud_events", &self.cloud_events)
            .finish()
    }
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &redact_url(&self.url))
            .field("root_certificates", &self.root_certificates)
            .field("client_certificate", &self.client_certificate)
            .field("client_key", &self.client_key)
            .field("cloud_events", &self.cloud_events)
            .finish()
    }
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |set: bool| if set { Some("***") } else { None };
        f.debug_struct("NatsSettings")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field("subject_prefix", &self.subject_prefix)
            .field("root_certificates", &self.root_certificates)
            .field("client_certificate", &self.client_certificate)
            .field("client_key", &self.client_key)
            .field("timeout_ms", &self.timeout_ms)
            .field("token", &hidden(self.token.is_some()))
            .field("nkey", &hidden(self.nkey.is_some()))
            .field("credentials_file", &self.credentials_file)
            .field("cloud_events", &self.cloud_events)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(text: &str) -> Result<DestinationSettings, String> {
        toml::from_str::<DestinationSettings>(text).map_err(|err| err.message().to_string())
    }

    #[test]
    fn a_setting_of_another_broker_is_refused_by_name() {
        let err =
            destination("kind = \"kafka\"\nbrokers = \"k:9092\"\nurl = \"nats://h\"").unwrap_err();
        assert!(err.contains("unknown field `url`"), "{err}");
        let err =
            destination("kind = \"amqp\"\nurl = \"amqp://h\"\nsubject_prefix = \"p\"").unwrap_err();
        assert!(err.contains("unknown field `subject_prefix`"), "{err}");
        let err = destination("kind = \"nats\"\nurl = \"nats://h\"\nmode = \"fast\"").unwrap_err();
        assert!(err.contains("fast"), "{err}");
        let err = destination("kind = \"kafka\"").unwrap_err();
        assert!(err.contains("missing field `brokers`"), "{err}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let settings = destination(
            "kind = \"nats\"\nurl = \"nats://user:hunter2@h\"\ntoken = \"s3cret\"\nnkey = \"SUkey\"",
        )
        .unwrap();
        let shown = format!("{settings:?}");
        for secret in ["hunter2", "s3cret", "SUkey"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let settings = destination(
            "kind = \"kafka\"\nbrokers = \"k:9092\"\nproperties = { \"sasl.password\" = \"pw0\" }",
        )
        .unwrap();
        assert!(!format!("{settings:?}").contains("pw0"));
    }
}
