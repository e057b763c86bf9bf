//! What an operator asks of an outbox: backlog, dead letters, requeue,
//! cleanup.

use std::time::Duration;

use futures_util::future::BoxFuture;
use outbox_core::{Backlog, DeadLetter, Error, Waiting};
use outbox_core::{BoxSource, Message, Source};
use outbox_sql::Operator;
use sqlx::Row;
use uuid::Uuid;

use crate::error::classify;
use crate::row::{decode, time, Decoded};
use crate::sql::{micros, now_us, placeholders};
use crate::SqliteOutbox;

impl SqliteOutbox {
    /// Messages waiting, age of the oldest, and dead letters.
    pub async fn backlog(&self) -> Result<Backlog, Error> {
        let row = sqlx::query(&self.sql.backlog)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        let waiting: i64 = row.try_get(0).map_err(classify)?;
        let oldest_us: Option<i64> = row.try_get(1).map_err(classify)?;
        let dead: i64 = row.try_get(2).map_err(classify)?;
        let now = now_us();
        Ok(Backlog {
            waiting: waiting.max(0) as u64,
            oldest_age: oldest_us
                .map(|us| Duration::from_micros(now.saturating_sub(us).max(0) as u64)),
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
                let attempts: i64 = row.try_get("attempts")?;
                Ok(DeadLetter {
                    // A row whose id is not a UUID (written by hand) shows
                    // the nil UUID; its error says why.
                    id: row.try_get("id").unwrap_or_else(|_| uuid::Uuid::nil()),
                    message: match decode(row)? {
                        Decoded::Message(message) => Some(message),
                        Decoded::Malformed { .. } => None,
                    },
                    attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
                    error: row
                        .try_get::<Option<String>, _>("last_error")?
                        .unwrap_or_default(),
                    dead_at: time(row.try_get("dead_at")?),
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
                let attempts: i64 = row.try_get("attempts")?;
                Ok(Waiting {
                    id: row.try_get("id").unwrap_or_else(|_| uuid::Uuid::nil()),
                    message: match decode(row)? {
                        Decoded::Message(message) => Some(message),
                        Decoded::Malformed { .. } => None,
                    },
                    attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
                    last_error: row.try_get("last_error")?,
                    next_attempt_at: time(row.try_get("next_attempt_at")?),
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
        let mut total = 0;
        for chunk in ids.chunks(10_000) {
            let sql = format!(
                "{}{}",
                self.sql.requeue_prefix,
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(now_us());
            for id in chunk {
                query = query.bind(*id);
            }
            total += query
                .execute(&self.pool)
                .await
                .map_err(classify)?
                .rows_affected();
        }
        Ok(total)
    }

    /// Puts every dead letter back in the delivery path; returns how many.
    pub async fn requeue_all(&self) -> Result<u64, Error> {
        let done = sqlx::query(&self.sql.requeue_all)
            .bind(now_us())
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected())
    }

    /// In mark-done mode, deletes rows delivered more than `older_than` ago,
    /// `batch` rows per statement, and returns how many it deleted.
    pub async fn cleanup(&self, older_than: Duration, batch: u32) -> Result<u64, Error> {
        let batch = u64::from(batch.max(1));
        let before = now_us().saturating_sub(micros(older_than));
        let mut total = 0;
        loop {
            let done = sqlx::query(&self.sql.cleanup)
                .bind(before)
                .bind(batch as i64)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
            total += done.rows_affected();
            if done.rows_affected() < batch {
                return Ok(total);
            }
        }
    }

    /// SQLite's plan for a claim (`EXPLAIN QUERY PLAN`), to check that it
    /// walks the partial indexes rather than the table.
    pub async fn explain_claim(&self, limit: u32) -> Result<String, Error> {
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {}", self.sql.claim))
            .bind(Uuid::nil())
            .bind(now_us())
            .bind(now_us())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        let lines: Vec<String> = rows
            .iter()
            .filter_map(|row| row.try_get::<String, _>("detail").ok())
            .collect();
        Ok(lines.join("\n"))
    }
}

impl Operator for SqliteOutbox {
    fn migrate(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(SqliteOutbox::migrate(self))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, Error>> {
        Box::pin(SqliteOutbox::backlog(self))
    }

    fn waiting(&self, limit: u32) -> BoxFuture<'_, Result<Vec<Waiting>, Error>> {
        Box::pin(SqliteOutbox::waiting(self, limit))
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>> {
        Box::pin(SqliteOutbox::dead_letters(self, limit))
    }

    fn count_dead_letters(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(SqliteOutbox::count_dead_letters(self))
    }

    fn requeue<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(SqliteOutbox::requeue(self, ids))
    }

    fn requeue_all(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(SqliteOutbox::requeue_all(self))
    }

    fn cleanup(&self, older_than: Duration, batch: u32) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(SqliteOutbox::cleanup(self, older_than, batch))
    }

    fn relay_source(&self) -> BoxFuture<'_, Result<BoxSource<Message>, Error>> {
        Box::pin(async move { Ok(SqliteOutbox::source(self).await?.boxed()) })
    }
}
