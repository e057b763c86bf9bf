//! The WAL outbox (feature `wal`): writers emit each message into
//! PostgreSQL's write-ahead log with `pg_logical_emit_message`, in their
//! transaction (no table, no index, no lock, nothing to vacuum), and the
//! relay reads them through a logical replication slot, in commit order.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), outbox_core::Error> {
//! use outbox_core::Message;
//! use outbox_postgres::{WalConfig, WalOutbox};
//!
//! let config = WalConfig {
//!     url: "postgres://relay@db/shop".into(), // a user with REPLICATION
//!     ..WalConfig::default()
//! };
//! let outbox = WalOutbox::new(config, pool.clone())?;
//! outbox.migrate().await?; // publication, slot, failures table
//!
//! let mut tx = pool.begin().await.map_err(outbox_postgres::classify)?;
//! let message = Message::builder("orders", "order-42").payload("{}").build()?;
//! outbox.enqueue(&mut tx, &message).await?;
//! tx.commit().await.map_err(outbox_postgres::classify)?;
//!
//! let source = outbox.source().await?; // hand it to outbox_core::Relay
//! # Ok(()) }
//! ```

mod config;
mod envelope;
mod failures;
mod lag;
mod operator;
mod pending;
mod reader;
mod shared;
mod source;
mod sweep;
mod table;
mod tls;

use std::sync::Arc;

use outbox_core::{
    Backlog, ConfigError, DeadLetter, Error, Event, LogLag, Message, Metadata, Waiting,
};
use sqlx::{Executor, PgConnection, PgPool};
use uuid::Uuid;

use crate::error::classify;
pub use config::WalConfig;
pub use envelope::{
    decode as decode_envelope, encode as encode_envelope, Malformed, ENVELOPE_VERSION,
};
use failures::Failures;
pub use source::{WalMonitor, WalSource};
use table::OutboxTable;

/// One WAL outbox on one pool: writes messages in your transactions, sets
/// up the slot, makes the relay's source and answers operators. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct WalOutbox {
    config: Arc<WalConfig>,
    pool: PgPool,
    failures: Arc<Failures>,
    table: Option<OutboxTable>,
}

impl WalOutbox {
    /// Checks `config` (naming a bad setting); `pool` serves the writers'
    /// helpers, migrations and the failures table.
    pub fn new(config: WalConfig, pool: PgPool) -> Result<Self, ConfigError> {
        config.validate()?;
        let failures = Failures::new(
            &config.schema,
            &config.failures_table,
            config.on_dead_letter,
        );
        let table = config
            .table
            .as_ref()
            .map(|table| OutboxTable::new(&config.schema, table));
        Ok(Self {
            config: Arc::new(config),
            pool,
            failures: Arc::new(failures),
            table,
        })
    }

    /// The settings.
    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    /// What `migrate` runs, as SQL, for teams with their own migration tool.
    /// The slot must be created outside a transaction.
    pub fn schema_sql(&self) -> String {
        format!(
            "{}\n-- on its own, outside a transaction:\n{}",
            self.tables_sql(),
            self.slot_sql()
        )
    }

    fn tables_sql(&self) -> String {
        let c = &self.config;
        let publication = match &self.table {
            Some(table) => table.schema_sql(&c.publication),
            None => format!(
                "DO $$ BEGIN\n    \
                     IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = '{pubname}') THEN\n        \
                         CREATE PUBLICATION \"{pubname}\";\n    \
                     END IF;\n\
                 END $$;\n",
                pubname = c.publication,
            ),
        };
        format!(
            "{}{publication}",
            Failures::schema_sql(&c.schema, &c.failures_table)
        )
    }

    fn slot_sql(&self) -> String {
        format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')\n    \
                 WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{slot}');\n",
            slot = self.config.slot,
        )
    }

    /// Creates the failures table, the publication and the slot if needed
    /// (idempotent). Needs `wal_level = logical` on the server; the error
    /// says so when it is not. In the table mode, a slot created while the
    /// table holds rows is warned about: rows committed before the slot
    /// existed are not in the log it reads (README, "The table mode").
    pub async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        let lock = sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(format!("outbox-wal-migrate-{}", self.config.slot));
        lock.execute(&mut *conn).await.map_err(classify)?;
        // A slot cannot be created in a transaction that wrote, and a
        // multi-statement text runs as one transaction: two texts.
        // `Executor::execute`, not `RawSql::execute`: with the latter this
        // future is not `Send`.
        let mut done = (*conn)
            .execute(sqlx::raw_sql(&self.tables_sql()))
            .await
            .map(drop)
            .map_err(classify);
        let mut created = false;
        if done.is_ok() {
            done = match self.slot_exists(&mut conn).await {
                Ok(existed) => {
                    created = !existed;
                    (*conn)
                        .execute(sqlx::raw_sql(&self.slot_sql()))
                        .await
                        .map(drop)
                        .map_err(not_logical)
                }
                Err(err) => Err(err),
            };
        }
        if let (true, Ok(()), Some(table)) = (created, &done, &self.table) {
            done = table
                .warn_of_rows_before(&mut conn, &self.config.slot)
                .await;
        }
        if done.is_ok() {
            done = self.refuse_a_lost_slot(&mut conn).await;
        }
        let unlock = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(format!("outbox-wal-migrate-{}", self.config.slot))
            .execute(&mut *conn)
            .await;
        done?;
        unlock.map_err(classify)?;
        Ok(())
    }

    async fn slot_exists(&self, conn: &mut PgConnection) -> Result<bool, Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)")
            .bind(&self.config.slot)
            .fetch_one(&mut *conn)
            .await
            .map_err(classify)
    }

    /// An existing slot the server invalidated (`wal_status = 'lost'`)
    /// cannot be read again: said here, at migration, rather than by the
    /// relay at its start.
    async fn refuse_a_lost_slot(&self, conn: &mut PgConnection) -> Result<(), Error> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&self.config.slot)
                .fetch_optional(&mut *conn)
                .await
                .map_err(classify)?
                .flatten();
        if status.as_deref() != Some("lost") {
            return Ok(());
        }
        Err(Error::permanent(format!(
            "the replication slot {:?} is invalidated (pg_replication_slots.wal_status = 'lost'): \
             the server removed log it still needed past max_slot_wal_keep_size, and messages in \
             that log can no longer be read. Drop the slot (pg_drop_replication_slot) and run \
             migrate again to read from now on",
            self.config.slot
        )))
    }

    /// Writes one message on `conn`, which should be your open transaction
    /// (`&mut tx`): it reaches the log only if the transaction commits. In
    /// the table mode (`table` set) it inserts a row, which reaches the log
    /// the same way.
    pub async fn enqueue(&self, conn: &mut PgConnection, message: &Message) -> Result<(), Error> {
        self.enqueue_many(conn, std::slice::from_ref(message)).await
    }

    /// Writes many messages in one statement, in this order.
    pub async fn enqueue_many(
        &self,
        conn: &mut PgConnection,
        messages: &[Message],
    ) -> Result<(), Error> {
        for message in messages {
            message.validate()?;
        }
        if let Some(table) = &self.table {
            return match messages {
                [] => Ok(()),
                _ => table.insert(conn, messages).await,
            };
        }
        match messages {
            [] => Ok(()),
            [message] => {
                sqlx::query("SELECT pg_logical_emit_message(true, $1, $2)")
                    .bind(&self.config.prefix)
                    .bind(envelope::encode(message))
                    .execute(conn)
                    .await
                    .map_err(classify)?;
                Ok(())
            }
            _ => {
                // An aggregate over the array emits in array order.
                sqlx::query(
                    "SELECT count(pg_logical_emit_message(true, $1, m)) \
                     FROM unnest($2::bytea[]) AS m",
                )
                .bind(&self.config.prefix)
                .bind(messages.iter().map(envelope::encode).collect::<Vec<_>>())
                .execute(conn)
                .await
                .map_err(classify)?;
                Ok(())
            }
        }
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

    /// Writes a typed event to `destination` with `metadata`.
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

    /// A relay's source on the slot, once its replication connection read
    /// the slot or found another relay reading it (then it stands by, and
    /// takes over when that relay goes). It fails, saying why, when the slot
    /// does not exist or the replication connection cannot be made.
    pub async fn source(&self) -> Result<WalSource, Error> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)",
        )
        .bind(&self.config.slot)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        if !exists {
            return Err(Error::permanent(format!(
                "the replication slot `{}` does not exist: run WalOutbox::migrate",
                self.config.slot
            )));
        }
        let source = WalSource::start(
            self.config.clone(),
            self.pool.clone(),
            self.failures.clone(),
            self.table.clone(),
        );
        // A replication connection that cannot be made (a wrong password,
        // a user without REPLICATION) fails here, at start-up.
        source.started(self.config.lease).await?;
        Ok(source)
    }

    /// The oldest `limit` messages waiting in the failures table (a
    /// retry's error and next attempt with them), in the order they were
    /// written. Messages not yet read from the log are not listed.
    pub async fn waiting(&self, limit: u32) -> Result<Vec<Waiting>, Error> {
        self.failures.waiting_rows(&self.pool, limit as usize).await
    }

    /// The oldest `limit` dead letters, with their reasons.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, Error> {
        self.failures.dead_letters(&self.pool, limit as usize).await
    }

    /// How many dead letters wait.
    pub async fn count_dead_letters(&self) -> Result<u64, Error> {
        self.failures.count_dead(&self.pool).await
    }

    /// Puts these dead letters back in the delivery path, attempts reset;
    /// returns how many.
    pub async fn requeue(&self, ids: &[Uuid]) -> Result<u64, Error> {
        self.failures.requeue(&self.pool, Some(ids)).await
    }

    /// Puts every dead letter back; returns how many.
    pub async fn requeue_all(&self) -> Result<u64, Error> {
        self.failures.requeue(&self.pool, None).await
    }

    /// The failures table's part of the backlog: messages waiting there for
    /// a retry (or behind one), the oldest's age, and the dead letters; and
    /// how many bytes of log the slot is behind.
    /// Messages a relay has read and not yet delivered are in its source's
    /// backlog (its `Stats`); those not read yet, in [`WalOutbox::unread`]
    /// and [`WalOutbox::slot_lag_bytes`].
    pub async fn backlog(&self) -> Result<Backlog, Error> {
        let (waiting, oldest) = self.failures.waiting(&self.pool).await?;
        Ok(Backlog {
            waiting,
            oldest_age: oldest.map(|at| (chrono::Utc::now() - at).to_std().unwrap_or_default()),
            dead_letters: self.failures.count_dead(&self.pool).await?,
            log_lag: self.slot_lag_bytes().await?.map(|bytes| LogLag {
                bytes,
                age: None,
                max_bytes: self.config.max_lag_bytes,
            }),
        })
    }

    /// How many outbox messages the log holds after the slot's confirmed
    /// position: what the next reader will be handed. PostgreSQL lets only
    /// a free slot be peeked, so this fails while a relay reads it.
    pub async fn unread(&self) -> Result<u64, Error> {
        // A pgoutput message record: 'M', flags (1 byte), LSN (8 bytes),
        // then the prefix, NUL-terminated. An insert record: 'I', then
        // the table's OID (4 bytes).
        let mut prefix = self.config.prefix.as_bytes().to_vec();
        prefix.push(0);
        let table = (self.config.table.as_ref())
            .map(|table| format!("\"{}\".\"{table}\"", self.config.schema));
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
                 'proto_version', '1', 'publication_names', $2, 'messages', 'true') \
             WHERE (get_byte(data, 0) = 77 AND substr(data, 11, $3) = $4) \
                OR (get_byte(data, 0) = 73 \
                    AND substr(data, 2, 4) = int4send(to_regclass($5::text)::oid::int4))",
        )
        .bind(&self.config.slot)
        .bind(&self.config.publication)
        .bind(prefix.len() as i32)
        .bind(prefix)
        .bind(table)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(count as u64)
    }

    /// How far the slot's confirmed position is behind the log's end, in
    /// bytes (`None` when the slot does not exist).
    pub async fn slot_lag_bytes(&self) -> Result<Option<u64>, Error> {
        lag::slot_lag_bytes(&self.pool, &self.config.slot).await
    }
}

/// A migration error, saying what to change when the server's `wal_level`
/// is not `logical`.
fn not_logical(err: sqlx::Error) -> Error {
    let needs_logical = err.to_string().contains("wal_level");
    if !needs_logical {
        return classify(err);
    }
    Error::permanent(
        "the WAL outbox needs wal_level = logical on the server (ALTER SYSTEM SET \
         wal_level = logical, then restart PostgreSQL)",
    )
    .with_source(err)
}
