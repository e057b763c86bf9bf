-- The outbox table, written for the default name; the crate substitutes the
-- configured, validated name. Safe to run more than once.
--
-- Times are whole microseconds since the Unix epoch (UTC). SQLite runs one
-- write transaction at a time, so `seq` is also commit order, for every key.

CREATE TABLE IF NOT EXISTS outbox_messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB NOT NULL UNIQUE,
    ordering_key    TEXT NOT NULL,
    destination     TEXT NOT NULL,
    partition_key   TEXT NULL,
    payload         BLOB NOT NULL,
    headers         TEXT NOT NULL,
    event_type      TEXT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     BLOB NULL,
    leased_until    INTEGER NULL,
    last_error      TEXT NULL,
    dead_at         INTEGER NULL,
    done_at         INTEGER NULL
);

-- The claim scan: rows still in the delivery path, in enqueue order.
CREATE INDEX IF NOT EXISTS outbox_messages_waiting
    ON outbox_messages (seq) WHERE done_at IS NULL AND dead_at IS NULL;

-- The claim's per-key look-back, over undelivered rows only.
CREATE INDEX IF NOT EXISTS outbox_messages_key
    ON outbox_messages (ordering_key, seq) WHERE done_at IS NULL;

CREATE INDEX IF NOT EXISTS outbox_messages_dead
    ON outbox_messages (dead_at) WHERE dead_at IS NOT NULL;
