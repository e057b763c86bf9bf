//! The relay's side: claim under a lease, report outcomes, wake on commits
//! made in this process.

use std::collections::HashSet;
use std::time::Duration;

use outbox_core::{Backlog, Claim, ClaimId, Error, Failure, Message, OnDeadLetter, Source};
use sqlx::{Row, SqlitePool};
use uuid::Uuid;

use crate::error::classify;
use crate::row::{decode, Decoded};
use crate::sql::{micros, now_us, placeholders};
use crate::SqliteOutbox;

/// A [`Source`] on one SQLite outbox table, acting as one relay.
///
/// The lease is written into the rows: `lease_owner` is the claim's
/// identity and `leased_until` its end. Reports change only rows whose
/// `lease_owner` is still their claim, so a claim that outlived its lease
/// cannot touch a newer claim of the same rows, even by this relay.
pub struct SqliteSource {
    outbox: SqliteOutbox,
    pool: SqlitePool,
    relay_id: Uuid,
}

impl std::fmt::Debug for SqliteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSource")
            .field("table", &self.outbox.config.table)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

impl SqliteSource {
    pub(crate) fn new(outbox: SqliteOutbox) -> Self {
        let pool = outbox.pool.clone();
        Self {
            outbox,
            pool,
            relay_id: Uuid::now_v7(),
        }
    }

    /// This relay's identity, shown in logs.
    pub fn relay_id(&self) -> Uuid {
        self.relay_id
    }

    /// Runs `prefix (?3, ...)` with the claim as ?1, now as ?2, then the
    /// ids.
    async fn by_ids(&self, prefix: &str, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        // SQLite binds at most 32,766 values per statement.
        for chunk in items.chunks(10_000) {
            let sql = format!("{prefix}{}", placeholders(3, chunk.len()));
            let mut query = sqlx::query(&sql).bind(claim.as_uuid()).bind(now_us());
            for item in chunk {
                query = query.bind(item.id);
            }
            query.execute(&self.pool).await.map_err(classify)?;
        }
        Ok(())
    }

    /// One statement per failure (failures are few), in one transaction.
    async fn fail(
        &self,
        sql: &str,
        claim: ClaimId,
        failures: &[Failure<Message>],
        retry: bool,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let now = now_us();
        for failure in failures {
            let when = if retry {
                now.saturating_add(micros(failure.retry_after))
            } else {
                now
            };
            sqlx::query(sql)
                .bind(i64::from(failure.attempts))
                .bind(&failure.error)
                .bind(when)
                .bind(failure.item.id)
                .bind(claim.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }
}

impl Source for SqliteSource {
    type Item = Message;

    async fn claim(&self, limit: usize) -> Result<Claim<Message>, Error> {
        let claim = ClaimId::new();
        // The lease's end is written into the rows from this clock reading.
        let leased_at = std::time::Instant::now();
        let now = now_us();
        let rows = sqlx::query(&self.outbox.sql.claim)
            .bind(claim.as_uuid())
            .bind(now)
            .bind(now.saturating_add(micros(self.lease())))
            .bind(limit.min(i64::MAX as usize) as i64)
            .bind(i64::try_from(self.outbox.config.batch_bytes).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        // RETURNING gives no order: put the batch back in enqueue order.
        let mut rows: Vec<(i64, _)> = rows
            .into_iter()
            .map(|row| Ok((row.try_get::<i64, _>("seq")?, row)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)?;
        rows.sort_unstable_by_key(|(seq, _)| *seq);
        let mut claimed = Vec::with_capacity(rows.len());
        // When parking, the keys of malformed rows: dead-lettered here, so
        // their later rows (after them, in seq order) must stay behind.
        let mut parked: HashSet<String> = HashSet::new();
        let mut behind = Vec::new();
        let parking = self.outbox.config.on_dead_letter == OnDeadLetter::Park;
        for (_, row) in &rows {
            match decode(row).map_err(classify)? {
                Decoded::Message(message) if parked.contains(&message.ordering_key) => {
                    behind.push(message);
                }
                Decoded::Message(message) => claimed.push(message),
                Decoded::Malformed {
                    key: seq,
                    attempts,
                    reason,
                } => {
                    if let (true, Ok(key)) = (parking, row.try_get::<String, _>("ordering_key")) {
                        parked.insert(key);
                    }
                    tracing::warn!(seq, reason, "malformed outbox row dead-lettered");
                    sqlx::query(&self.outbox.sql.dead_letter_row)
                        .bind(attempts.saturating_add(1))
                        .bind(reason)
                        .bind(now)
                        .bind(seq)
                        .bind(claim.as_uuid())
                        .execute(&self.pool)
                        .await
                        .map_err(classify)?;
                }
            }
        }
        if !behind.is_empty() {
            self.by_ids(&self.outbox.sql.release_prefix, claim, &behind)
                .await?;
        }
        Ok(Claim::leased_since(claim, claimed, leased_at))
    }

    async fn ack(&self, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        self.by_ids(&self.outbox.sql.ack_prefix, claim, items).await
    }

    async fn retry(&self, claim: ClaimId, failures: &[Failure<Message>]) -> Result<(), Error> {
        self.fail(&self.outbox.sql.retry, claim, failures, true)
            .await
    }

    async fn dead_letter(
        &self,
        claim: ClaimId,
        failures: &[Failure<Message>],
    ) -> Result<(), Error> {
        self.fail(&self.outbox.sql.dead_letter, claim, failures, false)
            .await
    }

    async fn release(&self, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        self.by_ids(&self.outbox.sql.release_prefix, claim, items)
            .await
    }

    fn lease(&self) -> Duration {
        self.outbox.config.lease
    }

    async fn wait_for_work(&self) {
        self.outbox.committed.notified().await;
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        self.outbox.backlog().await.map(Some)
    }
}
