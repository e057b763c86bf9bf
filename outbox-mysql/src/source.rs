//! The relay's side: claim a batch inside a transaction that holds its rows
//! locked, report outcomes on that transaction, commit when the whole batch
//! is reported; wake on commits made in this process.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox_core::{Backlog, Claim, ClaimId, Error, Failure, Message, OnDeadLetter, Source};
use outbox_sql::{HeldBatches, Leadership, Report, TransactionReports};
use sqlx::{MySqlPool, Row};
use uuid::Uuid;

use crate::claim::ClaimTx;
use crate::error::classify;
use crate::leader::MysqlLeaderLock;
use crate::row::{decode, Decoded};
use crate::sql::placeholders;
use crate::MysqlOutbox;

/// Most candidate rounds of one claim (see [`MysqlSource::claim_on`]).
const CLAIM_ROUNDS: usize = 4;

/// A [`Source`] on one MySQL outbox table, acting as one relay.
///
/// **The lease is the claim's transaction**, as on PostgreSQL: a claim
/// locks its rows (`FOR UPDATE SKIP LOCKED`) and keeps its transaction open
/// while the relay publishes; reports run on it and the last one commits.
/// A relay that dies or stalls past the lease loses its connection (the
/// claim sets its `wait_timeout` to the lease), the transaction rolls back, and a stale relay's reports
/// change nothing (fencing). Rows are written once, when their outcome is
/// known.
///
/// **Order.** A claim returns a row only if every earlier row of its key
/// still in the table (not delivered, not dead unless parking) is in the
/// same claim. Rows of a key another batch holds, or whose earlier row waits
/// for a retry, stay behind.
pub struct MysqlSource {
    outbox: MysqlOutbox,
    pool: MySqlPool,
    relay_id: Uuid,
    leadership: Option<Leadership<MysqlLeaderLock>>,
    held: HeldBatches<ClaimTx>,
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
    pub(crate) fn new(outbox: MysqlOutbox) -> Self {
        let pool = outbox.pool.clone();
        let leadership = outbox.config.leader_only.then(|| {
            let lock = MysqlLeaderLock {
                pool: pool.clone(),
                table: outbox.config.table.clone(),
                lease: outbox.config.lease,
            };
            Leadership::new(lock, outbox.config.lease)
        });
        Self {
            outbox,
            pool,
            relay_id: Uuid::now_v7(),
            leadership,
            held: HeldBatches::default(),
        }
    }

    /// This relay's identity, shown in logs.
    pub fn relay_id(&self) -> Uuid {
        self.relay_id
    }

    /// Claims up to `limit` rows on `tx`, in rounds. A round locks the next
    /// waiting rows as candidates and keeps those no earlier row of their
    /// key holds back. When most were held back, the next round looks past
    /// the last candidate and leaves out their keys: a key whose head waits
    /// for its retry (or another batch), with more messages behind it than a
    /// batch, would otherwise fill every claim with rows that stay behind
    /// and hold back every other key. When the rounds locked rows the claim
    /// does not return, it gives them back (see [`Self::relock`]); then it
    /// dead-letters the malformed rows it kept.
    async fn claim_on(&self, tx: &mut ClaimTx, limit: usize) -> Result<Vec<Message>, Error> {
        let mut claimed = Vec::with_capacity(limit);
        let mut malformed = Vec::new();
        // Every row returned or dead-lettered, by `seq`, with its
        // `attempts` and key as read; and whether the claim locked others.
        let mut taken: HashMap<u64, (i32, String)> = HashMap::new();
        let mut left_locked = false;
        let mut passed_over: HashSet<String> = HashSet::new();
        // When parking, the keys of malformed rows (dead-lettered here) and
        // their seq: the key's later rows must stay behind them.
        let mut parked: HashMap<String, u64> = HashMap::new();
        let parking = self.outbox.config.on_dead_letter == OnDeadLetter::Park;
        let mut after = None;
        // Payload bytes claimed so far, against the byte budget.
        let mut bytes = 0_usize;
        let mut budget_spent = false;
        // Payloads too large to come with their rows, read apart.
        let mut payloads: HashMap<u64, Vec<u8>> = HashMap::new();
        for _ in 0..CLAIM_ROUNDS {
            let asked = limit - claimed.len();
            // A payload up to this size comes with its row: the rows of a
            // claim then bring at most the budget between them.
            let inline = self.outbox.config.batch_bytes / limit.max(1);
            let rows = self
                .candidates(tx, asked, after, &passed_over, inline)
                .await?;
            let mut candidates = Vec::with_capacity(rows.len());
            let mut apart = Vec::new();
            for row in &rows {
                let seq: u64 = row.try_get("seq").map_err(classify)?;
                let size: Option<i64> = row.try_get("size").map_err(classify)?;
                let size = usize::try_from(size.unwrap_or(0)).unwrap_or(0);
                // Past the budget (the first row of a claim excepted):
                // locked and left, with every later candidate, as the
                // claim's last rows.
                let first = claimed.is_empty() && candidates.is_empty();
                if !first && bytes.saturating_add(size) > self.outbox.config.batch_bytes {
                    budget_spent = true;
                    left_locked = true;
                    break;
                }
                bytes = bytes.saturating_add(size);
                if size > inline {
                    apart.push(seq);
                }
                let key: String = row.try_get("ordering_key").map_err(classify)?;
                candidates.push((seq, key, row));
            }
            if !apart.is_empty() {
                payloads.extend(self.payloads(tx, &apart).await?);
            }
            let Some(last) = candidates.iter().map(|(seq, _, _)| *seq).max() else {
                break;
            };
            let keys: Vec<(u64, &str)> = candidates
                .iter()
                .map(|(seq, key, _)| (*seq, key.as_str()))
                .collect();
            let blockers = self.blockers(tx, &keys).await?;
            let mut held_back = false;
            for (seq, key, row) in candidates {
                if blockers.get(&key).is_some_and(|first| *first < seq) {
                    passed_over.insert(key);
                    held_back = true;
                    left_locked = true;
                    continue;
                }
                let attempts: i32 = row.try_get("attempts").map_err(classify)?;
                match decode(row, payloads.remove(&seq)).map_err(classify)? {
                    Decoded::Message(message) => {
                        tx.seqs.insert(message.id, seq);
                        claimed.push(message);
                    }
                    Decoded::Malformed {
                        key: id,
                        attempts,
                        reason,
                    } => {
                        tracing::warn!(%id, reason, "malformed outbox row dead-lettered");
                        malformed.push((seq, attempts + 1, reason));
                        if parking {
                            parked.entry(key.clone()).or_insert(seq);
                        }
                    }
                }
                taken.insert(seq, (attempts, key));
            }
            // Another round only for a claim mostly held back: a few held
            // rows simply wait for the next claim, which costs less than a
            // round of statements for the rest.
            if !held_back || budget_spent || rows.len() < asked || claimed.len() * 2 >= limit {
                break;
            }
            after = Some(last);
        }
        // Later rows of a parked key are left; the next claim finds their
        // head dead (or, until this claim commits, locked by it).
        claimed.retain(|m| {
            let seq = tx.seqs.get(&m.id).copied().unwrap_or_default();
            let keep = parked.get(&m.ordering_key).is_none_or(|head| seq < *head);
            if !keep {
                left_locked = true;
                taken.remove(&seq);
            }
            keep
        });
        if left_locked && !taken.is_empty() {
            let kept = self.relock(tx, &taken).await?;
            tx.seqs.retain(|_, seq| kept.contains(seq));
            claimed.retain(|m| tx.seqs.contains_key(&m.id));
            malformed.retain(|m| kept.contains(&m.0));
        }
        // One statement per malformed row: they are few.
        for (seq, attempts, reason) in malformed {
            sqlx::query(&self.outbox.sql.dead_letter)
                .bind(attempts)
                .bind(reason)
                .bind(seq)
                .execute(&mut *tx.conn)
                .await
                .map_err(classify)?;
        }
        Ok(claimed)
    }

    /// Gives back every row the claim locked and does not use, keeping the
    /// `taken` ones (`seq` to `attempts` and key as read): InnoDB keeps a
    /// row's lock until the transaction ends, even past a rollback to a
    /// savepoint, so the claim rolls its transaction back, starts another
    /// and locks the taken rows again, returning the `seq` of those still as
    /// read and not held back by an earlier row of their key.
    ///
    /// A row kept locked unused (held back behind another batch's row of
    /// its key, or past the byte budget) held its key back from every
    /// other claim until this batch ended: under a backlog deeper than a
    /// batch per key, most of several relays' claims were such rows, and
    /// the relays fell behind the writers (issue 28, item 0). Between the
    /// rollback and the new locks another claim may take a row; the
    /// look-back runs again on what is locked, so a key keeps only its
    /// prefix.
    async fn relock(
        &self,
        tx: &mut ClaimTx,
        taken: &HashMap<u64, (i32, String)>,
    ) -> Result<HashSet<u64>, Error> {
        tx.restart().await?;
        let seqs: Vec<u64> = taken.keys().copied().collect();
        let seqs = serde_json::to_string(&seqs).expect("numbers serialize");
        let rows: Vec<(u64, i32)> = sqlx::query_as(&self.outbox.sql.relock)
            .bind(seqs)
            .fetch_all(&mut *tx.conn)
            .await
            .map_err(classify)?;
        let locked: Vec<(u64, &str)> = rows
            .into_iter()
            .filter_map(|(seq, attempts)| match taken.get(&seq) {
                Some((read, key)) if *read == attempts => Some((seq, key.as_str())),
                _ => None,
            })
            .collect();
        if locked.is_empty() {
            return Ok(HashSet::new());
        }
        let blockers = self.blockers(tx, &locked).await?;
        Ok(locked
            .into_iter()
            .filter(|(seq, key)| blockers.get(*key).is_none_or(|first| first > seq))
            .map(|(seq, _)| seq)
            .collect())
    }

    /// The next `limit` waiting rows after `after` (from the first without
    /// it), leaving out the keys in `passed_over`, locked on `tx`; their
    /// payloads up to `inline` bytes come with them.
    async fn candidates(
        &self,
        tx: &mut ClaimTx,
        limit: usize,
        after: Option<u64>,
        passed_over: &HashSet<String>,
        inline: usize,
    ) -> Result<Vec<sqlx::mysql::MySqlRow>, Error> {
        let sql = &self.outbox.sql;
        let inline = i64::try_from(inline).unwrap_or(i64::MAX);
        let Some(after) = after else {
            return sqlx::query(&sql.claim)
                .bind(inline)
                .bind(limit as i64)
                .fetch_all(&mut *tx.conn)
                .await
                .map_err(classify);
        };
        let statement = format!(
            "{}{} ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED",
            sql.claim_past,
            placeholders(passed_over.len())
        );
        let mut query = sqlx::query(&statement).bind(inline).bind(after);
        for key in passed_over {
            query = query.bind(key.as_str());
        }
        query
            .bind(limit as i64)
            .fetch_all(&mut *tx.conn)
            .await
            .map_err(classify)
    }

    /// The payloads of these rows (locked by `tx`), by `seq`.
    async fn payloads(
        &self,
        tx: &mut ClaimTx,
        seqs: &[u64],
    ) -> Result<HashMap<u64, Vec<u8>>, Error> {
        let seqs = serde_json::to_string(seqs).expect("numbers serialize");
        let rows = sqlx::query_as::<_, (u64, Vec<u8>)>(&self.outbox.sql.payloads)
            .bind(seqs)
            .fetch_all(&mut *tx.conn)
            .await
            .map_err(classify)?;
        Ok(rows.into_iter().collect())
    }

    /// Per candidate key, the first earlier row left in the table outside
    /// the candidates: waiting (held by another batch, or for its retry),
    /// or dead when parking. Grouped by the key's bytes: the column's
    /// collation (case- and accent-insensitive, trailing spaces ignored by
    /// default) would fold look-alike keys into one group named after
    /// either of them. Run after the candidates are locked, it sees every
    /// report committed before it; one committed later can only have made
    /// it more careful.
    async fn blockers(
        &self,
        tx: &mut ClaimTx,
        candidates: &[(u64, &str)],
    ) -> Result<HashMap<String, u64>, Error> {
        let sql = &self.outbox.sql;
        let keys: HashSet<&str> = candidates.iter().map(|(_, key)| *key).collect();
        let last = candidates.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        // Plain range scans, no derived table and no GROUP BY: MariaDB
        // 10.11 crashed (signal 11 in `ha_maria::drop_table`, freeing the
        // internal temporary table) when a connection was killed during
        // the grouped form of this look-back (seen in the chaos run).
        let mut earlier = Vec::new();
        let ranges = std::iter::once((sql.earlier_waiting.as_str(), true))
            .chain(sql.earlier_dead.as_deref().map(|dead| (dead, false)));
        for (range, excludes_candidates) in ranges {
            let statement = if excludes_candidates {
                format!(
                    "{range}{} AND ordering_key IN {}",
                    placeholders(candidates.len()),
                    placeholders(keys.len())
                )
            } else {
                format!("{range} AND ordering_key IN {}", placeholders(keys.len()))
            };
            let mut query = sqlx::query_as::<_, (String, u64)>(&statement).bind(last);
            if excludes_candidates {
                for (seq, _) in candidates {
                    query = query.bind(*seq);
                }
            }
            for key in &keys {
                query = query.bind(*key);
            }
            earlier.extend(query.fetch_all(&mut *tx.conn).await.map_err(classify)?);
        }
        // The first per key, compared byte for byte (the `IN` above
        // compares by the collation).
        let mut first: HashMap<String, u64> = HashMap::new();
        for (key, seq) in earlier {
            let entry = first.entry(key).or_insert(seq);
            *entry = (*entry).min(seq);
        }
        Ok(first)
    }
}

impl TransactionReports for MysqlSource {
    type Tx = ClaimTx;

    fn held(&self) -> &HeldBatches<ClaimTx> {
        &self.held
    }

    async fn run_report(
        &self,
        tx: &mut ClaimTx,
        mine: &HashSet<Uuid>,
        report: &Report<'_>,
    ) -> Result<(), Error> {
        let sql = &self.outbox.sql;
        let (statement, failures) = match report {
            Report::Release => return Ok(()),
            Report::Ack => {
                let seqs: Vec<u64> = mine
                    .iter()
                    .filter_map(|id| tx.seqs.get(id).copied())
                    .collect();
                let seqs = serde_json::to_string(&seqs).expect("numbers serialize");
                sqlx::query(&sql.ack)
                    .bind(seqs)
                    .execute(&mut *tx.conn)
                    .await
                    .map_err(classify)?;
                return Ok(());
            }
            Report::Retry(failures) => (&sql.retry, failures),
            Report::DeadLetter(failures) => (&sql.dead_letter, failures),
        };
        // One statement per failure: failures are few.
        let batch_failures = failures.iter().filter(|f| mine.contains(&f.item.id));
        for (failure, seq) in batch_failures.filter_map(|f| Some((f, *tx.seqs.get(&f.item.id)?))) {
            let mut query = sqlx::query(statement)
                .bind(failure.attempts.min(i32::MAX as u32) as i32)
                .bind(&failure.error);
            if matches!(report, Report::Retry(_)) {
                query = query.bind(failure.retry_after.as_micros().min(i64::MAX as u128) as i64);
            }
            query
                .bind(seq)
                .execute(&mut *tx.conn)
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    async fn commit(tx: ClaimTx) -> Result<(), Error> {
        tx.commit().await
    }
}

impl Source for MysqlSource {
    type Item = Message;

    async fn claim(&self, limit: usize) -> Result<Claim<Message>, Error> {
        if let Some(leadership) = &self.leadership {
            if !leadership.is_leader().await {
                return Ok(Claim::empty());
            }
        }
        self.held.forget_expired(self.lease());
        let mut tx = ClaimTx::begin(&self.pool, self.lease()).await?;
        let claimed = self.claim_on(&mut tx, limit).await?;
        let claim = ClaimId::new();
        if claimed.is_empty() {
            tx.commit().await?;
        } else {
            self.held.hold(claim, claimed.iter().map(|m| m.id), tx);
        }
        Ok(Claim::new(claim, claimed))
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
        self.outbox.committed.notified().await;
    }

    async fn backlog(&self) -> Result<Option<Backlog>, Error> {
        self.outbox.backlog().await.map(Some)
    }
}
