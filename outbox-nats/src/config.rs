//! Settings of the NATS destination, checked at start-up.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use outbox_core::redact_url;
use outbox_core::{CloudEvents, ConfigError};

/// What a publish waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NatsMode {
    /// Publish to a JetStream stream and wait for its acknowledgement, with
    /// `Nats-Msg-Id` deduplication (the default).
    #[default]
    JetStream,
    /// Core NATS: publish and flush, no acknowledgement (at most once).
    Core,
}

/// How to authenticate. Secrets never appear in `Debug` output or logs.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials, or those in the URL.
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An nkey seed.
    NKey(String),
    /// A `.creds` file (JWT and nkey seed).
    CredentialsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: \"***\" }}")
            }
            NatsAuth::Token(_) => f.write_str("Token(\"***\")"),
            NatsAuth::NKey(_) => f.write_str("NKey(\"***\")"),
            NatsAuth::CredentialsFile(path) => write!(f, "CredentialsFile({path:?})"),
        }
    }
}

/// Where and how to publish.
#[derive(Clone, PartialEq)]
pub struct NatsConfig {
    /// Server URL, such as `nats://127.0.0.1:4222` or `tls://host:4222`.
    pub url: String,
    /// JetStream (default) or core NATS.
    pub mode: NatsMode,
    /// Put before every message's destination to make its subject
    /// (`"prod."` + `"orders"` = `prod.orders`). Default none.
    pub subject_prefix: String,
    /// Credentials. Default none.
    pub auth: NatsAuth,
    /// Require TLS. Default false (a `tls://` URL requires it too).
    pub require_tls: bool,
    /// Extra root certificates (PEM) to trust for TLS.
    pub root_certificates: Option<PathBuf>,
    /// For mutual TLS: a PEM file with this client's certificate, presented
    /// to a server that verifies clients (`tls { verify: true }`). Needs
    /// `client_key`; TLS is then required.
    pub client_certificate: Option<PathBuf>,
    /// The PEM file of `client_certificate`'s private key (unencrypted).
    pub client_key: Option<PathBuf>,
    /// Longest wait for a JetStream acknowledgement. Default 5 s.
    pub ack_timeout: Duration,
    /// Longest wait to connect. Default 5 s.
    pub connect_timeout: Duration,
    /// Publish each message as a CloudEvent 1.0, in binary or structured
    /// mode, under this protocol's binding. Default none: messages go out
    /// as they are.
    pub cloud_events: Option<CloudEvents>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_string(),
            mode: NatsMode::JetStream,
            subject_prefix: String::new(),
            auth: NatsAuth::None,
            require_tls: false,
            root_certificates: None,
            client_certificate: None,
            client_key: None,
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            cloud_events: None,
        }
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field("subject_prefix", &self.subject_prefix)
            .field("auth", &self.auth)
            .field("require_tls", &self.require_tls)
            .field("root_certificates", &self.root_certificates)
            .field("client_certificate", &self.client_certificate)
            .field("client_key", &self.client_key)
            .field("ack_timeout", &self.ack_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("cloud_events", &self.cloud_events)
            .finish()
    }
}

impl NatsConfig {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(ConfigError::new("url", "must not be empty"));
        }
        if let Some(bad) = self
            .subject_prefix
            .chars()
            .find(|c| c.is_whitespace() || matches!(c, '*' | '>'))
        {
            return Err(ConfigError::new(
                "subject_prefix",
                format!("must not contain whitespace or wildcards, found {bad:?}"),
            ));
        }
        if self.ack_timeout.is_zero() {
            return Err(ConfigError::new("ack_timeout", "must be greater than zero"));
        }
        ConfigError::check_pair(
            ("client_certificate", self.client_certificate.is_some()),
            ("client_key", self.client_key.is_some()),
        )?;
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if let Some(cloud_events) = &self.cloud_events {
            cloud_events.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_printed() {
        let config = NatsConfig {
            url: "nats://alice:s3cret@127.0.0.1:4222".into(),
            auth: NatsAuth::UserPassword {
                user: "alice".into(),
                password: "s3cret".into(),
            },
            ..NatsConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!format!("{:?}", NatsAuth::Token("tok3n".into())).contains("tok3n"));
    }

    #[test]
    fn bad_settings_are_named() {
        let config = NatsConfig {
            subject_prefix: "orders.>".into(),
            ..NatsConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "subject_prefix");
        let config = NatsConfig {
            url: " ".into(),
            ..NatsConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "url");
    }
}
