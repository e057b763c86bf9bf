//! The relay's side: claim under a lease, report outcomes, wake on NOTIFY.

use std::time::Duration;

use outbox_core::{Backlog, Error, Failure, Message, Source};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::error::classify;
use crate::leader::Leadership;
use crate::row::{decode, Decoded};
use crate::PostgresOutbox;

/// A [`Source`] on one PostgreSQL outbox table, acting as one relay.
///
/// Claims are leases written into the rows (`lease_owner`, `leased_until`).
/// Claims of all relays on a table take turns under a transaction-scoped
/// advisory lock, so each claim sees every lease committed before it; with
/// the claim rule (never a message whose key has an earlier one leased,
/// waiting for its retry, or parked), each key stays in order however many
/// relays run. Reports only touch rows this relay still holds (fencing).
pub struct PostgresSource {
    outbox: PostgresOutbox,
    pool: PgPool,
    relay_id: Uuid,
    listener: Option<Mutex<PgListener>>,
    leadership: Option<Leadership>,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("table", &self.outbox.config.table)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

impl PostgresSource {
    pub(crate) async fn connect(outbox: PostgresOutbox, pool: PgPool) -> Result<Self, Error> {
        let listener = if outbox.config.notify {
            let mut listener = PgListener::connect_with(&pool).await.map_err(classify)?;
            listener
                .listen(&outbox.config.channel())
                .await
                .map_err(classify)?;
            Some(Mutex::new(listener))
        } else {
            None
        };
        let leadership = outbox
            .config
            .leader_only
            .then(|| Leadership::new(pool.clone(), outbox.sql.claim_lock ^ 0x1ead));
        Ok(Self {
            outbox,
            pool,
            relay_id: Uuid::now_v7(),
            listener,
            leadership,
        })
    }

    /// This relay's identity, written into the rows it holds.
    pub fn relay_id(&self) -> Uuid {
        self.relay_id
    }

    /// The outbox this source reads.
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }

    async fn dead_letter_malformed(
        &self,
        conn: &mut sqlx::PgConnection,
        malformed: Vec<(Uuid, i32, String)>,
    ) -> Result<(), Error> {
        for (id, _, reason) in &malformed {
            tracing::warn!(%id, reason, "malformed outbox row dead-lettered");
        }
        let (ids, attempts, errors) = split3(malformed);
        sqlx::query(&self.outbox.sql.dead_letter)
            .bind(ids)
            .bind(attempts)
            .bind(errors)
            .bind(self.relay_id)
            .execute(conn)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

impl PostgresSource {
    /// Runs one report statement while holding the table's claim lock in
    /// shared mode: reports run alongside each other but never while a claim
    /// runs, so every claim sees the outcome of every report before it.
    async fn report<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(self.outbox.sql.claim_lock)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        query.execute(&mut *tx).await.map_err(classify)?;
        tx.commit().await.map_err(classify)
    }
}

fn ids(items: &[Message]) -> Vec<Uuid> {
    items.iter().map(|m| m.id).collect()
}

fn split3(rows: Vec<(Uuid, i32, String)>) -> (Vec<Uuid>, Vec<i32>, Vec<String>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for (a, b, c) in rows {
        out.0.push(a);
        out.1.push(b);
        out.2.push(c);
    }
    out
}

fn failure_columns(failures: &[Failure<Message>]) -> (Vec<Uuid>, Vec<i32>, Vec<String>) {
    split3(
        failures
            .iter()
            .map(|f| {
                (
                    f.item.id,
                    f.attempts.min(i32::MAX as u32) as i32,
                    f.error.clone(),
                )
            })
            .collect(),
    )
}

impl Source for PostgresSource {
    type Item = Message;

    async fn claim(&self, limit: usize) -> Result<Vec<Message>, Error> {
        if let Some(leadership) = &self.leadership {
            if !leadership.is_leader().await {
                return Ok(Vec::new());
            }
        }
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(self.outbox.sql.claim_lock)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        let rows = sqlx::query(&self.outbox.sql.claim)
            .bind(self.relay_id)
            .bind(self.lease().as_millis() as i64)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut malformed = Vec::new();
        for row in &rows {
            let seq: i64 = sqlx::Row::try_get(row, "seq").map_err(classify)?;
            match decode(row).map_err(classify)? {
                Decoded::Message(message) => claimed.push((seq, message)),
                Decoded::Malformed {
                    id,
                    attempts,
                    reason,
                } => malformed.push((id, attempts + 1, reason)),
            }
        }
        if !malformed.is_empty() {
            self.dead_letter_malformed(&mut tx, malformed).await?;
        }
        tx.commit().await.map_err(classify)?;
        // RETURNING has no order; the relay needs enqueue order.
        claimed.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, message)| message).collect())
    }

    async fn ack(&self, items: &[Message]) -> Result<(), Error> {
        self.report(
            sqlx::query(&self.outbox.sql.ack)
                .bind(ids(items))
                .bind(self.relay_id),
        )
        .await
    }

    async fn retry(&self, failures: &[Failure<Message>]) -> Result<(), Error> {
        let (ids, attempts, errors) = failure_columns(failures);
        let waits: Vec<i64> = failures
            .iter()
            .map(|f| f.retry_after.as_millis().min(i64::MAX as u128) as i64)
            .collect();
        self.report(
            sqlx::query(&self.outbox.sql.retry)
                .bind(ids)
                .bind(attempts)
                .bind(errors)
                .bind(waits)
                .bind(self.relay_id),
        )
        .await
    }

    async fn dead_letter(&self, failures: &[Failure<Message>]) -> Result<(), Error> {
        let (ids, attempts, errors) = failure_columns(failures);
        self.report(
            sqlx::query(&self.outbox.sql.dead_letter)
                .bind(ids)
                .bind(attempts)
                .bind(errors)
                .bind(self.relay_id),
        )
        .await
    }

    async fn release(&self, items: &[Message]) -> Result<(), Error> {
        self.report(
            sqlx::query(&self.outbox.sql.release)
                .bind(ids(items))
                .bind(self.relay_id),
        )
        .await
    }

    fn lease(&self) -> Duration {
        self.outbox.config.lease
    }

    async fn wait_for_work(&self) {
        let Some(listener) = &self.listener else {
            return std::future::pending().await;
        };
        let mut listener = listener.lock().await;
        // On a lost connection sqlx reconnects and re-listens; whatever was
        // missed meanwhile is found by the relay's polling.
        if let Err(err) = listener.recv().await {
            tracing::debug!(error = %err, "LISTEN connection failed; polling until it is back");
            drop(listener);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        self.outbox.backlog(&self.pool).await.map(Some)
    }
}
