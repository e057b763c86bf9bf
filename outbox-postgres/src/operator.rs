//! What an operator asks of an outbox: backlog, dead letters, requeue,
//! cleanup.

use std::time::Duration;

use futures_util::future::BoxFuture;
use outbox_core::{Backlog, DeadLetter, Error, Waiting};
use outbox_core::{BoxSource, Message, Source};
use outbox_sql::Operator;
use sqlx::{Executor, PgConnection, Row};
use uuid::Uuid;

use crate::error::classify;
use crate::row::{decode, Decoded};
use crate::sql::claim_settings;
use crate::PostgresOutbox;

impl PostgresOutbox {
    /// Messages waiting, age of the oldest, and dead letters.
    pub async fn backlog(&self) -> Result<Backlog, Error> {
        let row = sqlx::query(&self.sql.backlog)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        let waiting: i64 = row.try_get(0).map_err(classify)?;
        let oldest: Option<f64> = row.try_get(1).map_err(classify)?;
        let dead: i64 = row.try_get(2).map_err(classify)?;
        Ok(Backlog {
            waiting: waiting as u64,
            oldest_age: oldest.map(|s| Duration::from_secs_f64(s.max(0.0))),
            dead_letters: dead as u64,
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
                let id: Uuid = row.try_get("id")?;
                let attempts: i32 = row.try_get("attempts")?;
                let message = match decode(row, None)? {
                    Decoded::Message(message) => Some(message),
                    Decoded::Malformed { .. } => None,
                };
                Ok(DeadLetter {
                    id,
                    message,
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
        Ok(count as u64)
    }

    /// Puts these dead letters back in the delivery path, attempts reset.
    /// Returns how many were requeued (ids that are not dead letters are
    /// ignored).
    pub async fn requeue(&self, ids: &[Uuid]) -> Result<u64, Error> {
        let done = sqlx::query(&self.sql.requeue)
            .bind(ids.to_vec())
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected())
    }

    /// Puts every dead letter back in the delivery path.
    pub async fn requeue_all(&self) -> Result<u64, Error> {
        let done = sqlx::query(&self.sql.requeue_all)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected())
    }

    /// The plan PostgreSQL chooses for a claim's first round of `limit`
    /// rows (`EXPLAIN`, with the claim transaction's settings), to check
    /// that it stays an index scan on a large backlog.
    pub async fn explain_claim(&self, limit: u32) -> Result<String, Error> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let conn: &mut PgConnection = &mut tx;
        conn.execute(claim_settings(self.config.lease).as_str())
            .await
            .map_err(classify)?;
        let explain = format!("EXPLAIN {}", self.sql.claim);
        let mut query = sqlx::query_scalar(&explain)
            .bind(i64::from(limit))
            .bind(0_i64)
            .bind(Vec::<String>::new())
            .bind(i64::try_from(self.config.batch_bytes).unwrap_or(i64::MAX));
        if self.config.lanes > 1 {
            // Lane 0's plan: every lane's is the same.
            query = query.bind(0_i32);
        }
        let lines: Vec<String> = query.fetch_all(&mut *tx).await.map_err(classify)?;
        tx.rollback().await.map_err(classify)?;
        Ok(lines.join("\n"))
    }

    /// In mark-done mode, deletes rows delivered more than `older_than` ago,
    /// `batch` rows per statement (never one unbounded DELETE), and returns
    /// how many it deleted.
    pub async fn cleanup(&self, older_than: Duration, batch: u32) -> Result<u64, Error> {
        let batch = i64::from(batch.max(1));
        let mut total = 0;
        loop {
            // Not kept as a prepared statement, so planned for each run: a
            // generic plan made while few rows were done could scan the
            // whole table for each batch once many are.
            let done = sqlx::query(&self.sql.cleanup)
                .persistent(false)
                .bind(older_than.as_millis() as i64)
                .bind(batch)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
            total += done.rows_affected();
            if (done.rows_affected() as i64) < batch {
                return Ok(total);
            }
        }
    }
}

impl Operator for PostgresOutbox {
    fn migrate(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(PostgresOutbox::migrate(self))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, Error>> {
        Box::pin(PostgresOutbox::backlog(self))
    }

    fn waiting(&self, limit: u32) -> BoxFuture<'_, Result<Vec<Waiting>, Error>> {
        Box::pin(PostgresOutbox::waiting(self, limit))
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>> {
        Box::pin(PostgresOutbox::dead_letters(self, limit))
    }

    fn count_dead_letters(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(PostgresOutbox::count_dead_letters(self))
    }

    fn requeue<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(PostgresOutbox::requeue(self, ids))
    }

    fn requeue_all(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(PostgresOutbox::requeue_all(self))
    }

    fn cleanup(&self, older_than: Duration, batch: u32) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(PostgresOutbox::cleanup(self, older_than, batch))
    }

    fn relay_source(&self) -> BoxFuture<'_, Result<BoxSource<Message>, Error>> {
        Box::pin(async move { Ok(PostgresOutbox::source(self).await?.boxed()) })
    }
}
