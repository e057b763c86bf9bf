//! Settings of the AMQP destination, checked at start-up.

use std::fmt;
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
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_string(),
            route: Route::from_destination,
            connection_name: "outbox-relay".to_string(),
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("connection_name", &self.connection_name)
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
        Ok(())
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
