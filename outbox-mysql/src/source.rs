//! The relay's side: claim under a lease, report outcomes, wake on commits
//! made in this process.

use std::time::Duration;

use outbox_core::{Backlog, Error, Failure, Message, Source};
use sqlx::{Connection, MySqlConnection, MySqlPool, Row};
use uuid::Uuid;

use crate::error::classify;
use crate::leader::Leadership;
use crate::row::{decode, Decoded};
use crate::sql::placeholders;
use crate::MysqlOutbox;

/// A [`Source`] on one MySQL outbox table, acting as one relay. See the
/// crate docs for how claims keep each key in order across relays.
pub struct MysqlSource {
    outbox: MysqlOutbox,
    pool: MySqlPool,
    relay_id: Uuid,
    leadership: Option<Leadership>,
}

impl std::fmt::Debug for MysqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlSource")
            .field("table", &self.outbox.config.table)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

impl MysqlSource {
    pub(crate) fn new(outbox: MysqlOutbox, pool: MySqlPool) -> Self {
        // Lock names are at most 64 characters: name the table by a hash.
        let leadership = outbox.config.leader_only.then(|| {
            let hash = outbox
                .config
                .table
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
                });
            Leadership::new(pool.clone(), format!("outbox-leader-{hash:016x}"))
        });
        Self {
            outbox,
            pool,
            relay_id: Uuid::now_v7(),
            leadership,
        }
    }

    /// This relay's identity, written into the rows it holds.
    pub fn relay_id(&self) -> Uuid {
        self.relay_id
    }

    /// Runs `work` in a transaction holding the claim row in share mode:
    /// reports run alongside each other, never during a claim.
    async fn report<F>(&self, work: F) -> Result<(), Error>
    where
        F: for<'c> FnOnce(&'c mut MySqlConnection) -> futures_like::BoxFuture<'c>,
    {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query(&self.outbox.sql.report_lock)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        work(&mut tx).await?;
        tx.commit().await.map_err(classify)
    }

    /// Runs `prefix (?, ...)` with the relay id first, then the ids.
    async fn by_ids(&self, prefix: &str, items: &[Message]) -> Result<(), Error> {
        let sql = format!("{prefix}{}", placeholders(items.len()));
        let relay = self.relay_id;
        let ids: Vec<Uuid> = items.iter().map(|m| m.id).collect();
        self.report(move |conn| {
            Box::pin(async move {
                let mut query = sqlx::query(&sql).bind(relay);
                for id in ids {
                    query = query.bind(id);
                }
                query.execute(conn).await.map_err(classify)?;
                Ok(())
            })
        })
        .await
    }

    /// One statement per failure (failures are few), in one transaction.
    async fn fail(
        &self,
        sql: String,
        failures: &[Failure<Message>],
        with_wait: bool,
    ) -> Result<(), Error> {
        let relay = self.relay_id;
        let rows: Vec<(i32, String, i64, Uuid)> = failures
            .iter()
            .map(|f| {
                (
                    f.attempts.min(i32::MAX as u32) as i32,
                    f.error.clone(),
                    f.retry_after.as_micros().min(i64::MAX as u128) as i64,
                    f.item.id,
                )
            })
            .collect();
        self.report(move |conn| {
            Box::pin(async move {
                for (attempts, error, wait_us, id) in rows {
                    let mut query = sqlx::query(&sql).bind(attempts).bind(error);
                    if with_wait {
                        query = query.bind(wait_us);
                    }
                    query
                        .bind(id)
                        .bind(relay)
                        .execute(&mut *conn)
                        .await
                        .map_err(classify)?;
                }
                Ok(())
            })
        })
        .await
    }
}

/// Makes the connection's next transaction READ COMMITTED: its scans then
/// take no gap locks. Under REPEATABLE READ a claim's scan locks the gap at
/// the end of the `waiting` index, where every writer inserts, and InnoDB
/// settles the resulting writer-versus-claim waits as deadlocks, failing the
/// application's transaction. Claims still take turns on the claim row, so
/// nothing else changes.
pub(crate) async fn read_committed(conn: &mut MySqlConnection) -> Result<(), Error> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .execute(conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// A boxed future borrowing a connection, for [`MysqlSource::report`].
mod futures_like {
    use std::future::Future;
    use std::pin::Pin;

    pub type BoxFuture<'c> =
        Pin<Box<dyn Future<Output = Result<(), outbox_core::Error>> + Send + 'c>>;
}

impl Source for MysqlSource {
    type Item = Message;

    async fn claim(&self, limit: usize) -> Result<Vec<Message>, Error> {
        if let Some(leadership) = &self.leadership {
            if !leadership.is_leader().await {
                return Ok(Vec::new());
            }
        }
        let sql = &self.outbox.sql;
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        read_committed(&mut conn).await?;
        let mut tx = conn.begin().await.map_err(classify)?;
        sqlx::query(&sql.claim_lock)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let rows = sqlx::query(&sql.claim)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        if rows.is_empty() {
            tx.commit().await.map_err(classify)?;
            return Ok(Vec::new());
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut claimed = Vec::with_capacity(rows.len());
        let mut malformed = Vec::new();
        for row in &rows {
            seqs.push(row.try_get::<u64, _>("seq").map_err(classify)?);
            match decode(row).map_err(classify)? {
                Decoded::Message(message) => claimed.push(message),
                Decoded::Malformed {
                    id,
                    attempts,
                    reason,
                } => malformed.push((id, attempts + 1, reason)),
            }
        }
        let lease_sql = format!("{}{}", sql.lease_prefix, placeholders(seqs.len()));
        let mut lease = sqlx::query(&lease_sql)
            .bind(self.relay_id)
            .bind(self.lease().as_micros() as i64);
        for seq in &seqs {
            lease = lease.bind(*seq);
        }
        lease.execute(&mut *tx).await.map_err(classify)?;
        for (id, attempts, reason) in malformed {
            tracing::warn!(%id, reason, "malformed outbox row dead-lettered");
            sqlx::query(&sql.dead_letter)
                .bind(attempts)
                .bind(reason)
                .bind(id)
                .bind(self.relay_id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(claimed)
    }

    async fn ack(&self, items: &[Message]) -> Result<(), Error> {
        self.by_ids(&self.outbox.sql.ack_prefix, items).await
    }

    async fn retry(&self, failures: &[Failure<Message>]) -> Result<(), Error> {
        self.fail(self.outbox.sql.retry.clone(), failures, true)
            .await
    }

    async fn dead_letter(&self, failures: &[Failure<Message>]) -> Result<(), Error> {
        self.fail(self.outbox.sql.dead_letter.clone(), failures, false)
            .await
    }

    async fn release(&self, items: &[Message]) -> Result<(), Error> {
        self.by_ids(&self.outbox.sql.release_prefix, items).await
    }

    fn lease(&self) -> Duration {
        self.outbox.config.lease
    }

    async fn wait_for_work(&self) {
        self.outbox.committed.notified().await;
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        self.outbox.backlog(&self.pool).await.map(Some)
    }
}
