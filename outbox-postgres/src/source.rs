//! The relay's side: claim a batch inside a transaction that holds its rows
//! locked, report outcomes on that transaction, commit when the whole batch
//! is reported; wake on NOTIFY.

mod claim;

use std::collections::HashSet;
use std::sync::atomic::AtomicU16;
use std::time::Duration;

use outbox_core::{Backlog, Claim, ClaimId, Error, Failure, Message, Source};
use outbox_sql::{HeldBatches, Leadership, Report, TransactionReports};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::classify;
use crate::idle::IdleListing;
use crate::leader::PostgresLeaderLock;
use crate::schema::lane_index_name;
use crate::wake::Wake;
use crate::PostgresOutbox;

/// A [`Source`] on one PostgreSQL outbox table, acting as one relay.
///
/// **The lease is the claim's transaction.** A claim opens a transaction,
/// locks the batch's rows (`FOR UPDATE SKIP LOCKED`) and keeps it open while
/// the relay publishes; reports run on that transaction and the last one
/// commits it. A relay that dies loses its claim when its connection ends;
/// one that stalls loses it after the lease, when PostgreSQL ends its idle
/// transaction (`idle_in_transaction_session_timeout`). Either way the
/// transaction rolls back, so a stale relay's reports change nothing
/// (fencing). Rows are written once, when delivered: no lease is written
/// into them.
///
/// **Order.** A claim skips rows locked by other batches, and returns a row
/// only if every earlier row of its key that is still in the table (not
/// delivered, not dead unless parking) is in the same claim. Rows of a key
/// another batch holds, or whose earlier row waits for a retry, stay behind.
pub struct PostgresSource {
    outbox: PostgresOutbox,
    pool: PgPool,
    relay_id: Uuid,
    /// With `notify`: wake-ups, and this relay's place on the idle list.
    idle: Option<IdleListing>,
    leadership: Option<Leadership<PostgresLeaderLock>>,
    /// Open batches by claim.
    held: HeldBatches<Transaction<'static, Postgres>>,
    /// With lanes: the lane the next claim tries first.
    next_lane: AtomicU16,
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
    pub(crate) async fn connect(outbox: PostgresOutbox) -> Result<Self, Error> {
        let pool = outbox.pool.clone();
        check_lane_index(&outbox).await?;
        let relay_id = Uuid::now_v7();
        let idle = if outbox.config.notify {
            let wake = Wake::listen(&pool, &outbox.config.channel()).await?;
            let lease = outbox.config.lease;
            Some(IdleListing::new(
                wake,
                pool.clone(),
                relay_id,
                &outbox.sql,
                lease,
            ))
        } else {
            None
        };
        let leadership = outbox.config.leader_only.then(|| {
            let lock = PostgresLeaderLock {
                pool: pool.clone(),
                key: outbox.sql.table_lock ^ 0x1ead,
                lease: outbox.config.lease,
            };
            Leadership::new(lock, outbox.config.lease)
        });
        Ok(Self {
            outbox,
            pool,
            relay_id,
            idle,
            leadership,
            held: HeldBatches::default(),
            next_lane: AtomicU16::new(0),
        })
    }

    /// This relay's identity, shown in logs.
    pub fn relay_id(&self) -> Uuid {
        self.relay_id
    }

    /// The outbox this source reads.
    pub fn outbox(&self) -> &PostgresOutbox {
        &self.outbox
    }
}

impl TransactionReports for PostgresSource {
    type Tx = Transaction<'static, Postgres>;

    fn held(&self) -> &HeldBatches<Self::Tx> {
        &self.held
    }

    async fn run_report(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        mine: &HashSet<Uuid>,
        report: &Report<'_>,
    ) -> Result<(), Error> {
        let sql = &self.outbox.sql;
        let query = match report {
            Report::Release => return Ok(()),
            Report::Ack => sqlx::query(&sql.ack).bind(mine.iter().copied().collect::<Vec<Uuid>>()),
            Report::Retry(failures) => {
                let mine: Vec<&Failure<Message>> = failures
                    .iter()
                    .filter(|f| mine.contains(&f.item.id))
                    .collect();
                let (ids, attempts, errors) = failure_columns(&mine);
                let waits: Vec<i64> = mine
                    .iter()
                    .map(|f| f.retry_after.as_millis().min(i64::MAX as u128) as i64)
                    .collect();
                sqlx::query(&sql.retry)
                    .bind(ids)
                    .bind(attempts)
                    .bind(errors)
                    .bind(waits)
            }
            Report::DeadLetter(failures) => {
                let mine: Vec<&Failure<Message>> = failures
                    .iter()
                    .filter(|f| mine.contains(&f.item.id))
                    .collect();
                let (ids, attempts, errors) = failure_columns(&mine);
                sqlx::query(&sql.dead_letter)
                    .bind(ids)
                    .bind(attempts)
                    .bind(errors)
            }
        };
        query.execute(&mut **tx).await.map_err(classify)?;
        Ok(())
    }

    async fn commit(tx: Self::Tx) -> Result<(), Error> {
        tx.commit().await.map_err(classify)
    }
}

/// With lanes, fails unless the table has the index of that lane count:
/// relays configured with another count than the migration's would scan a
/// missing index, or one that sorts keys into other lanes.
async fn check_lane_index(outbox: &PostgresOutbox) -> Result<(), Error> {
    let config = &outbox.config;
    if config.lanes <= 1 {
        return Ok(());
    }
    let index = lane_index_name(config);
    let found: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("\"{}\".\"{index}\"", config.schema))
        .fetch_one(&outbox.pool)
        .await
        .map_err(classify)?;
    if found {
        return Ok(());
    }
    Err(Error::permanent(format!(
        "lanes = {}: the outbox table has no lane index \"{}\".\"{index}\"; run migrate \
         (or the schema SQL) with lanes = {} first, or set lanes to the count the table \
         was migrated with",
        config.lanes, config.schema, config.lanes
    )))
}

fn failure_columns(failures: &[&Failure<Message>]) -> (Vec<Uuid>, Vec<i32>, Vec<String>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for f in failures {
        out.0.push(f.item.id);
        out.1.push(f.attempts.min(i32::MAX as u32) as i32);
        out.2.push(f.error.clone());
    }
    out
}

impl Source for PostgresSource {
    type Item = Message;

    async fn claim(&self, limit: usize) -> Result<Claim<Message>, Error> {
        if let Some(leadership) = &self.leadership {
            if !leadership.is_leader().await {
                if let Some(idle) = &self.idle {
                    idle.standing_by().await;
                }
                return Ok(Claim::empty());
            }
        }
        let claim = self.claim_rows(limit).await?;
        if let Some(idle) = &self.idle {
            idle.claimed(claim.is_empty()).await;
        }
        Ok(claim)
    }

    async fn ack(&self, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        self.ack_batch(claim, items).await
    }

    async fn retry(&self, claim: ClaimId, failures: &[Failure<Message>]) -> Result<(), Error> {
        self.retry_batch(claim, failures).await
    }

    async fn dead_letter(
        &self,
        claim: ClaimId,
        failures: &[Failure<Message>],
    ) -> Result<(), Error> {
        self.dead_letter_batch(claim, failures).await
    }

    async fn release(&self, claim: ClaimId, items: &[Message]) -> Result<(), Error> {
        self.release_batch(claim, items).await
    }

    fn lease(&self) -> Duration {
        self.outbox.config.lease
    }

    async fn wait_for_work(&self) {
        match &self.idle {
            Some(idle) => idle.wait_for_work().await,
            None => std::future::pending().await,
        }
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        self.outbox.backlog().await.map(Some)
    }
}
