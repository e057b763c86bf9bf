//! Every statement of the adapter, rendered once per outbox for its table.

use std::time::Duration;

use outbox_core::OnDeadLetter;

use crate::schema::{lane_of_key, qualified, qualified_idle};
use crate::{AckMode, PostgresConfig};

/// Columns a claim's candidates carry.
const COLUMNS: &str = "id, ordering_key, destination, partition_key, payload, headers, \
                       event_type, created_at, attempts, seq";

/// Columns a row is read with (see [`crate::row`]), so that no value can
/// fail the statement or panic in decoding: a row whose values cannot be
/// read is dead-lettered with the reason instead.
///
/// - Text comes as its bytes, checked as UTF-8 by the relay: in a
///   `SQL_ASCII` database a text value may hold any bytes, and PostgreSQL
///   fails the whole statement when it cannot convert one to the client's
///   UTF-8. `convert_to(x, 'SQL_ASCII')` is the database's bytes as they
///   are (a conversion to `SQL_ASCII` converts nothing); `textsend` would
///   convert them to the client's encoding and fail the same way.
/// - A `created_at` the relay cannot hold as a time reads as NULL: sqlx's
///   chrono decoding panics on `infinity` (and past chrono's year 262,143),
///   which stopped the relay on every start.
const READ_COLUMNS: &str = "id, attempts, seq, \
     convert_to(ordering_key, 'SQL_ASCII') AS ordering_key, convert_to(destination, 'SQL_ASCII') AS destination, \
     convert_to(partition_key, 'SQL_ASCII') AS partition_key, convert_to(event_type, 'SQL_ASCII') AS event_type, \
     convert_to(headers::text, 'SQL_ASCII') AS headers, \
     CASE WHEN isfinite(created_at) AND created_at < '200000-01-01' THEN created_at END AS created_at";

#[derive(Debug)]
pub(crate) struct Statements {
    pub enqueue: String,
    pub enqueue_one: String,
    pub claim: String,
    /// With lanes: the same claim of every lane but one (`$5`).
    pub claim_outside_lane: String,
    pub payloads: String,
    pub relock: String,
    pub ack: String,
    pub retry: String,
    pub dead_letter: String,
    pub backlog: String,
    pub dead_letters: String,
    pub waiting: String,
    pub count_dead: String,
    pub requeue: String,
    pub requeue_all: String,
    pub cleanup: String,
    /// Lists this relay (`$1`) as waiting for a NOTIFY, and drops the
    /// listings of relays silent for `$2` seconds (gone without a word).
    pub announce_idle: String,
    /// Takes this relay (`$1`) off the list.
    pub announce_busy: String,
    /// The table's name hashed into advisory lock space (bigint), from
    /// which its leader and migration locks are made; and the class of
    /// its per-key writer locks (int4 pair space, this is the first int).
    pub table_lock: i64,
    pub key_lock_class: i32,
    /// With lanes (see [`PostgresConfig::lanes`]): the query that picks and
    /// locks the claim's lane, trying lanes from `__START__` on (see
    /// [`Statements::pick_lane`]).
    lane_pick: Option<String>,
}

impl Statements {
    pub fn new(config: &PostgresConfig) -> Self {
        let t = qualified(config);
        let hash = fnv1a(&t);
        let idle = qualified_idle(config);
        // Only while a relay waits for it (see `0003_idle_relays.sql`); a
        // CASE, not a WHERE, so the row the insert joins with always exists.
        let notify = if config.notify {
            format!(
                ", (SELECT CASE WHEN EXISTS (SELECT FROM {idle}) THEN pg_notify('{}', '') END) AS n",
                config.channel()
            )
        } else {
            String::new()
        };
        // Which earlier rows of a key hold it back: every row still in the
        // delivery path, and dead ones too when parking.
        let blocks = match config.on_dead_letter {
            OnDeadLetter::Park => "TRUE",
            OnDeadLetter::Continue => "p.dead_at IS NULL",
        };
        // Which failed rows hold a key back before the claim counts its
        // batch: those waiting for their retry, and dead ones when parking.
        let failing = match config.on_dead_letter {
            OnDeadLetter::Park => "(f.next_attempt_at > now() OR f.dead_at IS NOT NULL)",
            OnDeadLetter::Continue => "f.dead_at IS NULL AND f.next_attempt_at > now()",
        };
        // Rows a claim may take at all: waiting, due, and not behind a
        // failed row of their key (`o` is the candidate).
        let ready = format!(
            "o.done_at IS NULL AND o.dead_at IS NULL AND o.next_attempt_at <= now() \
             AND (NOT EXISTS (SELECT 1 FROM {t} AS a WHERE a.attempts > 0 AND a.done_at IS NULL) \
               OR NOT EXISTS (SELECT 1 FROM {t} AS f \
                 WHERE f.ordering_key = o.ordering_key AND f.seq < o.seq \
                   AND f.attempts > 0 AND f.done_at IS NULL AND {failing} OFFSET 0))"
        );
        // With lanes, a claim takes its lane's rows (`$5`) first, and then,
        // or when no lane was free, the others' (see `PostgresSource`).
        let lane = lane_of_key(config, "o.ordering_key");
        let in_lane = if config.lanes > 1 {
            format!(" AND {lane} = $5")
        } else {
            String::new()
        };
        let outside_lane = format!(" AND {lane} <> $5");
        // The first lane, from `__START__` on, that has a ready row and
        // that no other claim holds, locked for this claim's transaction.
        // `CASE` so the lock is tried only on a lane with work, and `LIMIT
        // 1` stops at the first lane locked: the filter runs row by row.
        let lane_pick = (config.lanes > 1).then(|| {
            let lanes = config.lanes;
            format!(
                "SELECT l FROM (SELECT (s + __START__) % {lanes} AS l \
                   FROM generate_series(0, {lanes} - 1) AS s) AS lanes \
                 WHERE CASE WHEN EXISTS (SELECT 1 FROM {t} AS o \
                     WHERE {lane} = lanes.l AND {ready}) \
                   THEN pg_try_advisory_xact_lock('{base}'::int8 + l) ELSE false END \
                 LIMIT 1",
                base = lane_lock_base(hash),
            )
        });
        let ack = match config.ack_mode {
            AckMode::Delete => format!("DELETE FROM {t} WHERE id = ANY($1)"),
            AckMode::MarkDone => format!("UPDATE {t} SET done_at = now() WHERE id = ANY($1)"),
        };
        Self {
            // Per-key advisory locks (taken in a fixed order) make same-key
            // writers commit one after the other, so `seq` is commit order
            // within a key. `pg_notify` with one payload is delivered once per
            // transaction however many times it is called.
            enqueue: format!(
                "WITH locks AS (\
                   SELECT pg_advisory_xact_lock($1, h) FROM \
                   (SELECT DISTINCT hashtext(k) AS h FROM unnest($3::text[]) AS k ORDER BY 1) AS s) \
                 INSERT INTO {t} (id, ordering_key, destination, partition_key, payload, headers, event_type, created_at) \
                 SELECT u.id, u.k, u.d, u.pk, u.p, u.h::jsonb, u.et, u.ca \
                 FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[], $8::text[], $9::timestamptz[]) \
                      WITH ORDINALITY AS u(id, k, d, pk, p, h, et, ca, ord), \
                      (SELECT count(*) FROM locks) AS l{notify} \
                 ORDER BY u.ord"
            ),
            // The same for one message, the common case, without the arrays
            // and the sort: about a fifth less time in the database (pgbench,
            // one client: 0.11 ms against 0.135 ms). The same lock, taken
            // before `seq` is drawn.
            enqueue_one: format!(
                "WITH lock AS (SELECT pg_advisory_xact_lock($1, hashtext($3))) \
                 INSERT INTO {t} (id, ordering_key, destination, partition_key, payload, headers, event_type, created_at) \
                 SELECT $2::uuid, $3::text, $4::text, $5::text, $6::bytea, $7::text::jsonb, $8::text, $9::timestamptz \
                 FROM lock{notify}"
            ),
            claim: claim(&t, &ready, &in_lane, blocks),
            claim_outside_lane: claim(&t, &ready, &outside_lane, blocks),
            // By `seq`, in `seq` order: with sorts off (see
            // `claim_settings`) only an index on `seq` can answer, never a
            // scan of the whole `key` index filtered by `seq`.
            payloads: format!("SELECT seq, payload FROM {t} WHERE seq = ANY($1) ORDER BY seq"),
            // The rows a claim keeps, locked again after it gave back the
            // others (see `PostgresSource::relock`): those still waiting,
            // not locked by another claim meanwhile, and not held back by
            // an earlier row of their key left outside them. In `seq`
            // order, as `payloads`: on statistics that undercounted the
            // backlog PostgreSQL found these rows by scanning the whole
            // `key` index (31,157 buffers, up to 1.7 s, seen by auto_explain
            // in the sustained run with autovacuum on).
            relock: format!(
                "WITH c AS MATERIALIZED (\
                   SELECT seq, attempts, ordering_key FROM {t} \
                   WHERE seq = ANY($1) AND done_at IS NULL AND dead_at IS NULL \
                     AND next_attempt_at <= now() \
                   ORDER BY seq FOR UPDATE SKIP LOCKED) \
                 SELECT seq, attempts FROM c \
                 WHERE NOT EXISTS (SELECT 1 FROM {t} AS p \
                   WHERE p.ordering_key = c.ordering_key AND p.seq < c.seq AND p.done_at IS NULL \
                     AND {blocks} AND p.seq NOT IN (SELECT seq FROM c) OFFSET 0)"
            ),
            ack,
            retry: format!(
                "UPDATE {t} AS m SET attempts = u.attempts, last_error = u.error, \
                   next_attempt_at = now() + u.wait_ms * interval '1 millisecond' \
                 FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::int8[]) AS u(id, attempts, error, wait_ms) \
                 WHERE m.id = u.id"
            ),
            dead_letter: format!(
                "UPDATE {t} AS m SET attempts = u.attempts, last_error = u.error, dead_at = now() \
                 FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS u(id, attempts, error) \
                 WHERE m.id = u.id"
            ),
            backlog: format!(
                "SELECT count(*) FILTER (WHERE dead_at IS NULL), \
                        extract(epoch FROM now() - min(created_at) FILTER (WHERE dead_at IS NULL AND isfinite(created_at)))::float8, \
                        count(*) FILTER (WHERE dead_at IS NOT NULL) \
                 FROM {t} WHERE done_at IS NULL"
            ),
            dead_letters: format!(
                "SELECT {READ_COLUMNS}, payload, last_error, dead_at FROM {t} \
                 WHERE dead_at IS NOT NULL ORDER BY seq LIMIT $1"
            ),
            waiting: format!(
                "SELECT {READ_COLUMNS}, payload, last_error, next_attempt_at FROM {t} \
                 WHERE done_at IS NULL AND dead_at IS NULL ORDER BY seq LIMIT $1"
            ),
            count_dead: format!("SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL"),
            requeue: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = now() \
                 WHERE id = ANY($1) AND dead_at IS NOT NULL"
            ),
            requeue_all: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = now() \
                 WHERE dead_at IS NOT NULL"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} \
                 WHERE done_at IS NOT NULL AND done_at < now() - $1 * interval '1 millisecond' LIMIT $2)"
            ),
            announce_idle: format!(
                "WITH gone AS (DELETE FROM {idle} WHERE relay <> $1 \
                   AND since < now() - $2 * interval '1 second') \
                 INSERT INTO {idle} (relay, since) VALUES ($1, now()) \
                 ON CONFLICT (relay) DO UPDATE SET since = excluded.since"
            ),
            announce_busy: format!("DELETE FROM {idle} WHERE relay = $1"),
            table_lock: hash as i64,
            key_lock_class: (hash >> 32) as i32,
            lane_pick,
        }
    }

    /// With lanes, the statement that picks and locks a claim's lane, trying
    /// lanes from `start` on (each claim of a relay starts one further, so
    /// one relay visits every lane in turn); `None` without lanes.
    pub fn pick_lane(&self, start: u16) -> Option<String> {
        self.lane_pick
            .as_ref()
            .map(|sql| sql.replace("__START__", &start.to_string()))
    }
}

/// Candidates: the first waiting rows after `$2` not locked by another
/// batch, not of a key in `$3`, not behind a failed row of their key
/// (waiting for its retry, or parked dead: `ready`), and in the lanes
/// `lanes` selects (none, or `$5`), locked by this claim's transaction.
/// Skipping those before the `LIMIT` keeps a failing key with more messages
/// than a batch from filling every claim with rows it must leave behind.
/// The probe uses the small `failing` index (rows with `attempts > 0`), and
/// only when it holds a row: one probe for the whole claim otherwise.
///
/// Every candidate comes back, `held` when an earlier row of its key is
/// left in the table outside this claim: one held by another batch,
/// waiting for its retry, or (when parking) dead. The source claims again
/// past held rows, leaving out their keys (`$2`, `$3`), then gives them back
/// (`relock`). `OFFSET 0` keeps each look-back a per-row probe of an index.
/// The candidates carry every column: joining back to the table for them
/// cost 9,053 buffer hits per 1,000 rows claimed, against 5,053.
///
/// The byte budget: when the candidates' payloads add up to more than `$4`
/// bytes, they come back `over_budget`, without their payloads, and the
/// source takes a prefix of them within the budget and reads those payloads
/// alone (`payloads`). One window over the whole claim, no sort: about 0.1
/// ms on a claim of 500 rows, where a running sum in `seq` order cost 0.5 ms.
fn claim(t: &str, ready: &str, lanes: &str, blocks: &str) -> String {
    format!(
        "WITH c AS MATERIALIZED (\
           SELECT {COLUMNS} FROM {t} AS o \
           WHERE {ready} AND o.seq > $2 AND o.ordering_key <> ALL($3::text[]){lanes} \
           ORDER BY o.seq LIMIT $1 FOR UPDATE OF o SKIP LOCKED) \
         SELECT {READ_COLUMNS}, octet_length(payload) AS size, \
           CASE WHEN sum(octet_length(payload)) OVER () <= $4 THEN payload END AS payload, \
           sum(octet_length(payload)) OVER () > $4 AS over_budget, \
           EXISTS (SELECT 1 FROM {t} AS p \
             WHERE p.ordering_key = c.ordering_key AND p.seq < c.seq AND p.done_at IS NULL \
               AND {blocks} AND p.seq NOT IN (SELECT seq FROM c) OFFSET 0) AS held \
         FROM c"
    )
}

/// The advisory lock of lane 0 of a table (bigint key space, as the leader
/// and migration locks), lane `l` being this plus `l`: the table's hash
/// with "lane" in its high bytes and its low 16 bits cleared for the lane.
fn lane_lock_base(table_hash: u64) -> i64 {
    ((table_hash ^ 0x6c61_6e65_0000_0000) & !0xffff) as i64
}

/// The settings of a claim's transaction, as one string of statements; the
/// claim then takes its lane, if any, and the savepoint
/// [`CANDIDATES_SAVEPOINT`].
///
/// - The lease: PostgreSQL ends the transaction once it has been idle (the
///   relay publishing, or stalled) for this long.
/// - A plan made for each claim's parameters: after five runs PostgreSQL
///   may keep a generic plan instead, and one made while the table was
///   nearly empty scans the whole table per candidate once a backlog builds
///   (170 s per claim with 1,000,000 waiting, against about 10 ms).
/// - Index scans in `seq` order, never a bitmap scan, a sort or a table
///   scan: statistics taken by (auto)vacuum while few rows waited in a
///   table of many pages (a queue's table keeps its size and refills its
///   free space) made PostgreSQL read every waiting row through the `key`
///   index and sort them, for each claim: 134 ms with 30,000 waiting, more
///   as the backlog grew, which it then did (the sustained run with
///   autovacuum on, issue 28). The other statements of the transaction
///   (payloads, relock, reports) look rows up by key too.
pub(crate) fn claim_settings(lease: Duration) -> String {
    format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}; \
         SET LOCAL plan_cache_mode = force_custom_plan; \
         SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
         SET LOCAL enable_sort = off",
        lease.as_millis()
    )
}

/// The savepoint a claim's candidates are locked after: the claim gives
/// back, by rolling back to it, the rows it locked and does not return (see
/// `PostgresSource::relock`). Taken after the lane's lock, which a rollback
/// to it would release.
pub(crate) const CANDIDATES_SAVEPOINT: &str = "SAVEPOINT candidates";

/// A stable hash (FNV-1a), so every process derives the same lock keys.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
