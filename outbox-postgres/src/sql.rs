//! Every statement of the adapter, rendered once per outbox for its table.

use outbox_core::OnDeadLetter;

use crate::schema::qualified;
use crate::{AckMode, PostgresConfig};

/// Columns a claimed row is read with, in [`crate::row`]'s order.
const COLUMNS: &str = "id, ordering_key, destination, partition_key, payload, headers, \
                       event_type, created_at, attempts, seq";

#[derive(Debug)]
pub(crate) struct Statements {
    pub enqueue: String,
    pub claim: String,
    pub ack: String,
    pub retry: String,
    pub dead_letter: String,
    pub release: String,
    pub backlog: String,
    pub dead_letters: String,
    pub count_dead: String,
    pub requeue: String,
    pub requeue_all: String,
    pub cleanup: String,
    /// Advisory lock keys: claims of this table (bigint space), and the
    /// per-key writer locks (int4 pair space, this is the first int).
    pub claim_lock: i64,
    pub key_lock_class: i32,
}

impl Statements {
    pub fn new(config: &PostgresConfig) -> Self {
        let t = qualified(config);
        let hash = fnv1a(&t);
        let notify = if config.notify {
            format!(", (SELECT pg_notify('{}', '')) AS n", config.channel())
        } else {
            String::new()
        };
        // A row earlier in its key that holds the key back: leased, waiting
        // for its retry time, or (when parking) dead.
        let parked = match config.on_dead_letter {
            OnDeadLetter::Park => "p.dead_at IS NOT NULL OR ",
            OnDeadLetter::Continue => "",
        };
        let ack = match config.ack_mode {
            AckMode::Delete => format!("DELETE FROM {t} WHERE id = ANY($1) AND lease_owner = $2"),
            AckMode::MarkDone => format!(
                "UPDATE {t} SET done_at = now(), lease_owner = NULL, leased_until = NULL \
                 WHERE id = ANY($1) AND lease_owner = $2"
            ),
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
            // A waiting row is claimable unless an earlier row of its key
            // holds the key back: leased, waiting for its retry, or (when
            // parking) dead. Such rows are few and all in the `held` partial
            // index. `OFFSET 0` keeps the look-back a per-row probe of that
            // index: PostgreSQL never flattens it into a join, whose plan
            // turns pathological on a table without statistics yet.
            claim: format!(
                "UPDATE {t} AS m SET lease_owner = $1, leased_until = now() + $2 * interval '1 millisecond' \
                 FROM (SELECT o.seq FROM {t} AS o \
                       WHERE o.done_at IS NULL AND o.dead_at IS NULL \
                         AND o.next_attempt_at <= now() \
                         AND (o.leased_until IS NULL OR o.leased_until <= now()) \
                         AND NOT EXISTS (SELECT 1 FROM {t} AS p \
                             WHERE p.ordering_key = o.ordering_key AND p.seq < o.seq AND p.done_at IS NULL \
                               AND (p.leased_until IS NOT NULL OR p.attempts > 0 OR p.dead_at IS NOT NULL) \
                               AND ({parked}(p.dead_at IS NULL AND (p.next_attempt_at > now() OR p.leased_until > now()))) \
                             OFFSET 0) \
                       ORDER BY o.seq LIMIT $3 FOR UPDATE SKIP LOCKED) AS c \
                 WHERE m.seq = c.seq \
                 RETURNING {}",
                COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ")
            ),
            ack,
            retry: format!(
                "UPDATE {t} AS m SET attempts = u.attempts, last_error = u.error, \
                   next_attempt_at = now() + u.wait_ms * interval '1 millisecond', \
                   lease_owner = NULL, leased_until = NULL \
                 FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::int8[]) AS u(id, attempts, error, wait_ms) \
                 WHERE m.id = u.id AND m.lease_owner = $5"
            ),
            dead_letter: format!(
                "UPDATE {t} AS m SET attempts = u.attempts, last_error = u.error, dead_at = now(), \
                   lease_owner = NULL, leased_until = NULL \
                 FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS u(id, attempts, error) \
                 WHERE m.id = u.id AND m.lease_owner = $4"
            ),
            release: format!(
                "UPDATE {t} SET lease_owner = NULL, leased_until = NULL \
                 WHERE id = ANY($1) AND lease_owner = $2"
            ),
            backlog: format!(
                "SELECT count(*) FILTER (WHERE dead_at IS NULL), \
                        extract(epoch FROM now() - min(created_at) FILTER (WHERE dead_at IS NULL))::float8, \
                        count(*) FILTER (WHERE dead_at IS NOT NULL) \
                 FROM {t} WHERE done_at IS NULL"
            ),
            dead_letters: format!(
                "SELECT {COLUMNS}, last_error, dead_at FROM {t} \
                 WHERE dead_at IS NOT NULL ORDER BY seq LIMIT $1"
            ),
            count_dead: format!("SELECT count(*) FROM {t} WHERE dead_at IS NOT NULL"),
            requeue: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = now(), \
                   lease_owner = NULL, leased_until = NULL \
                 WHERE id = ANY($1) AND dead_at IS NOT NULL"
            ),
            requeue_all: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = now(), \
                   lease_owner = NULL, leased_until = NULL \
                 WHERE dead_at IS NOT NULL"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} \
                 WHERE done_at IS NOT NULL AND done_at < now() - $1 * interval '1 millisecond' LIMIT $2)"
            ),
            claim_lock: hash as i64,
            key_lock_class: (hash >> 32) as i32,
        }
    }
}

/// A stable hash (FNV-1a), so every process derives the same lock keys.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
