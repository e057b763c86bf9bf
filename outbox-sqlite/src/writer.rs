//! The outbox handle: schema, writing inside the caller's transaction, and
//! making relays.

use std::sync::Arc;

use outbox_core::{ConfigError, Error, Event, Message, Metadata};
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::Notify;

use crate::error::classify;
use crate::schema::script;
use crate::sql::{now_us, Statements};
use crate::{SqliteConfig, SqliteSource};

/// Rows per INSERT: SQLite allows 32,766 bound values, 9 per row.
const ROWS_PER_INSERT: usize = 1000;

/// One outbox table on one pool: writes messages in your transactions, runs
/// migrations, makes relay sources and answers operators. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteOutbox {
    pub(crate) config: Arc<SqliteConfig>,
    pub(crate) pool: SqlitePool,
    pub(crate) sql: Arc<Statements>,
    pub(crate) committed: Arc<Notify>,
}

impl SqliteOutbox {
    /// Checks `config` (naming a bad setting) and prepares the statements;
    /// operator calls, migrations and relay sources use `pool`.
    pub fn new(config: SqliteConfig, pool: SqlitePool) -> Result<Self, ConfigError> {
        config.validate()?;
        let sql = Statements::new(&config);
        Ok(Self {
            config: Arc::new(config),
            pool,
            sql: Arc::new(sql),
            committed: Arc::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SqliteConfig {
        &self.config
    }

    /// The pool operator calls and relay sources use.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The schema as plain SQL for the configured name.
    pub fn schema_sql(&self) -> String {
        script(&self.config)
    }

    /// Creates the table and its indexes if needed (idempotent).
    pub async fn migrate(&self) -> Result<(), Error> {
        sqlx::raw_sql(&script(&self.config))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Writes one message on `conn`, which should be your open transaction
    /// (`&mut *tx`): it commits or rolls back with your business rows.
    pub async fn enqueue(
        &self,
        conn: &mut SqliteConnection,
        message: &Message,
    ) -> Result<(), Error> {
        self.enqueue_many(conn, std::slice::from_ref(message)).await
    }

    /// Writes many messages, in this order. SQLite runs one write
    /// transaction at a time, so enqueue order is commit order for every key.
    pub async fn enqueue_many(
        &self,
        conn: &mut SqliteConnection,
        messages: &[Message],
    ) -> Result<(), Error> {
        for message in messages {
            message.validate()?;
        }
        let now = now_us();
        for chunk in messages.chunks(ROWS_PER_INSERT) {
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!("{}{values}", self.sql.enqueue_prefix);
            let mut insert = sqlx::query(&sql);
            for message in chunk {
                let headers = outbox_sql::headers_json(message);
                insert = insert
                    .bind(message.id)
                    .bind(&message.ordering_key)
                    .bind(&message.destination)
                    .bind(&message.partition_key)
                    .bind(&message.payload)
                    .bind(headers)
                    .bind(&message.event_type)
                    .bind(message.created_at.timestamp_micros())
                    .bind(now);
            }
            insert.execute(&mut *conn).await.map_err(classify)?;
        }
        Ok(())
    }

    /// Writes a typed event to `destination` (see [`Message::from_event`]).
    pub async fn enqueue_event<E: Event>(
        &self,
        conn: &mut SqliteConnection,
        destination: &str,
        event: &E,
    ) -> Result<Message, Error> {
        self.enqueue_event_with(conn, destination, event, &Metadata::default())
            .await
    }

    /// Writes a typed event to `destination` with `metadata`
    /// (correlation and causation ids, tenant, user, partition key).
    pub async fn enqueue_event_with<E: Event>(
        &self,
        conn: &mut SqliteConnection,
        destination: &str,
        event: &E,
        metadata: &Metadata,
    ) -> Result<Message, Error> {
        let message = Message::event_builder(destination, event)?
            .metadata(metadata)
            .build()?;
        self.enqueue(conn, &message).await?;
        Ok(message)
    }

    /// Wakes this process's idle relays at once. Call it after committing a
    /// transaction that enqueued; relays in other processes find the
    /// messages at their next poll.
    pub fn notify_committed(&self) {
        self.committed.notify_waiters();
    }

    /// A relay's source on this table, with its own identity and leases.
    /// Async and fallible like every database's, though making one here
    /// neither waits nor fails.
    pub async fn source(&self) -> Result<SqliteSource, Error> {
        Ok(SqliteSource::new(self.clone()))
    }
}
