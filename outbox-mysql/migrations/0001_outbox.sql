-- The outbox table and its helper table, written for the default table
-- name; the crate substitutes the configured, validated name. Safe to run
-- more than once. MySQL 8.0.4+ or MariaDB 10.6+ (SKIP LOCKED, JSON_TABLE).

CREATE TABLE IF NOT EXISTS outbox_messages (
    -- Enqueue order; writers lock their keys first (outbox_messages_keys),
    -- so within one ordering key this is also commit order.
    seq             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id              BINARY(16) NOT NULL,
    ordering_key    VARCHAR(255) NOT NULL,
    destination     VARCHAR(255) NOT NULL,
    partition_key   VARCHAR(255) NULL,
    payload         LONGBLOB NOT NULL,
    headers         LONGTEXT NOT NULL,
    event_type      VARCHAR(255) NULL,
    -- All times are UTC.
    created_at      DATETIME(6) NOT NULL,
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NOT NULL,
    last_error      TEXT NULL,
    dead_at         DATETIME(6) NULL,
    done_at         DATETIME(6) NULL,
    UNIQUE KEY outbox_messages_id (id),
    -- The claim scan: waiting rows (both NULL) in enqueue order.
    KEY outbox_messages_waiting (done_at, dead_at, seq),
    -- The claim's per-key look-back.
    KEY outbox_messages_key (ordering_key, seq),
    KEY outbox_messages_dead (dead_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- One row per ordering key ever written: writers lock theirs until commit,
-- so two transactions writing one key commit in their enqueue order.
CREATE TABLE IF NOT EXISTS outbox_messages_keys (
    ordering_key VARCHAR(255) NOT NULL PRIMARY KEY
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
