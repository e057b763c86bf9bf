//! Every statement of the adapter, rendered once per outbox for its table.

use outbox_core::OnDeadLetter;

use crate::{AckMode, MysqlConfig};

/// Columns a claimed row is read with.
pub(crate) const COLUMNS: &str = "seq, id, ordering_key, destination, partition_key, payload, \
                                  headers, event_type, created_at, attempts";

/// Columns a claim's candidates are read with: a payload comes with its
/// row only up to the first `?` bytes; a larger one comes as NULL, with its
/// `size`, and the source reads it apart if it fits the claim's byte
/// budget. No window and no derived table: MariaDB 10.11 crashed (signal
/// 11 in `ha_maria::drop_table`, freeing the derived table's temporary
/// table) when a claim that wrapped its candidates in one was killed.
const CLAIM_COLUMNS: &str = "seq, id, ordering_key, destination, partition_key, \
                             IF(LENGTH(payload) <= ?, payload, NULL) AS payload, \
                             LENGTH(payload) AS size, headers, event_type, created_at, attempts";

#[derive(Debug)]
pub(crate) struct Statements {
    pub lock_keys_prefix: String,
    pub enqueue_prefix: String,
    pub claim: String,
    pub claim_past: String,
    pub payloads: String,
    pub relock: String,
    pub earlier_waiting: String,
    pub earlier_dead: Option<String>,
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
    pub keys_after: String,
    pub keys_in_use: String,
    pub lock_idle_keys: String,
    pub delete_keys: String,
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
        let key = format!("{}_key", config.table);
        let keys = format!("`{}_keys`", config.table);
        // Which failed rows hold their key back before a later round counts
        // its candidates: waiting for their retry, or parked dead.
        let failing = match config.on_dead_letter {
            OnDeadLetter::Park => format!("(f.next_attempt_at > {now} OR f.dead_at IS NOT NULL)"),
            OnDeadLetter::Continue => format!("f.dead_at IS NULL AND f.next_attempt_at > {now}"),
        };
        // Reports name their rows by primary key, which the claim already
        // holds locked. The optimizer must look each one up: a scan (its
        // choice on a table it believes small, even for `seq IN (...)`, and
        // MariaDB's for an `IN` list of 1,000 values or more) waits on
        // other batches' rows, and theirs on these, a deadlock that rolls a
        // batch back to be published again (seen in the relay benchmark).
        // So the keys come as a JSON array, joined to the table first.
        let by_seq = format!(
            "JSON_TABLE(?, '$[*]' COLUMNS (seq BIGINT UNSIGNED PATH '$')) AS v \
             STRAIGHT_JOIN {t} AS o FORCE INDEX (PRIMARY) ON o.seq = v.seq"
        );
        let ack = match config.ack_mode {
            AckMode::Delete => format!("DELETE o FROM {by_seq}"),
            AckMode::MarkDone => format!("UPDATE {by_seq} SET o.done_at = {now}"),
        };
        let one_row = format!("{t} FORCE INDEX (PRIMARY)");
        // The look-back, completed by the source with the candidates' `seq`
        // and keys (see `MysqlSource::blockers`): the earlier rows left
        // outside the candidates, read from the `waiting` index alone, which
        // carries each row's key. One range scan: probing the `key` index
        // per candidate cost a row lookup each (6.0 – 8.1 ms for 1,000
        // candidates against 2.7 – 3.2 ms, from the `mariadb` client).
        let earlier_waiting = format!(
            "SELECT ordering_key, seq FROM {t} FORCE INDEX (`{waiting}`) \
             WHERE done_at IS NULL AND dead_at IS NULL AND seq < ? AND seq NOT IN "
        );
        // When parking, dead rows hold their key back too: a range (and a
        // statement) of their own, as one range over both scans every
        // waiting row.
        let earlier_dead = matches!(config.on_dead_letter, OnDeadLetter::Park).then(|| {
            format!(
                "SELECT ordering_key, seq FROM {t} FORCE INDEX (`{waiting}`) \
                 WHERE done_at IS NULL AND dead_at IS NOT NULL AND seq < ?"
            )
        });
        Self {
            lock_keys_prefix: format!(
                "INSERT INTO `{}_keys` (ordering_key) VALUES ",
                config.table
            ),
            enqueue_prefix: format!(
                "INSERT INTO {t} (id, ordering_key, destination, partition_key, payload, headers, \
                 event_type, created_at, next_attempt_at) VALUES "
            ),
            // Candidates: the first waiting rows no other batch holds,
            // locked by this claim's transaction until it commits.
            claim: format!(
                "SELECT {CLAIM_COLUMNS} FROM {t} FORCE INDEX (`{waiting}`) \
                 WHERE done_at IS NULL AND dead_at IS NULL AND next_attempt_at <= {now} \
                 ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED"
            ),
            // A later round of the same claim: the waiting rows after its
            // last candidate, leaving out the keys held back so far,
            // compared byte for byte (completed by the source with the keys,
            // the order and the limit), and the rows behind a failed row of
            // their key (waiting for its retry, or parked dead): with many
            // keys failing at once (a topic gone), their later rows would
            // otherwise fill every round. The probe reads the `key` index's
            // failed entries (`attempts > 0`) only; the first round, on
            // the common path, goes without it.
            claim_past: format!(
                "SELECT {CLAIM_COLUMNS} FROM {t} AS o FORCE INDEX (`{waiting}`) \
                 WHERE done_at IS NULL AND dead_at IS NULL AND next_attempt_at <= {now} \
                   AND NOT EXISTS (SELECT 1 FROM {t} AS f FORCE INDEX (`{key}`) \
                     WHERE f.ordering_key = o.ordering_key AND f.attempts > 0 \
                       AND f.seq < o.seq AND f.done_at IS NULL AND {failing}) \
                   AND seq > ? AND CAST(ordering_key AS BINARY) NOT IN "
            ),
            // The payloads too large to come with their candidates, by
            // primary key (see `by_seq`).
            payloads: format!("SELECT o.seq, o.payload FROM {by_seq}"),
            // The rows a claim keeps, locked again in a new transaction
            // after it gave back the others (see `MysqlSource::relock`):
            // those still waiting and not locked by another claim meanwhile.
            // Looked up through the `waiting` index, as claims read it, so
            // that its entries are locked too: a claim's scan that met an
            // unlocked entry of a row locked by primary key alone skipped
            // the row but kept the entry's lock, and the acknowledgement's
            // delete of the row then waited for that claim's whole batch.
            relock: format!(
                "SELECT o.seq, o.attempts FROM JSON_TABLE(?, '$[*]' COLUMNS (seq BIGINT UNSIGNED PATH '$')) AS v \
                 STRAIGHT_JOIN {t} AS o FORCE INDEX (`{waiting}`) \
                   ON o.done_at IS NULL AND o.dead_at IS NULL AND o.seq = v.seq \
                 WHERE o.next_attempt_at <= {now} \
                 FOR UPDATE SKIP LOCKED"
            ),
            earlier_waiting,
            earlier_dead,
            ack,
            retry: format!(
                "UPDATE {one_row} SET attempts = ?, last_error = ?, \
                   next_attempt_at = {now} + INTERVAL ? MICROSECOND \
                 WHERE seq = ?"
            ),
            dead_letter: format!(
                "UPDATE {one_row} SET attempts = ?, last_error = ?, dead_at = {now} \
                 WHERE seq = ?"
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
            waiting: format!(
                "SELECT {COLUMNS}, last_error, next_attempt_at FROM {t} \
                 WHERE done_at IS NULL AND dead_at IS NULL ORDER BY seq LIMIT ?"
            ),
            count_dead: format!("SELECT COUNT(*) FROM {t} WHERE dead_at IS NOT NULL"),
            requeue: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = {now} \
                 WHERE dead_at IS NOT NULL AND id IN "
            ),
            requeue_all: format!(
                "UPDATE {t} SET dead_at = NULL, attempts = 0, next_attempt_at = {now} \
                 WHERE dead_at IS NOT NULL"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE done_at IS NOT NULL \
                 AND done_at < {now} - INTERVAL ? MICROSECOND ORDER BY seq LIMIT ?"
            ),
            // Pruning `<table>_keys` (see `MysqlOutbox::prune_keys`): the
            // next keys in byte order, read without locks; which of them
            // have a message (the `key` index, compared by the column's
            // collation, completed with the keys); locking those no writer
            // holds; deleting them (both completed with the keys' bytes).
            keys_after: format!(
                "SELECT ordering_key FROM {keys} WHERE ordering_key > ? ORDER BY ordering_key LIMIT ?"
            ),
            keys_in_use: format!(
                "SELECT CAST(ordering_key AS BINARY) FROM {t} FORCE INDEX (`{key}`) \
                 WHERE ordering_key IN "
            ),
            lock_idle_keys: format!("SELECT ordering_key FROM {keys} WHERE ordering_key IN "),
            delete_keys: format!("DELETE FROM {keys} WHERE ordering_key IN "),
        }
    }
}

/// The name of a `GET_LOCK` lock of `purpose` for one table, as an SQL
/// expression of the table's name (bound as its one parameter). Lock names
/// are global to the server and at most 64 characters, so the name holds a
/// hash of the database and the table: two databases on one server with
/// tables of the same name do not share a lock.
pub(crate) fn table_lock(purpose: &str) -> String {
    format!("CONCAT('outbox-{purpose}-', SHA1(CONCAT(DATABASE(), '.', ?)))")
}
