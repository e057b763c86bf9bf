//! The `[source]` table: the settings every database takes, and under
//! `kind` those of one database only, so a setting in the wrong place is
//! refused by name when the file is read.

use std::time::Duration;

use outbox_core::{redact_url, OnDeadLetter};
use outbox_sql::AckMode;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The `[source]` table.
#[derive(Debug)]
pub struct SourceSettings {
    /// Settings every database takes.
    pub shared: SharedSourceSettings,
    /// `kind` and the settings of that database only.
    pub database: Database,
}

/// The `[source]` settings every database takes. Its `Debug` shows the URL
/// with its credentials replaced by `***`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedSourceSettings {
    /// Connection URL (`postgres://…`, `mysql://…`, `sqlite://path`).
    #[serde(default)]
    pub url: String,
    /// Outbox table. Default `outbox_messages`.
    #[serde(default = "default_table")]
    pub table: String,
    /// Claim lease. Default 30,000 ms.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// `delete` (default) or `mark_done`.
    #[serde(default)]
    pub ack: AckMode,
    /// With `mark_done`: delete done rows older than this. Default 7 days.
    pub retention_ms: Option<u64>,
    /// With `mark_done`: how often to clean up. Default 60,000 ms.
    #[serde(default = "default_cleanup_interval_ms")]
    pub cleanup_interval_ms: u64,
    /// `continue` (default) or `park` later messages of a dead-lettered key.
    #[serde(default)]
    pub on_dead_letter: OnDeadLetter,
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

/// The names of [`SharedSourceSettings`]' fields, which the `[source]`
/// table's reader hands to it; the rest goes to [`Database`].
const SHARED: &[&str] = &[
    "url",
    "table",
    "lease_ms",
    "ack",
    "retention_ms",
    "cleanup_interval_ms",
    "on_dead_letter",
    "batch_bytes",
    "max_connections",
    "migrate",
];

/// Which database holds the outbox, with the settings only it takes.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Database {
    /// `outbox-postgres`.
    Postgres(PostgresSettings),
    /// `outbox-postgres`'s WAL outbox: the log read through a replication
    /// slot; `table` is read only with `read_table`, `ack` must stay
    /// `delete`. Read only in a
    /// build with `postgres-wal`; without it the kind is refused by name.
    #[cfg_attr(not(feature = "postgres-wal"), allow(dead_code))]
    PostgresWal(PostgresWalSettings),
    /// `outbox-mysql` (MySQL 8, MariaDB 10.6+).
    Mysql(MysqlSettings),
    /// `outbox-sqlite`.
    Sqlite(SqliteSettings),
}

/// `kind = "postgres"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub struct PostgresSettings {
    /// The schema of the outbox table. Default `public`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// LISTEN for writers' NOTIFY. Default true.
    #[serde(default = "yes")]
    pub notify: bool,
    /// One relay claims, the others stand by. Default false.
    #[serde(default)]
    pub leader_only: bool,
    /// Lanes of keys: each claim takes one lane's rows (about four lanes
    /// per relay; the same count as `migrate` was run with). Default 1, no
    /// lanes.
    #[serde(default = "one_lane")]
    pub lanes: u16,
}

fn one_lane() -> u16 {
    1
}

/// `kind = "postgres_wal"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "postgres-wal"), allow(dead_code))]
pub struct PostgresWalSettings {
    /// The prefix writers give `pg_logical_emit_message`. Default `outbox`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The replication slot. Default `outbox_slot`.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// The publication. Default `outbox_publication`.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// The schema of the failures table. Default `public`.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The failures table. Default `outbox_wal_failures`.
    #[serde(default = "default_failures_table")]
    pub failures_table: String,
    /// The table mode: also read the rows inserted into `table` (in
    /// `schema`) from the log, and delete them once read. Default false:
    /// only messages written with `pg_logical_emit_message`.
    #[serde(default)]
    pub read_table: bool,
    /// Most messages read and not yet settled held in memory. Default 10,000.
    #[serde(default = "default_max_held")]
    pub max_held: usize,
    /// Log bytes the slot may fall behind before `/healthz` reports
    /// unhealthy; 0 never. Default 1 GiB (1073741824).
    #[serde(default = "default_max_lag_bytes")]
    pub max_lag_bytes: u64,
}

/// `kind = "mysql"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSettings {
    /// One relay claims, the others stand by. Default false.
    #[serde(default)]
    pub leader_only: bool,
    /// How often to prune `<table>_keys` of keys with no message left.
    /// Default 600,000 ms (10 minutes).
    #[serde(default = "default_prune_keys_interval_ms")]
    pub prune_keys_interval_ms: u64,
}

/// `kind = "sqlite"`: nothing of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteSettings {}

impl std::fmt::Debug for SharedSourceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSourceSettings")
            .field("url", &redact_url(&self.url))
            .field("table", &self.table)
            .field("lease_ms", &self.lease_ms)
            .field("ack", &self.ack)
            .field("retention_ms", &self.retention_ms)
            .field("cleanup_interval_ms", &self.cleanup_interval_ms)
            .field("on_dead_letter", &self.on_dead_letter)
            .field("batch_bytes", &self.batch_bytes)
            .field("max_connections", &self.max_connections)
            .field("migrate", &self.migrate)
            .finish()
    }
}

impl<'de> Deserialize<'de> for SourceSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut own = toml::Table::deserialize(deserializer)?;
        let mut shared = toml::Table::new();
        for name in SHARED {
            if let Some(value) = own.remove(*name) {
                shared.insert((*name).to_string(), value);
            }
        }
        let shared = SharedSourceSettings::deserialize(toml::Value::Table(shared))
            .map_err(|err| D::Error::custom(err.message()))?;
        let kind = own
            .get("kind")
            .and_then(toml::Value::as_str)
            .map(str::to_owned);
        let database = Database::deserialize(toml::Value::Table(own)).map_err(|err| {
            let message = err.message();
            match &kind {
                // serde lists only the kind's own settings: say so.
                Some(kind) if message.starts_with("unknown field") => D::Error::custom(format!(
                    "{message} (the settings of kind = \"{kind}\" besides {})",
                    SHARED.join(", ")
                )),
                _ => D::Error::custom(message),
            }
        })?;
        Ok(Self { shared, database })
    }
}

impl SourceSettings {
    /// The database's name, as `kind` spells it.
    pub fn kind(&self) -> &'static str {
        match self.database {
            Database::Postgres(_) => "postgres",
            Database::PostgresWal(_) => "postgres_wal",
            Database::Mysql(_) => "mysql",
            Database::Sqlite(_) => "sqlite",
        }
    }

    /// The URL as a log line may show it: a SQLite path holds no
    /// credentials, anything else is shown redacted.
    pub fn address(&self) -> String {
        match self.database {
            Database::Sqlite(_) => self.shared.url.clone(),
            _ => redact_url(&self.shared.url),
        }
    }

    /// The claim lease.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.shared.lease_ms)
    }

    /// Whether a relay elects a leader (PostgreSQL, MySQL).
    pub fn leader_only(&self) -> bool {
        match &self.database {
            Database::Postgres(postgres) => postgres.leader_only,
            Database::Mysql(mysql) => mysql.leader_only,
            Database::PostgresWal(_) | Database::Sqlite(_) => false,
        }
    }
}

fn default_table() -> String {
    "outbox_messages".into()
}
fn default_schema() -> String {
    "public".into()
}
fn default_prefix() -> String {
    "outbox".into()
}
fn default_slot() -> String {
    "outbox_slot".into()
}
fn default_publication() -> String {
    "outbox_publication".into()
}
fn default_failures_table() -> String {
    "outbox_wal_failures".into()
}
fn default_max_lag_bytes() -> u64 {
    1 << 30
}

fn default_max_held() -> usize {
    10_000
}
fn default_lease_ms() -> u64 {
    30_000
}
fn default_cleanup_interval_ms() -> u64 {
    60_000
}
fn default_prune_keys_interval_ms() -> u64 {
    600_000
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

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Result<SourceSettings, String> {
        toml::from_str::<SourceSettings>(text).map_err(|err| err.message().to_string())
    }

    #[test]
    fn every_shared_name_is_a_shared_setting() {
        // A name missing from SHARED would reach `Database` and be refused.
        let all: String = SHARED
            .iter()
            .map(|name| match *name {
                "url" | "table" => format!("{name} = \"x\"\n"),
                "ack" => "ack = \"mark_done\"\n".to_string(),
                "on_dead_letter" => "on_dead_letter = \"park\"\n".to_string(),
                "migrate" => "migrate = true\n".to_string(),
                _ => format!("{name} = 5\n"),
            })
            .collect();
        let settings = source(&format!("kind = \"sqlite\"\n{all}")).unwrap();
        assert_eq!(settings.shared.max_connections, 5);
        assert!(settings.shared.migrate);
    }

    #[test]
    fn a_setting_of_another_database_is_refused_by_name() {
        let err = source("kind = \"mysql\"\nurl = \"mysql://h/db\"\nschema = \"s\"").unwrap_err();
        assert!(err.contains("unknown field `schema`"), "{err}");
        assert!(err.contains("kind = \"mysql\""), "{err}");
        let err = source("kind = \"sqlite\"\nleader_only = true").unwrap_err();
        assert!(err.contains("unknown field `leader_only`"), "{err}");
        let err = source("kind = \"postgres\"\nprune_keys_interval_ms = 5").unwrap_err();
        assert!(
            err.contains("unknown field `prune_keys_interval_ms`"),
            "{err}"
        );
        let err = source("kind = \"oracle\"").unwrap_err();
        assert!(err.contains("oracle"), "{err}");
    }

    #[test]
    fn debug_shows_no_password() {
        let settings = source("kind = \"mysql\"\nurl = \"mysql://app:hunter2@db/app\"").unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn each_database_gets_its_own_defaults() {
        let Database::Postgres(postgres) = source("kind = \"postgres\"").unwrap().database else {
            panic!("postgres");
        };
        assert_eq!(postgres.schema, "public");
        assert!(postgres.notify);
        let Database::Mysql(mysql) = source("kind = \"mysql\"").unwrap().database else {
            panic!("mysql");
        };
        assert_eq!(mysql.prune_keys_interval_ms, 600_000);
    }
}
