//! Settings of the AMQP destination, checked at start-up.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lapin::tcp::OwnedIdentity;
use outbox_core::{redact_url, CloudEvents, ConfigError, Message};

/// An exchange and routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The exchange; empty for the default exchange.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
}

impl Route {
    /// The default mapping: `exchange/routing-key`, or, without `/`, the
    /// default exchange with the destination as routing key (the queue of
    /// that name).
    pub fn from_destination(message: &Message) -> Route {
        match message.destination.split_once('/') {
            Some((exchange, routing_key)) => Route {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
            },
            None => Route {
                exchange: String::new(),
                routing_key: message.destination.clone(),
            },
        }
    }
}

/// Where and how to publish.
#[derive(Clone)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/vhost`, or `amqps://` for TLS. The
    /// password never appears in logs or `Debug` output.
    pub url: String,
    /// Maps a message to its exchange and routing key. Default
    /// [`Route::from_destination`].
    pub route: fn(&Message) -> Route,
    /// Name shown for the connection in the broker's management tools.
    /// Default `outbox-relay`.
    pub connection_name: String,
    /// A PEM file of CA certificates to trust besides the system's (a
    /// private CA), for an `amqps://` URL. Read once, at
    /// [`AmqpDestination::connect`](crate::AmqpDestination::connect).
    pub root_certificates: Option<PathBuf>,
    /// For mutual TLS: a PEM file with this client's certificate (and any
    /// intermediates), presented to a broker that asks for one
    /// (`ssl_options.verify = verify_peer`). Needs `client_key` and an
    /// `amqps://` URL. The user and password of the URL still log in.
    pub client_certificate: Option<PathBuf>,
    /// The PEM file of `client_certificate`'s private key (PKCS#8, PKCS#1
    /// or SEC1, unencrypted).
    pub client_key: Option<PathBuf>,
    /// Publish each message as a CloudEvent 1.0, in binary or structured
    /// mode, under this protocol's binding. Default none: messages go out
    /// as they are.
    pub cloud_events: Option<CloudEvents>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_string(),
            route: Route::from_destination,
            connection_name: "outbox-relay".to_string(),
            root_certificates: None,
            client_certificate: None,
            client_key: None,
            cloud_events: None,
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("connection_name", &self.connection_name)
            .field("root_certificates", &self.root_certificates)
            .field("client_certificate", &self.client_certificate)
            .field("client_key", &self.client_key)
            .field("cloud_events", &self.cloud_events)
            .finish_non_exhaustive()
    }
}

impl AmqpConfig {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err(ConfigError::new(
                "url",
                format!(
                    "must start with amqp:// or amqps://, got {}",
                    redact_url(&self.url)
                ),
            ));
        }
        for (setting, set) in [
            ("root_certificates", self.root_certificates.is_some()),
            ("client_certificate", self.client_certificate.is_some()),
            ("client_key", self.client_key.is_some()),
        ] {
            if set && !self.url.starts_with("amqps://") {
                return Err(ConfigError::new(
                    setting,
                    "is for TLS: the url must start with amqps://",
                ));
            }
        }
        if let Some(cloud_events) = &self.cloud_events {
            cloud_events.validate()?;
        }
        ConfigError::check_pair(
            ("client_certificate", self.client_certificate.is_some()),
            ("client_key", self.client_key.is_some()),
        )
    }

    /// The identity of [`client_certificate`](Self::client_certificate)
    /// and [`client_key`](Self::client_key), if set; an error names the
    /// setting whose file cannot be read or holds no PEM block of its kind.
    pub(crate) fn client_identity(&self) -> Result<Option<OwnedIdentity>, ConfigError> {
        let (Some(certificate), Some(key)) = (&self.client_certificate, &self.client_key) else {
            return Ok(None);
        };
        let read = |setting: &str, path: &PathBuf, marker: &str| {
            let pem = std::fs::read(path)
                .map_err(|err| ConfigError::new(setting, format!("{}: {err}", path.display())))?;
            if !String::from_utf8_lossy(&pem).contains(marker) {
                return Err(ConfigError::new(
                    setting,
                    format!("{} holds no PEM block {marker:?}", path.display()),
                ));
            }
            Ok(pem)
        };
        Ok(Some(OwnedIdentity::PKCS8 {
            pem: read(
                "client_certificate",
                certificate,
                "-----BEGIN CERTIFICATE-----",
            )?,
            key: read("client_key", key, "PRIVATE KEY-----")?,
        }))
    }

    /// The PEM text of [`root_certificates`](Self::root_certificates), if
    /// set; an error names the setting when the file cannot be read or
    /// holds no certificate.
    pub(crate) fn root_certificates_pem(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.root_certificates else {
            return Ok(None);
        };
        let pem = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::new("root_certificates", format!("{}: {err}", path.display()))
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::new(
                "root_certificates",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        Ok(Some(pem))
    }
}

/// Longest wait for a connection to open. A broker that does not answer
/// within it counts as down: the send fails as temporary and is retried.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let config = AmqpConfig {
            url: "amqps://relay:p4ssw0rd@rabbit.internal:5671/prod".into(),
            ..AmqpConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("p4ssw0rd"), "{shown}");
        assert!(shown.contains("rabbit.internal"), "{shown}");
    }

    #[test]
    fn bad_url_is_named() {
        let config = AmqpConfig {
            url: "http://x".into(),
            ..AmqpConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "url");
    }

    #[test]
    fn root_certificates_need_tls_and_a_certificate() {
        let plain = AmqpConfig {
            root_certificates: Some("ca.pem".into()),
            ..AmqpConfig::default()
        };
        let err = plain.validate().unwrap_err();
        assert_eq!(err.setting, "root_certificates");
        assert!(err.reason.contains("amqps://"), "{err}");

        let missing = AmqpConfig {
            url: "amqps://rabbit.internal".into(),
            root_certificates: Some("/no/such/ca.pem".into()),
            ..AmqpConfig::default()
        };
        assert!(missing.validate().is_ok());
        let err = missing.root_certificates_pem().unwrap_err();
        assert_eq!(err.setting, "root_certificates");
        assert!(err.reason.contains("/no/such/ca.pem"), "{err}");

        let not_pem =
            std::env::temp_dir().join(format!("outbox-amqp-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let err = AmqpConfig {
            root_certificates: Some(not_pem.clone()),
            ..missing
        }
        .root_certificates_pem()
        .unwrap_err();
        std::fs::remove_file(&not_pem).ok();
        assert!(err.reason.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_tls() {
        let tls = "amqps://u:p@127.0.0.1:5671/%2f".to_string();
        let alone = AmqpConfig {
            url: tls.clone(),
            client_certificate: Some("client.pem".into()),
            ..AmqpConfig::default()
        };
        assert_eq!(alone.validate().unwrap_err().setting, "client_key");
        let plain = AmqpConfig {
            client_certificate: Some("client.pem".into()),
            client_key: Some("client.key".into()),
            ..AmqpConfig::default()
        };
        assert_eq!(plain.validate().unwrap_err().setting, "client_certificate");
        let missing = AmqpConfig {
            url: tls,
            client_certificate: Some("/no/such/client.pem".into()),
            client_key: Some("/no/such/client.key".into()),
            ..AmqpConfig::default()
        };
        missing.validate().unwrap();
        let err = missing.client_identity().unwrap_err();
        assert_eq!(err.setting, "client_certificate");
        assert!(err.reason.contains("/no/such/client.pem"), "{err}");
    }

    #[test]
    fn default_route() {
        let message = Message::builder("orders/eu.placed", "k").build().unwrap();
        assert_eq!(
            Route::from_destination(&message),
            Route {
                exchange: "orders".into(),
                routing_key: "eu.placed".into()
            }
        );
        let message = Message::builder("invoices", "k").build().unwrap();
        assert_eq!(Route::from_destination(&message).exchange, "");
    }
}
