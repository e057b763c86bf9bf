//! The configured broker, connected, handed to the relay with its source.

use std::time::Duration;

use outbox_core::{CancellationToken, Error, Message, Relay, RelayConfig, Source};

use crate::settings::{DestinationKind, DestinationSettings};
use crate::startup::{until_up, Readiness};

/// Connects the destination `settings` name (trying again while it cannot
/// be reached) and runs a relay from `source` to it until `shutdown`;
/// `readiness` gets the relay's statistics once it runs.
pub async fn relay_to<S: Source<Item = Message>>(
    settings: &DestinationSettings,
    source: S,
    config: RelayConfig,
    readiness: &Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let timeout = settings.timeout_ms.map(Duration::from_millis);
    #[allow(unused_variables)] // unused when only kafka is compiled in
    let url = settings.url.clone().unwrap_or_default();
    macro_rules! run {
        ($destination:expr) => {{
            let Some(destination) = $destination else {
                return Ok(());
            };
            let relay = Relay::new(source, destination, config)
                .map_err(|err| Error::permanent(format!("invalid configuration: relay.{err}")))?;
            readiness.running(relay.stats());
            relay.run(shutdown).await
        }};
    }
    match settings.kind {
        #[cfg(feature = "kafka")]
        DestinationKind::Kafka => {
            let mut kafka = outbox_kafka::KafkaConfig {
                brokers: settings.brokers.clone().unwrap_or_default(),
                ..outbox_kafka::KafkaConfig::default()
            };
            for (name, value) in &settings.properties {
                let value = crate::settings::property_value(name, value)
                    .map_err(|err| Error::permanent(format!("invalid configuration: {err}")))?;
                kafka.properties.insert(name.clone(), value);
            }
            if let Some(timeout) = timeout {
                kafka.delivery_timeout = timeout;
            }
            run!(Some(outbox_kafka::KafkaDestination::new(kafka)?))
        }
        #[cfg(feature = "amqp")]
        DestinationKind::Amqp => {
            let amqp = outbox_amqp::AmqpConfig {
                url,
                root_certificates: settings.root_certificates.clone(),
                client_certificate: settings.client_certificate.clone(),
                client_key: settings.client_key.clone(),
                ..outbox_amqp::AmqpConfig::default()
            };
            let connect = || outbox_amqp::AmqpDestination::connect(amqp.clone());
            run!(until_up("broker", readiness, &shutdown, connect).await?)
        }
        #[cfg(feature = "nats")]
        DestinationKind::Nats => {
            let mut nats = outbox_nats::NatsConfig {
                url,
                subject_prefix: settings.subject_prefix.clone().unwrap_or_default(),
                require_tls: settings.root_certificates.is_some(),
                root_certificates: settings.root_certificates.clone(),
                client_certificate: settings.client_certificate.clone(),
                client_key: settings.client_key.clone(),
                ..outbox_nats::NatsConfig::default()
            };
            if settings.mode.as_deref() == Some("core") {
                nats.mode = outbox_nats::NatsMode::Core;
            }
            if let Some(timeout) = timeout {
                nats.ack_timeout = timeout;
            }
            if let Some(token) = &settings.token {
                nats.auth = outbox_nats::NatsAuth::Token(token.clone());
            } else if let Some(seed) = &settings.nkey {
                nats.auth = outbox_nats::NatsAuth::NKey(seed.clone());
            } else if let Some(path) = &settings.credentials_file {
                nats.auth = outbox_nats::NatsAuth::CredentialsFile(path.clone());
            }
            let connect = || outbox_nats::NatsDestination::connect(nats.clone());
            run!(until_up("broker", readiness, &shutdown, connect).await?)
        }
        #[allow(unreachable_patterns)]
        kind => Err(Error::permanent(format!(
            "destination.kind = {kind:?} is not compiled into this outbox-relay: build it with that feature"
        ))),
    }
}
