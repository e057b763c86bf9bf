//! The configured broker, connected, behind one type whatever its kind.

#[cfg(any(feature = "kafka", feature = "nats"))]
use std::time::Duration;

#[cfg(any(feature = "kafka", feature = "amqp", feature = "nats"))]
use outbox_core::Destination;
use outbox_core::{BoxDestination, CancellationToken, Error, Message};

use crate::settings::DestinationSettings;
#[cfg(any(feature = "amqp", feature = "nats"))]
use crate::startup::until_up;
use crate::startup::Readiness;

/// Connects the destination `settings` name, trying again while it cannot
/// be reached; `None` when `shutdown` came first.
#[cfg_attr(not(any(feature = "amqp", feature = "nats")), allow(unused_variables))]
pub async fn connect(
    settings: &DestinationSettings,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<Option<BoxDestination<Message>>, Error> {
    match settings {
        #[cfg(feature = "kafka")]
        DestinationSettings::Kafka(settings) => {
            let mut kafka = outbox_kafka::KafkaConfig {
                brokers: settings.brokers.clone(),
                cloud_events: settings.cloud_events.as_ref().map(|ce| ce.to_config()),
                ..outbox_kafka::KafkaConfig::default()
            };
            for (name, value) in &settings.properties {
                let value = crate::settings::property_value(name, value)
                    .map_err(|err| Error::permanent(format!("invalid configuration: {err}")))?;
                kafka.properties.insert(name.clone(), value);
            }
            if let Some(timeout_ms) = settings.timeout_ms {
                kafka.delivery_timeout = Duration::from_millis(timeout_ms);
            }
            Ok(Some(outbox_kafka::KafkaDestination::new(kafka)?.boxed()))
        }
        #[cfg(feature = "amqp")]
        DestinationSettings::Amqp(settings) => {
            let amqp = outbox_amqp::AmqpConfig {
                url: settings.url.clone(),
                root_certificates: settings.root_certificates.clone(),
                client_certificate: settings.client_certificate.clone(),
                client_key: settings.client_key.clone(),
                cloud_events: settings.cloud_events.as_ref().map(|ce| ce.to_config()),
                ..outbox_amqp::AmqpConfig::default()
            };
            let connect = || {
                let amqp = amqp.clone();
                async move { Ok(outbox_amqp::AmqpDestination::connect(amqp).await?.boxed()) }
            };
            until_up("broker", readiness, shutdown, connect).await
        }
        #[cfg(feature = "nats")]
        DestinationSettings::Nats(settings) => {
            use crate::settings::NatsModeSetting;
            use outbox_nats::{NatsAuth, NatsConfig, NatsDestination, NatsMode};
            let mut nats = NatsConfig {
                url: settings.url.clone(),
                subject_prefix: settings.subject_prefix.clone(),
                require_tls: settings.root_certificates.is_some(),
                root_certificates: settings.root_certificates.clone(),
                client_certificate: settings.client_certificate.clone(),
                client_key: settings.client_key.clone(),
                mode: match settings.mode {
                    NatsModeSetting::Jetstream => NatsMode::JetStream,
                    NatsModeSetting::Core => NatsMode::Core,
                },
                cloud_events: settings.cloud_events.as_ref().map(|ce| ce.to_config()),
                ..NatsConfig::default()
            };
            if let Some(timeout_ms) = settings.timeout_ms {
                nats.ack_timeout = Duration::from_millis(timeout_ms);
            }
            if let Some(token) = &settings.token {
                nats.auth = NatsAuth::Token(token.clone());
            } else if let Some(seed) = &settings.nkey {
                nats.auth = NatsAuth::NKey(seed.clone());
            } else if let Some(path) = &settings.credentials_file {
                nats.auth = NatsAuth::CredentialsFile(path.clone());
            }
            let connect = || {
                let nats = nats.clone();
                async move { Ok(NatsDestination::connect(nats).await?.boxed()) }
            };
            until_up("broker", readiness, shutdown, connect).await
        }
        #[allow(unreachable_patterns)]
        other => Err(Error::permanent(format!(
            "destination.kind = {:?} is not compiled into this outbox-relay: build it with that feature",
            other.kind()
        ))),
    }
}
