//! Settings of the AMQP destination, checked at start-up.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use outbox_core::{redact_url, ConfigError, Message};

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
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_string(),
            route: Route::from_destination,
            connection_name: "outbox-relay".to_string(),
            root_certificates: None,
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("connection_name", &self.connection_name)
            .field("root_certificates", &self.root_certificates)
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
        if self.root_certificates.is_some() && !self.url.starts_with("amqps://") {
            return Err(ConfigError::new(
                "root_certificates",
                "is for TLS: the url must start with amqps://",
            ));
        }
        Ok(())
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
