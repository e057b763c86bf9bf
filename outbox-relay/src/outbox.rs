//! The configured database: its outbox handle and pool, making relay
//! sources and answering operator commands whatever the kind.

use std::time::Duration;

use outbox_core::{Backlog, BoxSource, ConfigError, DeadLetter, Error, Message, Source};
use uuid::Uuid;

use crate::settings::{Database, SharedSourceSettings, SourceSettings};

/// One outbox table on one database.
pub enum Outbox {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(outbox_postgres::PostgresOutbox, sqlx::PgPool),
    /// MySQL or MariaDB.
    #[cfg(feature = "mysql")]
    Mysql(outbox_mysql::MysqlOutbox, sqlx::MySqlPool),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(outbox_sqlite::SqliteOutbox, sqlx::SqlitePool),
}

/// Runs `$body` with `$outbox` and `$pool` bound, whatever the kind.
macro_rules! each {
    ($self:expr, |$outbox:ident, $pool:ident| $body:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            Outbox::Postgres($outbox, $pool) => $body,
            #[cfg(feature = "mysql")]
            Outbox::Mysql($outbox, $pool) => $body,
            #[cfg(feature = "sqlite")]
            Outbox::Sqlite($outbox, $pool) => $body,
        }
    };
}

fn not_compiled(kind: &str) -> ConfigError {
    ConfigError::new(
        "source.kind",
        format!("{kind:?} is not compiled into this outbox-relay: build it with that feature"),
    )
}

/// sqlx's complaint about a URL, which does not repeat the URL.
fn bad_url(err: sqlx::Error) -> ConfigError {
    ConfigError::new("source.url", err.to_string())
}

impl Outbox {
    /// The outbox `settings` name, checked, with a pool that connects on
    /// first use (so a database that is down is retried by the relay, while
    /// a bad setting fails here).
    pub fn new(settings: &SourceSettings) -> Result<Self, ConfigError> {
        let shared = &settings.shared;
        let lease = settings.lease();
        match &settings.database {
            #[cfg(feature = "postgres")]
            Database::Postgres(postgres) => {
                use outbox_postgres::{PostgresConfig, PostgresOutbox};
                let outbox = PostgresOutbox::new(PostgresConfig {
                    schema: postgres.schema.clone(),
                    table: shared.table.clone(),
                    lease,
                    ack_mode: shared.ack,
                    on_dead_letter: shared.on_dead_letter,
                    notify: postgres.notify,
                    leader_only: postgres.leader_only,
                    batch_bytes: shared.batch_bytes,
                })
                .map_err(prefix)?;
                let pool = pool_options(shared)
                    .connect_lazy(&shared.url)
                    .map_err(bad_url)?;
                Ok(Outbox::Postgres(outbox, pool))
            }
            #[cfg(feature = "mysql")]
            Database::Mysql(mysql) => {
                use outbox_mysql::{MysqlConfig, MysqlOutbox};
                let outbox = MysqlOutbox::new(MysqlConfig {
                    table: shared.table.clone(),
                    lease,
                    ack_mode: shared.ack,
                    on_dead_letter: shared.on_dead_letter,
                    leader_only: mysql.leader_only,
                    batch_bytes: shared.batch_bytes,
                })
                .map_err(prefix)?;
                let pool = pool_options(shared)
                    .connect_lazy(&shared.url)
                    .map_err(bad_url)?;
                Ok(Outbox::Mysql(outbox, pool))
            }
            #[cfg(feature = "sqlite")]
            Database::Sqlite(_) => {
                use outbox_sqlite::{SqliteConfig, SqliteOutbox};
                let outbox = SqliteOutbox::new(SqliteConfig {
                    table: shared.table.clone(),
                    lease,
                    ack_mode: shared.ack,
                    on_dead_letter: shared.on_dead_letter,
                    batch_bytes: shared.batch_bytes,
                })
                .map_err(prefix)?;
                let options = outbox_sqlite::connect_options(&shared.url)
                    .map_err(|err| ConfigError::new("source.url", err.report()))?;
                let pool = pool_options(shared).connect_lazy_with(options);
                Ok(Outbox::Sqlite(outbox, pool))
            }
            #[allow(unreachable_patterns)]
            _ => Err(not_compiled(settings.kind())),
        }
    }

    /// A relay's source on this outbox, behind one type whatever the
    /// database; PostgreSQL's connects its LISTEN first.
    pub async fn source(&self) -> Result<BoxSource<Message>, Error> {
        Ok(match self {
            #[cfg(feature = "postgres")]
            Outbox::Postgres(outbox, pool) => outbox.source(pool.clone()).await?.boxed(),
            #[cfg(feature = "mysql")]
            Outbox::Mysql(outbox, pool) => outbox.source(pool.clone()).boxed(),
            #[cfg(feature = "sqlite")]
            Outbox::Sqlite(outbox, pool) => outbox.source(pool.clone()).boxed(),
        })
    }

    /// Creates or updates the outbox table.
    pub async fn migrate(&self) -> Result<(), Error> {
        each!(self, |outbox, pool| outbox.migrate(pool).await)
    }

    /// Waiting messages, oldest age, dead letters.
    pub async fn backlog(&self) -> Result<Backlog, Error> {
        each!(self, |outbox, pool| outbox.backlog(pool).await)
    }

    /// The oldest `limit` dead letters.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, Error> {
        each!(self, |outbox, pool| outbox.dead_letters(pool, limit).await)
    }

    /// How many dead letters wait.
    pub async fn count_dead_letters(&self) -> Result<u64, Error> {
        each!(self, |outbox, pool| outbox.count_dead_letters(pool).await)
    }

    /// Requeues these dead letters; returns how many.
    pub async fn requeue(&self, ids: &[Uuid]) -> Result<u64, Error> {
        each!(self, |outbox, pool| outbox.requeue(pool, ids).await)
    }

    /// Requeues every dead letter; returns how many.
    pub async fn requeue_all(&self) -> Result<u64, Error> {
        each!(self, |outbox, pool| outbox.requeue_all(pool).await)
    }

    /// Deletes done rows older than `older_than`; returns how many.
    pub async fn cleanup(&self, older_than: Duration) -> Result<u64, Error> {
        each!(self, |outbox, pool| outbox
            .cleanup(pool, older_than, 1000)
            .await)
    }
}

impl Outbox {
    /// MySQL: deletes the `<table>_keys` rows of keys with no message left;
    /// returns how many. Nothing to do on the other databases.
    pub async fn prune_keys(&self) -> Result<u64, Error> {
        match self {
            #[cfg(feature = "mysql")]
            Outbox::Mysql(outbox, pool) => outbox.prune_keys(pool, 1000).await,
            #[allow(unreachable_patterns)]
            _ => Ok(0),
        }
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
