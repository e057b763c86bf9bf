//! The inbox on PostgreSQL: the ids each consumer applied, recorded in the
//! consumer's own transaction.

use std::time::Duration;

use outbox_core::{ConfigError, Error, Incoming};
use outbox_sql::{check_consumer, Receipt, DEFAULT_INBOX_TABLE};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::classify;
use crate::schema::{create_schema, INBOX_LOCK_CLASS};

/// Longest inbox table name: index names append 11 characters to it, and
/// PostgreSQL cuts identifiers at 63 bytes.
const MAX_TABLE_LEN: usize = 52;

/// A consumer's inbox table (default `public.outbox_inbox`).
///
/// ```no_run
/// # async fn consume(pool: sqlx::PgPool, id: uuid::Uuid) -> Result<(), outbox_core::Error> {
/// use outbox_postgres::PostgresInbox;
/// let inbox = PostgresInbox::new(pool.clone());
/// inbox.migrate().await?;
/// let mut tx = pool.begin().await.map_err(outbox_postgres::classify)?;
/// if inbox.apply(&mut tx, "billing", id).await?.is_new() {
///     // the message's effect, in the same transaction
/// }
/// tx.commit().await.map_err(outbox_postgres::classify)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresInbox {
    pool: PgPool,
    schema: String,
    table: String,
    keys: String,
    index: String,
    keys_index: String,
    apply: String,
    advance: String,
    prune: String,
    prune_keys: String,
}

impl PostgresInbox {
    /// The inbox `public.outbox_inbox` on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self::named("public", DEFAULT_INBOX_TABLE, pool).expect("the default names are valid")
    }

    /// The inbox `schema.table` on `pool`; the names are checked like the
    /// outbox's (`schema`, `table` name the setting at fault).
    pub fn named(schema: &str, table: &str, pool: PgPool) -> Result<Self, ConfigError> {
        outbox_sql::check_identifier("schema", schema, 63)?;
        outbox_sql::check_identifier("table", table, MAX_TABLE_LEN)?;
        let qualified = format!("\"{schema}\".\"{table}\"");
        let keys = format!("\"{schema}\".\"{table}_keys\"");
        Ok(Self {
            pool,
            schema: schema.to_string(),
            index: format!("\"{table}_applied_at\""),
            keys_index: format!("\"{table}_keys_at\""),
            apply: format!(
                "INSERT INTO {qualified} (consumer, message_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING"
            ),
            advance: format!(
                "INSERT INTO {keys} AS k (consumer, key_id, last_sequence) VALUES ($1, $2, $3) \
                 ON CONFLICT (consumer, key_id) DO UPDATE \
                 SET last_sequence = EXCLUDED.last_sequence, applied_at = now() \
                 WHERE k.last_sequence < EXCLUDED.last_sequence"
            ),
            prune_keys: format!(
                "DELETE FROM {keys} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {keys} \
                 WHERE applied_at < now() - $1 * interval '1 millisecond' LIMIT $2))"
            ),
            keys,
            prune: format!(
                "DELETE FROM {qualified} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {qualified} \
                 WHERE applied_at < now() - $1 * interval '1 millisecond' LIMIT $2))"
            ),
            table: qualified,
        })
    }

    /// Creates the schema, the table and its index if missing (idempotent;
    /// concurrent callers wait for each other).
    pub async fn migrate(&self) -> Result<(), Error> {
        create_schema(&self.pool, &self.schema).await?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        // Concurrent `CREATE TABLE IF NOT EXISTS` of one table can fail the
        // loser with a unique violation: the migrations take turns.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(INBOX_LOCK_CLASS)
            .bind(&self.table)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                     consumer text NOT NULL, \
                     message_id uuid NOT NULL, \
                     applied_at timestamptz NOT NULL DEFAULT now(), \
                     PRIMARY KEY (consumer, message_id))",
                self.table
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} (applied_at)",
                self.index, self.table
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                     consumer text NOT NULL, \
                     key_id uuid NOT NULL, \
                     last_sequence bigint NOT NULL, \
                     applied_at timestamptz NOT NULL DEFAULT now(), \
                     PRIMARY KEY (consumer, key_id))",
                self.keys
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} (applied_at)",
                self.keys_index, self.keys
            ),
        ];
        for statement in statements {
            sqlx::query(&statement)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }

    /// Records `message_id` as applied by `consumer` on `conn`, the transaction
    /// that applies the message's effect: [`Receipt::New`], apply it;
    /// [`Receipt::Duplicate`], skip it (see [`outbox_sql::inbox`]). Under
    /// `REPEATABLE READ` or `SERIALIZABLE`, a copy racing another transaction
    /// that records the same id gets a serialization failure instead, a
    /// temporary error: retry the transaction.
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
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
        conn: &mut PgConnection,
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
            .execute(conn)
            .await
            .map_err(classify)?;
        Ok(Receipt::of_advanced_keys(advanced.rows_affected()))
    }

    /// Deletes ids applied, and key positions last advanced, more than
    /// `older_than` ago, `batch` rows per statement; returns how many rows
    /// (see [`outbox_sql::inbox`] on the window).
    pub async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64, Error> {
        let millis = older_than.as_millis().min(i64::MAX as u128) as i64;
        let mut pruned = 0;
        for statement in [&self.prune, &self.prune_keys] {
            pruned += outbox_sql::delete_in_batches(batch, |batch| async move {
                let done = sqlx::query(statement)
                    .persistent(false)
                    .bind(millis)
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
