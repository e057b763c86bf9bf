//! The relay's configuration file, as read, and its checks.
//!
//! Durations are whole milliseconds, as in `outbox_core::RelayConfig`.

use std::net::SocketAddr;

use outbox_core::{ConfigError, RelayConfig};
use serde::Deserialize;

pub use crate::destination_settings::DestinationSettings;
#[cfg(feature = "nats")]
pub use crate::destination_settings::NatsModeSetting;
pub use crate::source_settings::{Database, SharedSourceSettings, SourceSettings};
pub use outbox_sql::AckMode;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where messages come from.
    pub source: SourceSettings,
    /// Where they go.
    pub destination: DestinationSettings,
    /// Every setting of the core relay (batch size, concurrency, attempts,
    /// backoff, timeouts, poll interval, shutdown deadline).
    #[serde(default)]
    pub relay: RelayConfig,
    /// The health and metrics endpoint.
    #[serde(default)]
    pub http: HttpSettings,
    /// Log format and filter.
    #[serde(default)]
    pub log: LogSettings,
}

/// The `[http]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address of `/healthz` and `/metrics`; empty turns them off.
    /// Default `127.0.0.1:9187`.
    pub listen: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9187".into(),
        }
    }
}

/// The `[log]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json`.
    pub format: String,
    /// A `tracing` filter such as `info` or `outbox_core=debug,info`;
    /// `RUST_LOG` wins when set. Default `info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Settings {
    /// Checks what serde cannot: values, settings that go together, files,
    /// and the core relay's own rules. The error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let source = &self.source.shared;
        if source.url.trim().is_empty() {
            return Err(ConfigError::new("source.url", "is required"));
        }
        if source.retention_ms.is_some() && source.ack != AckMode::MarkDone {
            return Err(ConfigError::new(
                "source.retention_ms",
                "applies with ack = \"mark_done\" only",
            ));
        }
        if let Database::Mysql(mysql) = &self.source.database {
            positive(
                "source.prune_keys_interval_ms",
                mysql.prune_keys_interval_ms,
            )?;
        }
        positive("source.cleanup_interval_ms", source.cleanup_interval_ms)?;
        if source.max_connections < 2 {
            return Err(ConfigError::new(
                "source.max_connections",
                "must be at least 2 (claims and reports overlap)",
            ));
        }
        self.validate_destination()?;
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "http.listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:9187",
                    self.http.listen
                ),
            ));
        }
        if self.log.format != "text" && self.log.format != "json" {
            return Err(ConfigError::new(
                "log.format",
                format!("must be \"text\" or \"json\", got {:?}", self.log.format),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new(
                "log.level",
                format!(
                    "{:?} is not a tracing filter such as \"info\" or \"outbox_core=debug,info\"",
                    self.log.level
                ),
            ));
        }
        let needed = self.connections_needed();
        if !matches!(self.source.database, Database::Sqlite(_)) && source.max_connections < needed {
            return Err(ConfigError::new(
                "source.max_connections",
                format!(
                    "{} is too few: this relay holds up to {needed} connections at once (a \
                     transaction per open batch, the backlog count, and the LISTEN, leader, \
                     cleanup and key pruning connections its settings ask for)",
                    source.max_connections
                ),
            ));
        }
        self.relay
            .validate_with_lease(self.source.lease())
            .map_err(|err| ConfigError::new(format!("relay.{}", err.setting), err.reason))
    }

    fn validate_destination(&self) -> Result<(), ConfigError> {
        let destination = &self.destination;
        let required = |setting: &str, value: &str| match value.trim().is_empty() {
            true => Err(ConfigError::new(
                format!("destination.{setting}"),
                "is required",
            )),
            false => Ok(()),
        };
        match destination {
            DestinationSettings::Kafka(kafka) => {
                required("brokers", &kafka.brokers)?;
                for (name, value) in &kafka.properties {
                    property_value(name, value)?;
                }
            }
            DestinationSettings::Amqp(amqp) => {
                required("url", &amqp.url)?;
                client_pair(amqp.client_certificate.is_some(), amqp.client_key.is_some())?;
            }
            DestinationSettings::Nats(nats) => {
                required("url", &nats.url)?;
                client_pair(nats.client_certificate.is_some(), nats.client_key.is_some())?;
                let ways = [
                    nats.token.is_some(),
                    nats.nkey.is_some(),
                    nats.credentials_file.is_some(),
                ];
                if ways.iter().filter(|set| **set).count() > 1 {
                    return Err(ConfigError::new(
                        "destination.token",
                        "token, nkey and credentials_file are three ways to authenticate: set one",
                    ));
                }
            }
        }
        if let Some(cloud_events) = destination.cloud_events() {
            cloud_events.validate().map_err(|err| {
                ConfigError::new(format!("destination.{}", err.setting), err.reason)
            })?;
        }
        for (setting, path) in destination.files() {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(ConfigError::new(
                        format!("destination.{setting}"),
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        if let Some(timeout) = destination.timeout() {
            if timeout >= self.relay.send_timeout {
                return Err(ConfigError::new(
                    "destination.timeout_ms",
                    format!(
                        "must be shorter than relay.send_timeout ({:?}), got {timeout:?}: the \
                         relay would give up on a send before the broker's own deadline",
                        self.relay.send_timeout
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The most database connections the relay holds at once: one per open
    /// batch (two with prefetch; a PostgreSQL or MySQL batch is an open
    /// transaction), the backlog count, and the LISTEN (PostgreSQL with
    /// notify), leader (leader_only), cleanup (mark_done) and key pruning
    /// (MySQL) connections.
    fn connections_needed(&self) -> u32 {
        let batches = if self.relay.prefetch { 2 } else { 1 };
        let (listen, prune) = match &self.source.database {
            Database::Postgres(postgres) => (u32::from(postgres.notify), 0),
            // Its replication connection is its own, outside the pool.
            Database::PostgresWal(_) => (0, 0),
            Database::Mysql(_) => (0, 1),
            Database::Sqlite(_) => (0, 0),
        };
        let leader = u32::from(self.source.leader_only());
        let cleanup = u32::from(self.source.shared.ack == AckMode::MarkDone);
        batches + 1 + listen + leader + cleanup + prune
    }
}

fn positive(setting: &str, value: u64) -> Result<(), ConfigError> {
    match value {
        0 => Err(ConfigError::new(setting, "must be greater than zero")),
        _ => Ok(()),
    }
}

fn client_pair(certificate: bool, key: bool) -> Result<(), ConfigError> {
    ConfigError::check_pair(
        ("destination.client_certificate", certificate),
        ("destination.client_key", key),
    )
}

/// A Kafka property as the string librdkafka takes.
pub fn property_value(name: &str, value: &toml::Value) -> Result<String, ConfigError> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(ConfigError::new(
            format!("destination.properties.{name}"),
            "must be a string, number or boolean",
        )),
    }
}
