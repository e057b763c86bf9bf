//! Every statement of the adapter, rendered once per outbox for its table.

use outbox_core::OnDeadLetter;

use crate::{AckMode, MysqlConfig};

/// Columns a claimed row is read with.
pub(crate) const COLUMNS: &str = "seq, id, ordering_key, destination, partition_key, payload, \
                                  headers, event_type, created_at, attempts";

#[derive(Debug)]
pub(crate) struct Statements {
    pub lock_keys_prefix: String,
    pub enqueue_prefix: String,
    pub claim_lock: String,
    pub report_lock: String,
    pub claim: String,
    pub lease_prefix: String,
    pub ack_prefix: String,
    pub retry: String,
    pub dead_letter: String,
    pub release_prefix: String,
    pub backlog: String,
    pub dead_letters: String,
    pub count_dead: String,
    pub requeue: String,
    pub requeue_all: String,
    pub cleanup: String,
}

/// `(?, ?, ...)` with `n` placeholders.
pub(crate) fn placeholders(n: usize) -> String {
    let mut list = "?, ".repeat(n);
    list.truncate(list.len().saturating_sub(2));
    format!("({list})")
}

impl Statements {
    pub fn new(config: &MysqlConfig) -> Self {
        let t = format!("`{}`", config.table);
        let now = "UTC_TIMESTAMP(6)";
        // The optimizer likes the primary key for `ORDER BY seq LIMIT n`,
        // which walks every delivered (mark-done) and dead row before the
        // waiting ones; the `waiting` index starts at the first waiting row.
        let waiting = format!("{}_waiting", config.table);
        let parked = match config.on_dead_letter {
            OnDeadLetter::Park => "p.dead_at IS NOT NULL OR ",
            OnDeadLetter::Continue => "",
        };
        let ack_prefix = match config.ack_mode {
            AckMode::Delete => format!("DELETE FROM {t} WHERE lease_owner = ? AND id IN "),
            AckMode::MarkDone => format!(
                "UPDATE {t} SET done_at = {now}, lease_owner = NULL, leased_until = NULL \
                 WHERE lease_owner = ? AND id IN "
            ),
        };
        Self {
            lock_keys_prefix: format!(
                "INSERT INTO `{}_keys` (ordering_key) VALUES ",
                config.table
            ),
            enqueue_prefix: format!(
                "INSERT INTO {t} (id, ordering_key, destination, partition_key, payload, headers, \
                 event_type, created_at, next_attempt_at) VALUES "
            ),
            claim_lock: format!("SELECT id FROM `{}_claim` WHERE id = 1 FOR UPDATE", config.table),
            report_lock: format!(
                "SELECT id FROM `{}_claim` WHERE id = 1 LOCK IN SHARE MODE",
                config.table
            ),
            claim: format!(
                "SELECT {COLUMNS} FROM {t} AS o FORCE INDEX (`{waiting}`) \
                 WHERE o.done_at IS NULL AND o.dead_at IS NULL \
                   AND o.next_attempt_at <= {now} \
                   AND (o.leased_until IS NULL OR o.leased_until <= {now}) \
                   AND NOT EXISTS (SELECT 1 FROM {t} AS p \
                       WHERE p.ordering_key = o.ordering_key AND p.seq < o.seq AND p.done_at IS NULL \
                         AND ({parked}(p.dead_at IS NULL AND (p.next_attempt_at > {now} OR p.leased_until > {now})))) \
                 ORDER BY o.seq LIMIT ? FOR UPDATE SKIP LOCKED"
            ),
            lease_prefix: format!(
                "UPDATE {t} SET lease_owner = ?, leased_until = {now} + INTERVAL ? MICROSECOND WHERE seq IN "
            ),
            ack_prefix,
            retry: format!(
                "UPDATE {t} SET attempts = ?, last_error = ?, \
                   next_attempt_at = {now} + INTERVAL ? MICROSECOND, \
                   lease_owner = NULL, leased_until = NULL \
                 WHERE id = ? AND lease_owner = ?"
            ),
            dead_letter: format!(
                "UPDATE {t} SET attempts = ?, last_error = ?, dead_at = {now}, \
                   lease_owner = NULL, leased_until = NULL \
                 WHERE id = ? AND lease_owner = ?"
            ),
            release_prefix: format!(
                "UPDATE {t} SET lease_owner = NULL, leased_until = NULL WHERE lease_owner = ? AND id IN "
            ),
            backlog: format!(
                "SELECT CAST(COALESCE(SUM(dead_at IS NULL), 0) AS SIGNED), \
                        TIMESTAMPDIFF(MICROSECOND, MIN(CASE WHEN dead_at IS NULL THEN created_at END), {now}), \
                        CAST(COALESCE(SUM(dead_at IS NOT NULL), 0) AS SIGNED) \
                 FROM {t} WHERE done_at IS NULL"
            ),
            dead_letters: format!(
                "SELECT {COLUMNS}, last_error, dead_at FROM {t} \
                 WHERE dead_at IS NOT NULL ORDER BY seq LIMIT ?"
            ),
            count_dead: format!("SELECT COUNT(*) FROM {t} WHERE dead_at IS NOT NULL"),
            requeue: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = {now}, \
                   lease_owner = NULL, leased_until = NULL WHERE dead_at IS NOT NULL AND id IN "
            ),
            requeue_all: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = {now}, \
                   lease_owner = NULL, leased_until = NULL WHERE dead_at IS NOT NULL"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE done_at IS NOT NULL \
                 AND done_at < {now} - INTERVAL ? MICROSECOND ORDER BY seq LIMIT ?"
            ),
        }
    }
}
