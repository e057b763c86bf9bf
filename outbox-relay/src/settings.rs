//! The relay's configuration file, as read, and its checks.
//!
//! Durations are whole milliseconds, as in `outbox_core::RelayConfig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use outbox_core::{ConfigError, OnDeadLetter, RelayConfig};
use serde::Deserialize;

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

/// Which database holds the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `outbox-postgres`.
    Postgres,
    /// `outbox-mysql` (MySQL 8, MariaDB 10.6+).
    Mysql,
    /// `outbox-sqlite`.
    Sqlite,
}

/// What acknowledging does to a delivered row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ack {
    /// Delete it.
    #[default]
    Delete,
    /// Mark it done; rows older than `retention_ms` are cleaned up.
    MarkDone,
}

/// The `[source]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// `postgres`, `mysql` or `sqlite`.
    pub kind: SourceKind,
    /// Connection URL (`postgres://…`, `mysql://…`, `sqlite://path`).
    #[serde(default)]
    pub url: String,
    /// PostgreSQL schema. Default `public`.
    pub schema: Option<String>,
    /// Outbox table. Default `outbox_messages`.
    #[serde(default = "default_table")]
    pub table: String,
    /// Claim lease. Default 30,000 ms.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// `delete` (default) or `mark_done`.
    #[serde(default)]
    pub ack: Ack,
    /// With `mark_done`: delete done rows older than this. Default 7 days.
    pub retention_ms: Option<u64>,
    /// With `mark_done`: how often to clean up. Default 60,000 ms.
    #[serde(default = "default_cleanup_interval_ms")]
    pub cleanup_interval_ms: u64,
    /// `continue` (default) or `park` later messages of a dead-lettered key.
    #[serde(default)]
    pub on_dead_letter: OnDeadLetter,
    /// PostgreSQL: LISTEN for writers' NOTIFY. Default true.
    #[serde(default = "yes")]
    pub notify: bool,
    /// PostgreSQL, MySQL: one relay claims, the others stand by. Default false.
    #[serde(default)]
    pub leader_only: bool,
    /// MySQL: how often to prune `<table>_keys` of keys with no message
    /// left. Default 600,000 ms (10 minutes).
    pub prune_keys_interval_ms: Option<u64>,
    /// Most payload bytes one claim hands out; a row larger than this is
    /// delivered alone. Default 16 MiB.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// Pool size. Default 8.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Create or update the outbox table at start-up. Default false.
    #[serde(default)]
    pub migrate: bool,
}

/// Which broker receives the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// `outbox-kafka`.
    Kafka,
    /// `outbox-amqp` (RabbitMQ).
    Amqp,
    /// `outbox-nats`, JetStream or core.
    Nats,
}

/// The `[destination]` table. Its `Debug` hides every secret: the URL's
/// credentials, the values of Kafka properties, the NATS token and nkey.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSettings {
    /// `kafka`, `amqp` or `nats`.
    pub kind: DestinationKind,
    /// AMQP or NATS server URL.
    pub url: Option<String>,
    /// Kafka bootstrap servers.
    pub brokers: Option<String>,
    /// Kafka producer properties, passed to librdkafka as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, toml::Value>,
    /// NATS: `jetstream` (default) or `core`.
    pub mode: Option<String>,
    /// NATS: put before every destination to make the subject.
    pub subject_prefix: Option<String>,
    /// NATS and AMQP: a PEM file of CA certificates to trust besides the
    /// system's (a private CA). NATS then requires TLS; AMQP needs an
    /// `amqps://` URL.
    pub root_certificates: Option<std::path::PathBuf>,
    /// NATS and AMQP, for mutual TLS: a PEM file with the relay's client
    /// certificate. Needs `client_key`; NATS then requires TLS, AMQP needs
    /// an `amqps://` URL. (Kafka: the `ssl.certificate.location` and
    /// `ssl.key.location` properties.)
    pub client_certificate: Option<std::path::PathBuf>,
    /// NATS and AMQP: the PEM file of `client_certificate`'s private key.
    pub client_key: Option<std::path::PathBuf>,
    /// Kafka delivery timeout, NATS JetStream ack timeout, in ms.
    pub timeout_ms: Option<u64>,
    /// NATS: a token to authenticate with (instead of one in the URL).
    pub token: Option<String>,
    /// NATS: an nkey seed (`SU...`) to authenticate with.
    pub nkey: Option<String>,
    /// NATS: a `.creds` file (a user JWT and its nkey seed).
    pub credentials_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for DestinationSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |set: bool| if set { Some("***") } else { None };
        f.debug_struct("DestinationSettings")
            .field("kind", &self.kind)
            .field("url", &self.url.as_deref().map(outbox_core::redact_url))
            .field("brokers", &self.brokers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("mode", &self.mode)
            .field("subject_prefix", &self.subject_prefix)
            .field("root_certificates", &self.root_certificates)
            .field("client_certificate", &self.client_certificate)
            .field("client_key", &self.client_key)
            .field("timeout_ms", &self.timeout_ms)
            .field("token", &hidden(self.token.is_some()))
            .field("nkey", &hidden(self.nkey.is_some()))
            .field("credentials_file", &self.credentials_file)
            .finish()
    }
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

fn default_table() -> String {
    "outbox_messages".into()
}
fn default_lease_ms() -> u64 {
    30_000
}
fn default_cleanup_interval_ms() -> u64 {
    60_000
}
fn default_batch_bytes() -> usize {
    outbox_core::DEFAULT_BATCH_BYTES
}

fn default_max_connections() -> u32 {
    8
}
fn yes() -> bool {
    true
}

impl Settings {
    /// Checks what serde cannot: settings that only fit some kinds, ranges,
    /// and the core relay's own rules. The error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let source = &self.source;
        if source.url.trim().is_empty() {
            return Err(ConfigError::new("source.url", "is required"));
        }
        if source.schema.is_some() && source.kind != SourceKind::Postgres {
            return Err(ConfigError::new(
                "source.schema",
                "applies to postgres only",
            ));
        }
        if source.leader_only && source.kind == SourceKind::Sqlite {
            return Err(ConfigError::new(
                "source.leader_only",
                "applies to postgres and mysql only",
            ));
        }
        if source.retention_ms.is_some() && source.ack != Ack::MarkDone {
            return Err(ConfigError::new(
                "source.retention_ms",
                "applies with ack = \"mark_done\" only",
            ));
        }
        match source.prune_keys_interval_ms {
            Some(_) if source.kind != SourceKind::Mysql => {
                return Err(ConfigError::new(
                    "source.prune_keys_interval_ms",
                    "applies to mysql only",
                ));
            }
            Some(0) => {
                return Err(ConfigError::new(
                    "source.prune_keys_interval_ms",
                    "must be greater than zero",
                ));
            }
            _ => {}
        }
        if source.cleanup_interval_ms == 0 {
            return Err(ConfigError::new(
                "source.cleanup_interval_ms",
                "must be greater than zero",
            ));
        }
        if source.max_connections < 2 {
            return Err(ConfigError::new(
                "source.max_connections",
                "must be at least 2 (claims and reports overlap)",
            ));
        }
        let destination = &self.destination;
        let needs = |setting: &str, value: &Option<String>| match value {
            Some(v) if !v.trim().is_empty() => Ok(()),
            _ => Err(ConfigError::new(
                format!("destination.{setting}"),
                format!("is required for kind = \"{:?}\"", destination.kind).to_lowercase(),
            )),
        };
        let refuses = |setting: &str, set: bool| match set {
            true => Err(ConfigError::new(
                format!("destination.{setting}"),
                format!("does not apply to kind = \"{:?}\"", destination.kind).to_lowercase(),
            )),
            false => Ok(()),
        };
        match destination.kind {
            DestinationKind::Kafka => {
                needs("brokers", &destination.brokers)?;
                refuses("url", destination.url.is_some())?;
            }
            DestinationKind::Amqp | DestinationKind::Nats => {
                needs("url", &destination.url)?;
                refuses("brokers", destination.brokers.is_some())?;
                refuses("properties", !destination.properties.is_empty())?;
            }
        }
        if destination.kind != DestinationKind::Nats {
            refuses("mode", destination.mode.is_some())?;
            refuses("subject_prefix", destination.subject_prefix.is_some())?;
        }
        if destination.kind == DestinationKind::Kafka {
            refuses("root_certificates", destination.root_certificates.is_some())?;
            refuses(
                "client_certificate",
                destination.client_certificate.is_some(),
            )?;
            refuses("client_key", destination.client_key.is_some())?;
        }
        ConfigError::check_pair(
            (
                "destination.client_certificate",
                destination.client_certificate.is_some(),
            ),
            ("destination.client_key", destination.client_key.is_some()),
        )?;
        if destination.kind != DestinationKind::Nats {
            refuses("token", destination.token.is_some())?;
            refuses("nkey", destination.nkey.is_some())?;
            refuses("credentials_file", destination.credentials_file.is_some())?;
        }
        let ways = [
            destination.token.is_some(),
            destination.nkey.is_some(),
            destination.credentials_file.is_some(),
        ];
        if ways.iter().filter(|set| **set).count() > 1 {
            return Err(ConfigError::new(
                "destination.token",
                "token, nkey and credentials_file are three ways to authenticate: set one",
            ));
        }
        if let Some(path) = &destination.credentials_file {
            if !path.is_file() {
                return Err(ConfigError::new(
                    "destination.credentials_file",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        for (setting, path) in [
            ("root_certificates", &destination.root_certificates),
            ("client_certificate", &destination.client_certificate),
            ("client_key", &destination.client_key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(ConfigError::new(
                        format!("destination.{setting}"),
                        format!("{} is not a readable file", path.display()),
                    ));
                }
            }
        }
        if let Some(mode) = &destination.mode {
            if mode != "jetstream" && mode != "core" {
                return Err(ConfigError::new(
                    "destination.mode",
                    format!("must be \"jetstream\" or \"core\", got {mode:?}"),
                ));
            }
        }
        if destination.kind == DestinationKind::Amqp && destination.timeout_ms.is_some() {
            refuses("timeout_ms", true)?;
        }
        if let Some(timeout_ms) = destination.timeout_ms {
            let timeout = std::time::Duration::from_millis(timeout_ms);
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
        for (name, value) in &destination.properties {
            property_value(name, value)?;
        }
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
        if source.kind != SourceKind::Sqlite && source.max_connections < needed {
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
        let lease = std::time::Duration::from_millis(source.lease_ms);
        self.relay
            .validate_with_lease(lease)
            .map_err(|err| ConfigError::new(format!("relay.{}", err.setting), err.reason))
    }
}

impl Settings {
    /// The most database connections the relay holds at once: one per open
    /// batch (two with prefetch; a PostgreSQL or MySQL batch is an open
    /// transaction), the backlog count, and the LISTEN (PostgreSQL with
    /// notify), leader (leader_only), cleanup (mark_done) and key pruning
    /// (MySQL) connections.
    fn connections_needed(&self) -> u32 {
        let source = &self.source;
        let batches = if self.relay.prefetch { 2 } else { 1 };
        let listen = u32::from(source.kind == SourceKind::Postgres && source.notify);
        let leader = u32::from(source.leader_only);
        let cleanup = u32::from(source.ack == Ack::MarkDone);
        let prune = u32::from(source.kind == SourceKind::Mysql);
        batches + 1 + listen + leader + cleanup + prune
    }
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
