//! The inbox on SQLite: the ids each consumer applied, recorded in the
//! consumer's own transaction.

use std::time::Duration;

use outbox_core::{ConfigError, Error, Incoming};
use outbox_sql::{check_consumer, Receipt, DEFAULT_INBOX_TABLE};
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::classify;
use crate::sql::{micros, now_us};

/// Longest inbox table name, as for the outbox's.
const MAX_TABLE_LEN: usize = 53;

/// A consumer's inbox table (default `outbox_inbox`).
///
/// ```no_run
/// # async fn consume(pool: sqlx::SqlitePool, id: uuid::Uuid) -> Result<(), outbox_core::Error> {
/// use outbox_sqlite::SqliteInbox;
/// let inbox = SqliteInbox::new(pool.clone());
/// inbox.migrate().await?;
/// let mut tx = pool.begin().await.map_err(outbox_sqlite::classify)?;
/// if inbox.apply(&mut tx, "billing", id).await?.is_new() {
///     // the message's effect, in the same transaction
/// }
/// tx.commit().await.map_err(outbox_sqlite::classify)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteInbox {
    pool: SqlitePool,
    table: String,
    apply: String,
    advance: String,
    prune: String,
    prune_keys: String,
}

impl SqliteInbox {
    /// The inbox `outbox_inbox` on `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Self::named(DEFAULT_INBOX_TABLE, pool).expect("the default name is valid")
    }

    /// The inbox `table` on `pool`; the name is checked like the outbox's
    /// (the error names `table`).
    pub fn named(table: &str, pool: SqlitePool) -> Result<Self, ConfigError> {
        outbox_sql::check_identifier("table", table, MAX_TABLE_LEN)?;
        Ok(Self {
            pool,
            apply: format!(
                "INSERT INTO {table} (consumer, message_id, applied_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING"
            ),
            advance: format!(
                "INSERT INTO {table}_keys (consumer, key_id, last_sequence, applied_at) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (consumer, key_id) DO UPDATE \
                 SET last_sequence = excluded.last_sequence, applied_at = excluded.applied_at \
                 WHERE last_sequence < excluded.last_sequence"
            ),
            prune_keys: format!(
                "DELETE FROM {table}_keys WHERE rowid IN (SELECT rowid FROM {table}_keys \
                 WHERE applied_at < ?1 LIMIT ?2)"
            ),
            prune: format!(
                "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} \
                 WHERE applied_at < ?1 LIMIT ?2)"
            ),
            table: table.to_string(),
        })
    }

    /// Creates the table and its index if missing (idempotent). Times are
    /// Unix microseconds, as in the outbox table.
    pub async fn migrate(&self) -> Result<(), Error> {
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                     consumer TEXT NOT NULL, \
                     message_id BLOB NOT NULL, \
                     applied_at INTEGER NOT NULL, \
                     PRIMARY KEY (consumer, message_id))",
                table = self.table
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {table}_applied_at ON {table} (applied_at)",
                table = self.table
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {table}_keys (\
                     consumer TEXT NOT NULL, \
                     key_id BLOB NOT NULL, \
                     last_sequence INTEGER NOT NULL, \
                     applied_at INTEGER NOT NULL, \
                     PRIMARY KEY (consumer, key_id))",
                table = self.table
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {table}_keys_at ON {table}_keys (applied_at)",
                table = self.table
            ),
        ];
        for statement in statements {
            sqlx::query(&statement)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    /// Records `message_id` as applied by `consumer` on `conn`, the transaction
    /// that applies the message's effect: [`Receipt::New`], apply it;
    /// [`Receipt::Duplicate`], skip it (see [`outbox_sql::inbox`]). SQLite runs
    /// one write transaction at a time, so two consumers never race on an id.
    pub async fn apply(
        &self,
        conn: &mut SqliteConnection,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<Receipt, Error> {
        check_consumer(consumer)?;
        let done = sqlx::query(&self.apply)
            .bind(consumer)
            .bind(message_id)
            .bind(now_us())
            .execute(conn)
            .await
            .map_err(classify)?;
        Ok(Receipt::of_inserted_rows(done.rows_affected()))
    }

    /// [`apply`](Self::apply) for a consumer that needs each key's order:
    /// a new message older than one of its key this consumer applied is
    /// [`Receipt::Stale`] (see [`outbox_sql::inbox`]). A permanent error
    /// for a message without ordering key or sequence headers.
    pub async fn apply_in_order(
        &self,
        conn: &mut SqliteConnection,
        consumer: &str,
        incoming: &Incoming,
    ) -> Result<Receipt, Error> {
        let (key, sequence) = outbox_sql::ordering_of(incoming)?;
        let receipt = self.apply(&mut *conn, consumer, incoming.id).await?;
        if receipt != Receipt::New {
            return Ok(receipt);
        }
        let advanced = sqlx::query(&self.advance)
            .bind(consumer)
            .bind(key)
            .bind(sequence)
            .bind(now_us())
            .execute(conn)
            .await
            .map_err(classify)?;
        Ok(Receipt::of_advanced_keys(advanced.rows_affected()))
    }

    /// Deletes ids applied, and key positions last advanced, more than
    /// `older_than` ago, `batch` rows per statement; returns how many rows
    /// (see [`outbox_sql::inbox`] on the window).
    pub async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64, Error> {
        let before = now_us().saturating_sub(micros(older_than));
        let mut pruned = 0;
        for statement in [&self.prune, &self.prune_keys] {
            pruned += outbox_sql::delete_in_batches(batch, |batch| async move {
                let done = sqlx::query(statement)
                    .bind(before)
                    .bind(batch)
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
                Ok(done.rows_affected())
            })
            .await?;
        }
        Ok(pruned)
    }
}
