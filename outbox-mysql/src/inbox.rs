//! The inbox on MySQL / MariaDB: the ids each consumer applied, recorded in
//! the consumer's own transaction.

use std::time::Duration;

use outbox_core::{ConfigError, Error, Incoming};
use outbox_sql::{check_consumer, Receipt, DEFAULT_INBOX_TABLE};
use sqlx::{MySqlConnection, MySqlPool};
use uuid::Uuid;

use crate::classify;

/// Longest inbox table name: the index name appends 11 characters, and
/// MySQL takes identifiers of 64 characters.
const MAX_TABLE_LEN: usize = 53;

/// A consumer's inbox table (default `outbox_inbox`, in the pool's
/// database).
///
/// ```no_run
/// # async fn consume(pool: sqlx::MySqlPool, id: uuid::Uuid) -> Result<(), outbox_core::Error> {
/// use outbox_mysql::MysqlInbox;
/// let inbox = MysqlInbox::new(pool.clone());
/// inbox.migrate().await?;
/// let mut tx = pool.begin().await.map_err(outbox_mysql::classify)?;
/// if inbox.apply(&mut tx, "billing", id).await?.is_new() {
///     // the message's effect, in the same transaction
/// }
/// tx.commit().await.map_err(outbox_mysql::classify)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MysqlInbox {
    pool: MySqlPool,
    table: String,
    apply: String,
    known_key: String,
    advance: String,
    prune: String,
    prune_keys: String,
}

impl MysqlInbox {
    /// The inbox `outbox_inbox` on `pool`.
    pub fn new(pool: MySqlPool) -> Self {
        Self::named(DEFAULT_INBOX_TABLE, pool).expect("the default name is valid")
    }

    /// The inbox `table` on `pool`; the name is checked like the outbox's
    /// (the error names `table`).
    pub fn named(table: &str, pool: MySqlPool) -> Result<Self, ConfigError> {
        outbox_sql::check_identifier("table", table, MAX_TABLE_LEN)?;
        Ok(Self {
            pool,
            // IGNORE turns only the duplicate key into "no row": the
            // consumer name, the one value that could be cut short, is
            // checked before the statement runs.
            apply: format!(
                "INSERT IGNORE INTO `{table}` (consumer, message_id, applied_at) \
                 VALUES (?, ?, UTC_TIMESTAMP(6))"
            ),
            // With sqlx's FOUND_ROWS, an UPDATE counts the rows its WHERE
            // matched: the condition on the sequence is in the WHERE.
            known_key: format!(
                "INSERT IGNORE INTO `{table}_keys` (consumer, key_id, last_sequence, applied_at) \
                 VALUES (?, ?, -1, UTC_TIMESTAMP(6))"
            ),
            advance: format!(
                "UPDATE `{table}_keys` SET last_sequence = ?, applied_at = UTC_TIMESTAMP(6) \
                 WHERE consumer = ? AND key_id = ? AND last_sequence < ?"
            ),
            prune_keys: format!(
                "DELETE FROM `{table}_keys` \
                 WHERE applied_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
                 ORDER BY applied_at LIMIT ?"
            ),
            prune: format!(
                "DELETE FROM `{table}` WHERE applied_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
                 ORDER BY applied_at LIMIT ?"
            ),
            table: table.to_string(),
        })
    }

    /// Creates the tables if missing (idempotent).
    pub async fn migrate(&self) -> Result<(), Error> {
        let keys = format!(
            "CREATE TABLE IF NOT EXISTS `{table}_keys` (\
                 consumer VARCHAR(190) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 key_id BINARY(16) NOT NULL, \
                 last_sequence BIGINT NOT NULL, \
                 applied_at DATETIME(6) NOT NULL, \
                 PRIMARY KEY (consumer, key_id), \
                 KEY `{table}_keys_at` (applied_at)\
             ) ENGINE = InnoDB",
            table = self.table
        );
        sqlx::query(&keys)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS `{table}` (\
                 consumer VARCHAR(190) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 message_id BINARY(16) NOT NULL, \
                 applied_at DATETIME(6) NOT NULL, \
                 PRIMARY KEY (consumer, message_id), \
                 KEY `{table}_applied_at` (applied_at)\
             ) ENGINE = InnoDB",
            table = self.table
        );
        sqlx::query(&create)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Records `message_id` as applied by `consumer` on `conn`, the transaction
    /// that applies the message's effect: [`Receipt::New`], apply it;
    /// [`Receipt::Duplicate`], skip it (see [`outbox_sql::inbox`]).
    pub async fn apply(
        &self,
        conn: &mut MySqlConnection,
        consumer: &str,
        message_id: Uuid,
    ) -> Result<Receipt, Error> {
        check_consumer(consumer)?;
        let done = sqlx::query(&self.apply)
            .bind(consumer)
            .bind(message_id)
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
        conn: &mut MySqlConnection,
        consumer: &str,
        incoming: &Incoming,
    ) -> Result<Receipt, Error> {
        let (key, sequence) = outbox_sql::ordering_of(incoming)?;
        let receipt = self.apply(&mut *conn, consumer, incoming.id).await?;
        if receipt != Receipt::New {
            return Ok(receipt);
        }
        sqlx::query(&self.known_key)
            .bind(consumer)
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        let advanced = sqlx::query(&self.advance)
            .bind(sequence)
            .bind(consumer)
            .bind(key)
            .bind(sequence)
            .execute(conn)
            .await
            .map_err(classify)?;
        Ok(Receipt::of_advanced_keys(advanced.rows_affected()))
    }

    /// Deletes ids applied, and key positions last advanced, more than
    /// `older_than` ago, `batch` rows per statement; returns how many rows
    /// (see [`outbox_sql::inbox`] on the window).
    pub async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64, Error> {
        let micros = older_than.as_micros().min(i64::MAX as u128) as i64;
        let mut pruned = 0;
        for statement in [&self.prune, &self.prune_keys] {
            pruned += outbox_sql::delete_in_batches(batch, |batch| async move {
                let done = sqlx::query(statement)
                    .bind(micros)
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
