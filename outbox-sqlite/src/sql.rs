//! Every statement of the adapter, rendered once per outbox for its table.
//!
//! Times are bound from the relay's clock as Unix microseconds (`?now`): the
//! database is a local file, so writers and relays share the clock.

use outbox_core::OnDeadLetter;

use crate::{AckMode, SqliteConfig};

/// Columns a claimed row is read with.
pub(crate) const COLUMNS: &str = "seq, id, ordering_key, destination, partition_key, payload, \
                                  headers, event_type, created_at, attempts";

#[derive(Debug)]
pub(crate) struct Statements {
    pub enqueue_prefix: String,
    pub claim: String,
    pub ack_prefix: String,
    pub retry: String,
    pub dead_letter: String,
    pub dead_letter_row: String,
    pub release_prefix: String,
    pub backlog: String,
    pub dead_letters: String,
    pub waiting: String,
    pub count_dead: String,
    pub requeue_prefix: String,
    pub requeue_all: String,
    pub cleanup: String,
}

/// `(?, ?, ...)` with `n` placeholders, numbered from `first`.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("?{i}")).collect();
    format!("({})", list.join(", "))
}

impl Statements {
    pub fn new(config: &SqliteConfig) -> Self {
        let t = format!("\"{}\"", config.table);
        let parked = match config.on_dead_letter {
            OnDeadLetter::Park => "p.dead_at IS NOT NULL OR ",
            OnDeadLetter::Continue => "",
        };
        let ack_prefix = match config.ack_mode {
            AckMode::Delete => format!("DELETE FROM {t} WHERE lease_owner = ?1 AND id IN "),
            AckMode::MarkDone => format!(
                "UPDATE {t} SET done_at = ?2, lease_owner = NULL, leased_until = NULL \
                 WHERE lease_owner = ?1 AND id IN "
            ),
        };
        Self {
            enqueue_prefix: format!(
                "INSERT INTO {t} (id, ordering_key, destination, partition_key, payload, headers, \
                 event_type, created_at, next_attempt_at) VALUES "
            ),
            // ?1 claim, ?2 now, ?3 leased until, ?4 limit, ?5 byte budget.
            // An earlier message of the key that is leased or waiting for
            // its retry holds the whole key back; one that is claimable
            // comes first in seq order. Of those candidates, the claim takes
            // the first (whatever its size) and then the next while their
            // payloads add up to at most the budget: the rest are left
            // unleased, all after the claim's rows.
            claim: format!(
                "UPDATE {t} SET lease_owner = ?1, leased_until = ?3 WHERE seq IN (\
                   SELECT seq FROM (SELECT c.seq, \
                       sum(length(c.payload)) OVER (ORDER BY c.seq ROWS UNBOUNDED PRECEDING) AS upto, \
                       row_number() OVER (ORDER BY c.seq) AS n \
                     FROM {t} AS c WHERE c.seq IN (\
                   SELECT o.seq FROM {t} AS o \
                   WHERE o.done_at IS NULL AND o.dead_at IS NULL AND o.next_attempt_at <= ?2 \
                     AND (o.leased_until IS NULL OR o.leased_until <= ?2) \
                     AND NOT EXISTS (SELECT 1 FROM {t} AS p \
                         WHERE p.ordering_key = o.ordering_key AND p.seq < o.seq AND p.done_at IS NULL \
                           AND ({parked}(p.dead_at IS NULL AND (p.next_attempt_at > ?2 OR p.leased_until > ?2)))) \
                   ORDER BY o.seq LIMIT ?4)) WHERE upto <= ?5 OR n = 1) \
                 RETURNING {COLUMNS}"
            ),
            ack_prefix,
            // ?1 attempts, ?2 error, ?3 next attempt (retry) or now (dead), ?4 id, ?5 claim.
            retry: format!(
                "UPDATE {t} SET attempts = ?1, last_error = ?2, next_attempt_at = ?3, \
                   lease_owner = NULL, leased_until = NULL \
                 WHERE id = ?4 AND lease_owner = ?5"
            ),
            dead_letter: format!(
                "UPDATE {t} SET attempts = ?1, last_error = ?2, dead_at = ?3, \
                   lease_owner = NULL, leased_until = NULL \
                 WHERE id = ?4 AND lease_owner = ?5"
            ),
            // A malformed row, named by seq: ?1 attempts, ?2 reason, ?3 now, ?4 seq, ?5 claim.
            dead_letter_row: format!(
                "UPDATE {t} SET attempts = ?1, last_error = ?2, dead_at = ?3, \
                   lease_owner = NULL, leased_until = NULL \
                 WHERE seq = ?4 AND lease_owner = ?5"
            ),
            release_prefix: format!(
                "UPDATE {t} SET lease_owner = NULL, leased_until = NULL WHERE lease_owner = ?1 AND id IN "
            ),
            backlog: format!(
                "SELECT COALESCE(SUM(dead_at IS NULL), 0), \
                        MIN(CASE WHEN dead_at IS NULL THEN created_at END), \
                        COALESCE(SUM(dead_at IS NOT NULL), 0) \
                 FROM {t} WHERE done_at IS NULL"
            ),
            dead_letters: format!(
                "SELECT {COLUMNS}, last_error, dead_at FROM {t} \
                 WHERE dead_at IS NOT NULL ORDER BY seq LIMIT ?1"
            ),
            waiting: format!(
                "SELECT {COLUMNS}, last_error, next_attempt_at FROM {t} \
                 WHERE done_at IS NULL AND dead_at IS NULL ORDER BY seq LIMIT ?1"
            ),
            count_dead: format!("SELECT COUNT(*) FROM {t} WHERE dead_at IS NOT NULL"),
            requeue_prefix: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = ?1, \
                   lease_owner = NULL, leased_until = NULL WHERE dead_at IS NOT NULL AND id IN "
            ),
            requeue_all: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = ?1, \
                   lease_owner = NULL, leased_until = NULL WHERE dead_at IS NOT NULL"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} \
                 WHERE done_at IS NOT NULL AND done_at < ?1 ORDER BY seq LIMIT ?2)"
            ),
        }
    }
}

/// The current time as Unix microseconds.
pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A duration as microseconds, saturating.
pub(crate) fn micros(duration: std::time::Duration) -> i64 {
    duration.as_micros().min(i64::MAX as u128) as i64
}
