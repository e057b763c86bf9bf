//! The outbox handle: schema, writing inside the caller's transaction, and
//! making relays.

use std::sync::Arc;

use outbox_core::{ConfigError, Error, Event, Message, Metadata};
use sqlx::{Executor, PgConnection, PgPool};

use crate::error::classify;
use crate::schema::{create_schema, render};
use crate::sql::Statements;
use crate::{PostgresConfig, PostgresSource};
use outbox_sql::headers_json;

/// One outbox table on one pool: writes messages in your transactions, runs
/// migrations, makes relay sources and answers operators. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PostgresOutbox {
    pub(crate) config: Arc<PostgresConfig>,
    pub(crate) pool: PgPool,
    pub(crate) sql: Arc<Statements>,
}

impl PostgresOutbox {
    /// Checks `config` (naming a bad setting) and prepares the statements;
    /// operator calls, migrations and relay sources use `pool`.
    pub fn new(config: PostgresConfig, pool: PgPool) -> Result<Self, ConfigError> {
        config.validate()?;
        let sql = Statements::new(&config);
        Ok(Self {
            config: Arc::new(config),
            pool,
            sql: Arc::new(sql),
        })
    }

    /// The settings.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// The pool operator calls and relay sources use.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema as plain SQL for the configured names, for teams that run
    /// their own migration tool.
    pub fn schema_sql(&self) -> String {
        render(&self.config)
    }

    /// Creates the schema if needed (idempotent; concurrent callers wait for
    /// each other).
    pub async fn migrate(&self) -> Result<(), Error> {
        create_schema(&self.pool, &self.config.schema).await?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(self.sql.table_lock ^ 0x5f5f)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        // `Executor::execute`, not `RawSql::execute`: with the latter this
        // future is not `Send`, and `migrate` could not be spawned.
        (*tx)
            .execute(sqlx::raw_sql(&self.schema_sql()))
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    /// Writes one message on `conn`, which should be your open transaction
    /// (`&mut tx`): it commits or rolls back with your business rows.
    pub async fn enqueue(&self, conn: &mut PgConnection, message: &Message) -> Result<(), Error> {
        self.enqueue_many(conn, std::slice::from_ref(message)).await
    }

    /// Writes many messages in one statement, in this order.
    pub async fn enqueue_many(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
    ) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        for message in messages {
            message.validate()?;
        }
        if let [message] = messages {
            return self.enqueue_one(conn, message).await;
        }
        let column = |f: fn(&Message) -> _| messages.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&self.sql.enqueue)
            .bind(self.sql.key_lock_class)
            .bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
            .bind(column(|m| m.ordering_key.clone()))
            .bind(column(|m| m.destination.clone()))
            .bind(
                messages
                    .iter()
                    .map(|m| m.partition_key.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.payload.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(column(headers_json))
            .bind(
                messages
                    .iter()
                    .map(|m| m.event_type.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(messages.iter().map(|m| m.created_at).collect::<Vec<_>>())
            .execute(conn)
            .await
            .map_err(unmigrated)?;
        Ok(())
    }

    /// One message by the statement without arrays (validated by the caller).
    async fn enqueue_one(&self, conn: &mut PgConnection, message: &Message) -> Result<(), Error> {
        sqlx::query(&self.sql.enqueue_one)
            .bind(self.sql.key_lock_class)
            .bind(message.id)
            .bind(&message.ordering_key)
            .bind(&message.destination)
            .bind(&message.partition_key)
            .bind(&message.payload)
            .bind(headers_json(message))
            .bind(&message.event_type)
            .bind(message.created_at)
            .execute(conn)
            .await
            .map_err(unmigrated)?;
        Ok(())
    }

    /// Writes a typed event to `destination` (see [`Message::from_event`]).
    pub async fn enqueue_event<E: Event>(
        &self,
        conn: &mut PgConnection,
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
        conn: &mut PgConnection,
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

    /// A relay's source on this table: its own identity and leases, and (when
    /// `notify` is on) a LISTEN connection that wakes it on new work.
    pub async fn source(&self) -> Result<PostgresSource, Error> {
        PostgresSource::connect(self.clone()).await
    }
}

/// A writer's error, saying what to do when a table it writes or reads is
/// missing: the outbox table, or `<table>_idle`, which writers of this
/// version read (migration `0003_idle_relays.sql`) and which a database
/// migrated by an earlier version lacks.
fn unmigrated(err: sqlx::Error) -> Error {
    let missing =
        matches!(&err, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01"));
    if !missing {
        return classify(err);
    }
    Error::permanent(
        "a table of the outbox is missing: run PostgresOutbox::migrate (or apply \
         MIGRATIONS, 0003_idle_relays.sql included) before writing",
    )
    .with_source(err)
}
