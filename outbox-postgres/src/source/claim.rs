//! One claim of the table outbox: the lane it takes, its scans of the
//! waiting rows in rounds, and what it gives back before it holds a batch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use outbox_core::{Claim, ClaimId, Error, Message, OnDeadLetter, Source};
use sqlx::postgres::PgRow;
use sqlx::{Executor, PgConnection, Postgres, Row, Transaction};
use uuid::Uuid;

use super::PostgresSource;
use crate::error::classify;
use crate::row::{decode, text, Decoded};
use crate::sql::{claim_settings, CANDIDATES_SAVEPOINT};

/// Most candidate rounds of one scan (see [`PostgresSource::scan`]).
const CLAIM_ROUNDS: usize = 4;

/// The claim's transaction.
type Tx = Transaction<'static, Postgres>;

/// A scan of a claim: its statement, and the lane it binds as `$5` (with
/// lanes; -1 when the claim holds none).
type Scan<'a> = (&'a str, Option<i32>);

/// What a claim has gathered over its scans.
#[derive(Default)]
struct Gathered {
    /// The messages taken, with their `seq`.
    claimed: Vec<(i64, Message)>,
    /// Rows to dead-letter as malformed: `seq`, id, attempts, reason.
    malformed: Vec<(i64, Uuid, i32, String)>,
    /// The `seq` and `attempts` of every row returned or dead-lettered.
    taken: HashMap<i64, i32>,
    /// Whether the claim locked any row it does not use.
    left_locked: bool,
    /// Keys with a row held back: later rounds leave them out.
    passed_over: HashSet<String>,
    /// When parking, the keys of malformed rows and their `seq`: such a row
    /// is dead-lettered, so its key's later rows must stay behind it.
    parked: HashMap<String, i64>,
    /// Payload bytes claimed so far, against the byte budget.
    bytes: usize,
    /// Whether a round reached the byte budget.
    budget_spent: bool,
}

impl Gathered {
    /// Enough for this claim: a scan or round past this costs more than
    /// leaving the rest to the next claim.
    fn enough(&self, limit: usize) -> bool {
        self.budget_spent || self.claimed.len() * 2 >= limit
    }
}

impl PostgresSource {
    /// Claims up to `limit` rows (see [`Source::claim`]).
    pub(super) async fn claim_rows(&self, limit: usize) -> Result<Claim<Message>, Error> {
        self.held.forget_expired(self.lease());
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let mut gathered = Gathered::default();
        for (statement, lane) in self.begin_claim(&mut tx).await? {
            self.scan(&mut tx, statement, lane, limit, &mut gathered)
                .await?;
            if gathered.enough(limit) {
                break;
            }
        }
        self.finish(tx, gathered).await
    }

    /// Sets the claim's lease, the planner's settings, its lane (with
    /// lanes) and the savepoint it can give rows back to (see
    /// `claim_settings`), in one round trip; returns the claim's scans, in
    /// turn: without lanes, the whole table; with lanes, the lane it holds,
    /// then (when that left the batch under half full, or when every lane
    /// with work was another claim's) all the other lanes, stepping over
    /// the rows other batches hold.
    async fn begin_claim(&self, tx: &mut Tx) -> Result<Vec<Scan<'_>>, Error> {
        let sql = &self.outbox.sql;
        let lanes = self.outbox.config.lanes;
        let start = self.next_lane.fetch_add(1, Ordering::Relaxed) % lanes;
        let pick = sql.pick_lane(start);
        let settings = claim_settings(self.lease());
        let begin = match &pick {
            Some(pick) => format!("{settings}; {pick}; {CANDIDATES_SAVEPOINT}"),
            None => format!("{settings}; {CANDIDATES_SAVEPOINT}"),
        };
        let conn: &mut PgConnection = &mut *tx;
        let picked = conn.fetch_all(begin.as_str()).await.map_err(classify)?;
        let lane: Option<i32> = match picked.first() {
            Some(row) => Some(row.try_get("l").map_err(classify)?),
            None => None,
        };
        Ok(match (&pick, lane) {
            (None, _) => vec![(&sql.claim, None)],
            (Some(_), Some(lane)) => vec![
                (&sql.claim, Some(lane)),
                (&sql.claim_outside_lane, Some(lane)),
            ],
            (Some(_), None) => vec![(&sql.claim_outside_lane, Some(-1))],
        })
    }

    /// One scan, in rounds: when most candidates were held back, claims
    /// again past them, leaving out their keys, so a key with more messages
    /// than a batch behind a held or failing head cannot fill the claim.
    async fn scan(
        &self,
        tx: &mut Tx,
        statement: &str,
        lane: Option<i32>,
        limit: usize,
        gathered: &mut Gathered,
    ) -> Result<(), Error> {
        let mut after = 0_i64;
        for _ in 0..CLAIM_ROUNDS {
            let asked = limit - gathered.claimed.len();
            let passed_over: Vec<&str> = gathered.passed_over.iter().map(String::as_str).collect();
            let budget_left = self
                .outbox
                .config
                .batch_bytes
                .saturating_sub(gathered.bytes);
            let mut query = sqlx::query(statement)
                .bind(asked as i64)
                .bind(after)
                .bind(passed_over)
                .bind(budget_left as i64);
            if let Some(lane) = lane {
                query = query.bind(lane);
            }
            let rows = query.fetch_all(&mut **tx).await.map_err(classify)?;
            // Over the byte budget, the rows came without their payloads:
            // take those that fit, read theirs.
            let over_budget = match rows.first() {
                Some(row) => row.try_get::<bool, _>("over_budget").map_err(classify)?,
                None => false,
            };
            let mut payloads = HashMap::new();
            if over_budget {
                let within =
                    self.within_budget(&rows, gathered.bytes, gathered.claimed.is_empty())?;
                gathered.budget_spent = true;
                payloads = sqlx::query_as::<_, (i64, Vec<u8>)>(&self.outbox.sql.payloads)
                    .bind(within)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(classify)?
                    .into_iter()
                    .collect();
            }
            let held_back = self.take(&rows, payloads, over_budget, &mut after, gathered)?;
            // Another round only for a claim mostly held back: a few held
            // rows simply wait for the next claim, which costs less than a
            // round of statements for the rest.
            if !held_back || rows.len() < asked || gathered.enough(limit) {
                break;
            }
        }
        Ok(())
    }

    /// Takes one round's rows into `gathered`, moving `after` past them;
    /// returns whether any was held back.
    fn take(
        &self,
        rows: &[PgRow],
        mut payloads: HashMap<i64, Vec<u8>>,
        over_budget: bool,
        after: &mut i64,
        gathered: &mut Gathered,
    ) -> Result<bool, Error> {
        let parking = self.outbox.config.on_dead_letter == OnDeadLetter::Park;
        let mut held_back = false;
        for row in rows {
            let seq: i64 = row.try_get("seq").map_err(classify)?;
            *after = (*after).max(seq);
            let held = row.try_get::<bool, _>("held").map_err(classify)?;
            // Past the budget: left, as the claim's last rows.
            if over_budget && !held && !payloads.contains_key(&seq) {
                gathered.left_locked = true;
                continue;
            }
            if held {
                gathered.left_locked = true;
                // A key that cannot be read passes over nothing: its head is
                // dead-lettered as malformed.
                if let Ok(Some(key)) = text(row, "ordering_key") {
                    gathered.passed_over.insert(key);
                }
                held_back = true;
                continue;
            }
            gathered
                .taken
                .insert(seq, row.try_get("attempts").map_err(classify)?);
            match decode(row, payloads.remove(&seq)).map_err(classify)? {
                Decoded::Message(message) => {
                    gathered.bytes = gathered.bytes.saturating_add(message.payload.len());
                    gathered.claimed.push((seq, message));
                }
                Decoded::Malformed {
                    key: id,
                    attempts,
                    reason,
                } => {
                    tracing::warn!(%id, reason, "malformed outbox row dead-lettered");
                    if let (true, Ok(Some(key))) = (parking, text(row, "ordering_key")) {
                        let first = gathered.parked.entry(key).or_insert(seq);
                        *first = (*first).min(seq);
                    }
                    gathered.malformed.push((seq, id, attempts + 1, reason));
                }
            }
        }
        Ok(held_back)
    }

    /// Ends the claim: leaves the later rows of a parked key, gives back
    /// every row locked and not used, dead-letters the malformed rows; then
    /// commits an empty claim or holds the batch, in enqueue order.
    async fn finish(&self, mut tx: Tx, gathered: Gathered) -> Result<Claim<Message>, Error> {
        let Gathered {
            mut claimed,
            mut malformed,
            mut taken,
            mut left_locked,
            parked,
            ..
        } = gathered;
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
}
