//! What an operator asks of an outbox: backlog, dead letters, requeue,
//! cleanup.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::BoxFuture;
use outbox_core::{Backlog, DeadLetter, Error, Waiting};
use outbox_core::{BoxSource, Message, Source};
use outbox_sql::Operator;
use sqlx::{Connection, MySqlConnection, Row};
use uuid::Uuid;

use crate::claim::read_committed;
use crate::error::classify;
use crate::row::{decode, Decoded};
use crate::sql::placeholders;
use crate::writer::MAX_ROWS;
use crate::MysqlOutbox;

impl MysqlOutbox {
    /// Messages waiting, age of the oldest, and dead letters.
    pub async fn backlog(&self) -> Result<Backlog, Error> {
        let row = sqlx::query(&self.sql.backlog)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        let waiting: i64 = row.try_get(0).map_err(classify)?;
        let oldest_us: Option<i64> = row.try_get(1).map_err(classify)?;
        let dead: i64 = row.try_get(2).map_err(classify)?;
        Ok(Backlog {
            waiting: waiting.max(0) as u64,
            oldest_age: oldest_us.map(|us| Duration::from_micros(us.max(0) as u64)),
            dead_letters: dead.max(0) as u64,
            log_lag: None,
        })
    }

    /// The oldest `limit` dead letters, with their reasons.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, Error> {
        let rows = sqlx::query(&self.sql.dead_letters)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get("attempts")?;
                Ok(DeadLetter {
                    id: row.try_get("id")?,
                    message: match decode(row, None)? {
                        Decoded::Message(message) => Some(message),
                        Decoded::Malformed { .. } => None,
                    },
                    attempts: attempts.max(0) as u32,
                    error: row
                        .try_get::<Option<String>, _>("last_error")?
                        .unwrap_or_default(),
                    dead_at: row.try_get("dead_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    /// The oldest `limit` messages waiting for delivery, in the order they
    /// were written.
    pub async fn waiting(&self, limit: u32) -> Result<Vec<Waiting>, Error> {
        let rows = sqlx::query(&self.sql.waiting)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = row.try_get("attempts")?;
                Ok(Waiting {
                    id: row.try_get("id")?,
                    message: match decode(row, None)? {
                        Decoded::Message(message) => Some(message),
                        Decoded::Malformed { .. } => None,
                    },
                    attempts: attempts.max(0) as u32,
                    last_error: row.try_get("last_error")?,
                    next_attempt_at: row.try_get("next_attempt_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    /// How many dead letters wait.
    pub async fn count_dead_letters(&self) -> Result<u64, Error> {
        let count: i64 = sqlx::query_scalar(&self.sql.count_dead)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(count.max(0) as u64)
    }

    /// Puts these dead letters back in the delivery path, attempts reset;
    /// returns how many were requeued.
    pub async fn requeue(&self, ids: &[Uuid]) -> Result<u64, Error> {
        let mut requeued = 0;
        // MySQL takes 65,535 placeholders a statement.
        for ids in ids.chunks(MAX_ROWS) {
            let sql = format!("{}{}", self.sql.requeue, placeholders(ids.len()));
            let mut query = sqlx::query(&sql);
            for id in ids {
                query = query.bind(*id);
            }
            requeued += query
                .execute(&self.pool)
                .await
                .map_err(classify)?
                .rows_affected();
        }
        Ok(requeued)
    }

    /// Puts every dead letter back in the delivery path; returns how many.
    pub async fn requeue_all(&self) -> Result<u64, Error> {
        let done = sqlx::query(&self.sql.requeue_all)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected())
    }

    /// In mark-done mode, deletes rows delivered more than `older_than` ago,
    /// `batch` rows per statement, and returns how many it deleted.
    pub async fn cleanup(&self, older_than: Duration, batch: u32) -> Result<u64, Error> {
        let batch = u64::from(batch.max(1));
        let mut total = 0;
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        loop {
            // Without gap locks, or writers inserting at the end of the
            // `waiting` index would wait for (and deadlock with) cleanup.
            read_committed(&mut conn).await?;
            let done = sqlx::query(&self.sql.cleanup)
                .bind(older_than.as_micros() as i64)
                .bind(batch)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
            total += done.rows_affected();
            if done.rows_affected() < batch {
                return Ok(total);
            }
        }
    }

    /// Deletes the rows of `<table>_keys` (one per key ever written) whose
    /// key has no message left in the table, `batch` keys per
    /// transaction, and returns how many it deleted.
    ///
    /// A key's row is only the lock its writers take; the row holds nothing.
    /// So pruning goes through the keys in order, `batch` at a time, reading
    /// without locks; leaves the keys with a message in the table (their
    /// next writer would only write the row again); then locks the others
    /// with `SKIP LOCKED`, so a key a writer holds in an open transaction
    /// is skipped, never waited for nor taken; and deletes what it locked.
    /// A writer arriving meanwhile waits for that short transaction, then
    /// writes its key's row again, in order.
    pub async fn prune_keys(&self, batch: u32) -> Result<u64, Error> {
        let batch = batch.max(1);
        let mut total = 0;
        let mut after: Vec<u8> = Vec::new();
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        loop {
            let keys: Vec<Vec<u8>> = sqlx::query_scalar(&self.sql.keys_after)
                .bind(&after)
                .bind(batch)
                .fetch_all(&mut *conn)
                .await
                .map_err(classify)?;
            let Some(last) = keys.last() else {
                return Ok(total);
            };
            after.clone_from(last);
            let scanned = keys.len();
            // Keys are written from `String`s; one that is not UTF-8 was
            // not written by this crate and is left alone.
            let keys: Vec<String> = keys
                .into_iter()
                .filter_map(|key| String::from_utf8(key).ok())
                .collect();
            let statement = format!(
                "{}{} GROUP BY CAST(ordering_key AS BINARY)",
                self.sql.keys_in_use,
                placeholders(keys.len())
            );
            let mut query = sqlx::query_scalar::<_, Vec<u8>>(&statement);
            for key in &keys {
                query = query.bind(key);
            }
            let in_use: HashSet<Vec<u8>> = query
                .fetch_all(&mut *conn)
                .await
                .map_err(classify)?
                .into_iter()
                .collect();
            let idle: Vec<&String> = keys
                .iter()
                .filter(|key| !in_use.contains(key.as_bytes()))
                .collect();
            if !idle.is_empty() {
                total += self.delete_unheld_keys(&mut conn, &idle).await?;
            }
            if scanned < batch as usize {
                return Ok(total);
            }
        }
    }

    /// Locks those of `keys` no writer holds, deletes them, commits.
    async fn delete_unheld_keys(
        &self,
        conn: &mut MySqlConnection,
        keys: &[&String],
    ) -> Result<u64, Error> {
        read_committed(conn).await?;
        let mut tx = conn.begin().await.map_err(classify)?;
        let statement = format!(
            "{}{} FOR UPDATE SKIP LOCKED",
            self.sql.lock_idle_keys,
            placeholders(keys.len())
        );
        let mut query = sqlx::query_scalar::<_, Vec<u8>>(&statement);
        for key in keys {
            query = query.bind(key.as_bytes());
        }
        let locked = query.fetch_all(&mut *tx).await.map_err(classify)?;
        let mut deleted = 0;
        if !locked.is_empty() {
            let statement = format!("{}{}", self.sql.delete_keys, placeholders(locked.len()));
            let mut query = sqlx::query(&statement);
            for key in &locked {
                query = query.bind(key);
            }
            deleted = query
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
        }
        tx.commit().await.map_err(classify)?;
        Ok(deleted)
    }

    /// The plan MySQL chooses for a claim of `limit` rows (`EXPLAIN`), to
    /// check that it stays an index range scan on a large backlog.
    pub async fn explain_claim(&self, limit: u32) -> Result<String, Error> {
        let inline = self.config.batch_bytes / (limit.max(1) as usize);
        let rows = sqlx::query(&format!("EXPLAIN {}", self.sql.claim))
            .bind(i64::try_from(inline).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        let mut lines = Vec::new();
        for row in rows {
            let table: Option<String> = row.try_get("table").ok();
            let kind: Option<String> = row.try_get("type").ok();
            let key: Option<String> = row.try_get("key").ok().flatten();
            let extra: Option<String> = row.try_get("Extra").ok().flatten();
            lines.push(format!(
                "table={} type={} key={} extra={}",
                table.unwrap_or_default(),
                kind.unwrap_or_default(),
                key.unwrap_or_default(),
                extra.unwrap_or_default()
            ));
        }
        Ok(lines.join("\n"))
    }
}

impl Operator for MysqlOutbox {
    fn migrate(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(MysqlOutbox::migrate(self))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, Error>> {
        Box::pin(MysqlOutbox::backlog(self))
    }

    fn waiting(&self, limit: u32) -> BoxFuture<'_, Result<Vec<Waiting>, Error>> {
        Box::pin(MysqlOutbox::waiting(self, limit))
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>> {
        Box::pin(MysqlOutbox::dead_letters(self, limit))
    }

    fn count_dead_letters(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(MysqlOutbox::count_dead_letters(self))
    }

    fn requeue<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(MysqlOutbox::requeue(self, ids))
    }

    fn requeue_all(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(MysqlOutbox::requeue_all(self))
    }

    fn cleanup(&self, older_than: Duration, batch: u32) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(MysqlOutbox::cleanup(self, older_than, batch))
    }

    fn prune(&self, batch: u32) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(MysqlOutbox::prune_keys(self, batch))
    }

    fn relay_source(&self) -> BoxFuture<'_, Result<BoxSource<Message>, Error>> {
        Box::pin(async move { Ok(MysqlOutbox::source(self).await?.boxed()) })
    }
}
