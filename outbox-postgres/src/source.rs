//! The relay's side: claim a batch inside a transaction that holds its rows
//! locked, report outcomes on that transaction, commit when the whole batch
//! is reported; wake on NOTIFY.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use outbox_core::{Backlog, Claim, ClaimId, Error, Failure, Message, OnDeadLetter, Source};
use outbox_sql::{HeldBatches, Leadership, Report, TransactionReports};
use sqlx::{Executor, PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::error::classify;
use crate::idle::IdleListing;
use crate::leader::PostgresLeaderLock;
use crate::row::{decode, text, Decoded};
use crate::schema::lane_index_name;
use crate::sql::{claim_settings, CANDIDATES_SAVEPOINT};
use crate::wake::Wake;
use crate::PostgresOutbox;

/// Most candidate rounds of one claim (see `claim`).
const CLAIM_ROUNDS: usize = 4;

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

    /// Claims up to `limit` rows (see [`Source::claim`]).
    async fn claim_rows(&self, limit: usize) -> Result<Claim<Message>, Error> {
        self.held.forget_expired(self.lease());
        let mut tx = self.pool.begin().await.map_err(classify)?;
        // The lease, the planner's settings, the lane (with lanes) and the
        // savepoint the claim can give rows back to (see `claim_settings`),
        // in one round trip.
        let lanes = self.outbox.config.lanes;
        let start = self.next_lane.fetch_add(1, Ordering::Relaxed) % lanes;
        let pick = self.outbox.sql.pick_lane(start);
        let begin = match &pick {
            Some(pick) => format!(
                "{}; {pick}; {CANDIDATES_SAVEPOINT}",
                claim_settings(self.lease())
            ),
            None => format!("{}; {CANDIDATES_SAVEPOINT}", claim_settings(self.lease())),
        };
        let conn: &mut PgConnection = &mut tx;
        let picked = conn.fetch_all(begin.as_str()).await.map_err(classify)?;
        let lane: Option<i32> = match picked.first() {
            Some(row) => Some(row.try_get("l").map_err(classify)?),
            None => None,
        };
        // The claim's scans, in turn: without lanes, the whole table; with
        // lanes, the lane it holds, then (when that left the batch under
        // half full, or when every lane with work was another claim's) all
        // the other lanes, stepping over the rows other batches hold.
        let sql = &self.outbox.sql;
        let scans: Vec<(&str, Option<i32>)> = match (&pick, lane) {
            (None, _) => vec![(&sql.claim, None)],
            (Some(_), Some(lane)) => vec![
                (&sql.claim, Some(lane)),
                (&sql.claim_outside_lane, Some(lane)),
            ],
            (Some(_), None) => vec![(&sql.claim_outside_lane, Some(-1))],
        };
        // In rounds: when most candidates were held back, claim again past them,
        // leaving out their keys, so a key with more messages than a batch
        // behind a held or failing head cannot fill the claim.
        let mut claimed = Vec::with_capacity(limit);
        let mut malformed = Vec::new();
        // The `seq` and `attempts` of every row returned or dead-lettered,
        // and whether the claim locked any other row.
        let mut taken: HashMap<i64, i32> = HashMap::new();
        let mut left_locked = false;
        let mut passed_over: HashSet<String> = HashSet::new();
        // When parking, the keys of malformed rows and their seq: such a
        // row is dead-lettered, so its key's later rows must stay behind it.
        let mut parked: HashMap<String, i64> = HashMap::new();
        let parking = self.outbox.config.on_dead_letter == OnDeadLetter::Park;
        // Payload bytes claimed so far, against the byte budget.
        let mut bytes = 0_usize;
        let mut budget_spent = false;
        for (statement, lane) in scans {
            let mut after = 0_i64;
            for _ in 0..CLAIM_ROUNDS {
                let asked = limit - claimed.len();
                let mut query = sqlx::query(statement)
                    .bind(asked as i64)
                    .bind(after)
                    .bind(
                        passed_over
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<&str>>(),
                    )
                    .bind(self.outbox.config.batch_bytes.saturating_sub(bytes) as i64);
                if let Some(lane) = lane {
                    query = query.bind(lane);
                }
                let rows = query.fetch_all(&mut *tx).await.map_err(classify)?;
                // Over the byte budget, the rows came without their payloads:
                // take those that fit, read theirs.
                let over_budget = match rows.first() {
                    Some(row) => row.try_get::<bool, _>("over_budget").map_err(classify)?,
                    None => false,
                };
                let mut payloads = HashMap::new();
                if over_budget {
                    let within = self.within_budget(&rows, bytes, claimed.is_empty())?;
                    budget_spent = true;
                    payloads = sqlx::query_as::<_, (i64, Vec<u8>)>(&self.outbox.sql.payloads)
                        .bind(within)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(classify)?
                        .into_iter()
                        .collect();
                }
                let mut held_back = false;
                for row in &rows {
                    let seq: i64 = row.try_get("seq").map_err(classify)?;
                    after = after.max(seq);
                    let held = row.try_get::<bool, _>("held").map_err(classify)?;
                    // Past the budget: left, as the claim's last rows.
                    if over_budget && !held && !payloads.contains_key(&seq) {
                        left_locked = true;
                        continue;
                    }
                    if held {
                        left_locked = true;
                        // A key that cannot be read passes over nothing: its
                        // head is dead-lettered as malformed.
                        if let Ok(Some(key)) = text(row, "ordering_key") {
                            passed_over.insert(key);
                        }
                        held_back = true;
                        continue;
                    }
                    taken.insert(seq, row.try_get("attempts").map_err(classify)?);
                    match decode(row, payloads.remove(&seq)).map_err(classify)? {
                        Decoded::Message(message) => {
                            bytes = bytes.saturating_add(message.payload.len());
                            claimed.push((seq, message));
                        }
                        Decoded::Malformed {
                            key: id,
                            attempts,
                            reason,
                        } => {
                            tracing::warn!(%id, reason, "malformed outbox row dead-lettered");
                            if let (true, Ok(Some(key))) = (parking, text(row, "ordering_key")) {
                                let first = parked.entry(key).or_insert(seq);
                                *first = (*first).min(seq);
                            }
                            malformed.push((seq, id, attempts + 1, reason));
                        }
                    }
                }
                // Another round only for a claim mostly held back: a few held
                // rows simply wait for the next claim, which costs less than a
                // round of statements for the rest.
                if !held_back || budget_spent || rows.len() < asked || claimed.len() * 2 >= limit {
                    break;
                }
            }
            if budget_spent || claimed.len() * 2 >= limit {
                break;
            }
        }
        // Later rows of a parked key are left; the next claim finds their
        // head dead (or, until this claim commits, locked by it).
        claimed.retain(|(seq, m)| {
            let keep = parked.get(&m.ordering_key).is_none_or(|head| seq < head);
            if !keep {
                left_locked = true;
                taken.remove(seq);
            }
            keep
        });
        if left_locked && !taken.is_empty() {
            let kept = self.relock(&mut tx, &taken).await?;
            claimed.retain(|(seq, _)| kept.contains(seq));
            malformed.retain(|m| kept.contains(&m.0));
        }
        if !malformed.is_empty() {
            let (ids, attempts, reasons) = malformed.into_iter().fold(
                (Vec::new(), Vec::new(), Vec::new()),
                |mut columns, (_, id, attempts, reason)| {
                    columns.0.push(id);
                    columns.1.push(attempts);
                    columns.2.push(reason);
                    columns
                },
            );
            sqlx::query(&self.outbox.sql.dead_letter)
                .bind(ids)
                .bind(attempts)
                .bind(reasons)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        if claimed.is_empty() {
            tx.commit().await.map_err(classify)?;
            return Ok(Claim::empty());
        }
        // The claim returns rows in no particular order; the relay needs
        // enqueue order.
        claimed.sort_unstable_by_key(|(seq, _)| *seq);
        let claimed: Vec<Message> = claimed.into_iter().map(|(_, message)| message).collect();
        let claim = ClaimId::new();
        self.held.hold(claim, claimed.iter().map(|m| m.id), tx);
        Ok(Claim::new(claim, claimed))
    }

    /// The `seq` of the claim's rows not held back, in `seq` order, while
    /// their payloads and the `claimed` bytes already taken add up to at
    /// most the byte budget: at least one when the claim holds nothing yet
    /// (`first`), so a row larger than the budget goes alone.
    fn within_budget(
        &self,
        rows: &[sqlx::postgres::PgRow],
        claimed: usize,
        first: bool,
    ) -> Result<Vec<i64>, Error> {
        let mut candidates = Vec::with_capacity(rows.len());
        for row in rows {
            if !row.try_get::<bool, _>("held").map_err(classify)? {
                let seq: i64 = row.try_get("seq").map_err(classify)?;
                let size: Option<i32> = row.try_get("size").map_err(classify)?;
                candidates.push((seq, size.unwrap_or(0).max(0) as usize));
            }
        }
        candidates.sort_unstable();
        let mut bytes = claimed;
        let mut within = Vec::new();
        for (seq, size) in candidates {
            if !(first && within.is_empty())
                && bytes.saturating_add(size) > self.outbox.config.batch_bytes
            {
                break;
            }
            bytes = bytes.saturating_add(size);
            within.push(seq);
        }
        Ok(within)
    }

    /// Gives back every row the claim locked and does not use, keeping the
    /// `taken` ones (`seq` to `attempts` as read): rolls back to the
    /// savepoint taken before the candidates were locked (PostgreSQL then
    /// releases the row locks taken since) and locks the taken rows again,
    /// returning the `seq` of those still as read and not held back.
    ///
    /// A row kept locked unused (held back behind another batch's row of
    /// its key, or past the byte budget) held its key back from every
    /// other claim until this batch ended: under a backlog deeper than a
    /// batch per key, most of several relays' claims were such rows, and
    /// the relays fell behind the writers (issue 28, item 0). Between the
    /// rollback and the new locks another claim may take a row; the look-back
    /// runs again on what is locked, so a key keeps only its prefix.
    async fn relock(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        taken: &HashMap<i64, i32>,
    ) -> Result<HashSet<i64>, Error> {
        let conn: &mut PgConnection = &mut *tx;
        conn.execute("ROLLBACK TO SAVEPOINT candidates")
            .await
            .map_err(classify)?;
        let rows: Vec<(i64, i32)> = sqlx::query_as(&self.outbox.sql.relock)
            .bind(taken.keys().copied().collect::<Vec<i64>>())
            .fetch_all(&mut **tx)
            .await
            .map_err(classify)?;
        Ok(rows
            .into_iter()
            .filter(|(seq, attempts)| taken.get(seq) == Some(attempts))
            .map(|(seq, _)| seq)
            .collect())
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
