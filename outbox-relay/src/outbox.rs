//! The configured database: its outbox handle and pool, behind
//! `outbox_sql::Operator`, which makes relay sources and answers operator
//! commands whatever the kind.

// A build with no database feature refuses every kind by name; the
// helpers the databases share are then unused.
#![cfg_attr(
    not(any(
        feature = "postgres",
        feature = "postgres-wal",
        feature = "mysql",
        feature = "sqlite"
    )),
    allow(unused)
)]

use std::time::Duration;

use outbox_core::ConfigError;
use outbox_sql::Operator;

use crate::settings::{Database, SharedSourceSettings, SourceSettings};

fn not_compiled(kind: &str) -> ConfigError {
    ConfigError::new(
        "source.kind",
        format!("{kind:?} is not compiled into this outbox-relay: build it with that feature"),
    )
}

/// sqlx's complaint about a URL, which does not repeat the URL.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn bad_url(err: sqlx::Error) -> ConfigError {
    ConfigError::new("source.url", err.to_string())
}

/// The outbox `settings` name, checked, with a pool that connects on first
/// use (so a database that is down is retried by the relay, while a bad
/// setting fails here): operator calls and relay sources, whatever the
/// database.
pub fn open(settings: &SourceSettings) -> Result<Box<dyn Operator>, ConfigError> {
    let shared = &settings.shared;
    let lease = settings.lease();
    match &settings.database {
        #[cfg(feature = "postgres")]
        Database::Postgres(postgres) => {
            use outbox_postgres::{PostgresConfig, PostgresOutbox};
            let pool = pool_options(shared)
                .connect_lazy(&shared.url)
                .map_err(bad_url)?;
            let config = PostgresConfig {
                schema: postgres.schema.clone(),
                table: shared.table.clone(),
                lease,
                ack_mode: shared.ack,
                on_dead_letter: shared.on_dead_letter,
                notify: postgres.notify,
                leader_only: postgres.leader_only,
                batch_bytes: shared.batch_bytes,
                lanes: postgres.lanes,
            };
            Ok(Box::new(PostgresOutbox::new(config, pool).map_err(prefix)?))
        }
        #[cfg(feature = "postgres-wal")]
        Database::PostgresWal(wal) => {
            use outbox_postgres::{WalConfig, WalOutbox};
            if shared.ack != outbox_sql::AckMode::Delete {
                return Err(ConfigError::new(
                    "source.ack",
                    "the WAL outbox keeps no delivered messages to mark: leave ack = \"delete\"",
                ));
            }
            let pool = pool_options(shared)
                .connect_lazy(&shared.url)
                .map_err(bad_url)?;
            let config = WalConfig {
                url: shared.url.clone(),
                prefix: wal.prefix.clone(),
                slot: wal.slot.clone(),
                publication: wal.publication.clone(),
                schema: wal.schema.clone(),
                table: wal.read_table.then(|| shared.table.clone()),
                failures_table: wal.failures_table.clone(),
                lease,
                on_dead_letter: shared.on_dead_letter,
                batch_bytes: shared.batch_bytes,
                max_held: wal.max_held,
                max_lag_bytes: (wal.max_lag_bytes > 0).then_some(wal.max_lag_bytes),
            };
            Ok(Box::new(WalOutbox::new(config, pool).map_err(prefix)?))
        }
        #[cfg(feature = "mysql")]
        Database::Mysql(mysql) => {
            use outbox_mysql::{MysqlConfig, MysqlOutbox};
            let pool = pool_options(shared)
                .connect_lazy(&shared.url)
                .map_err(bad_url)?;
            let config = MysqlConfig {
                table: shared.table.clone(),
                lease,
                ack_mode: shared.ack,
                on_dead_letter: shared.on_dead_letter,
                leader_only: mysql.leader_only,
                batch_bytes: shared.batch_bytes,
            };
            Ok(Box::new(MysqlOutbox::new(config, pool).map_err(prefix)?))
        }
        #[cfg(feature = "sqlite")]
        Database::Sqlite(_) => {
            use outbox_sqlite::{SqliteConfig, SqliteOutbox};
            let options = outbox_sqlite::connect_options(&shared.url)
                .map_err(|err| ConfigError::new("source.url", err.report()))?;
            let pool = pool_options(shared).connect_lazy_with(options);
            let config = SqliteConfig {
                table: shared.table.clone(),
                lease,
                ack_mode: shared.ack,
                on_dead_letter: shared.on_dead_letter,
                batch_bytes: shared.batch_bytes,
            };
            Ok(Box::new(SqliteOutbox::new(config, pool).map_err(prefix)?))
        }
        #[allow(unreachable_patterns)]
        _ => Err(not_compiled(settings.kind())),
    }
}

fn pool_options<DB: sqlx::Database>(
    settings: &SharedSourceSettings,
) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

/// A source crate's setting named as it is in the file.
fn prefix(err: ConfigError) -> ConfigError {
    ConfigError::new(format!("source.{}", err.setting), err.reason)
}
