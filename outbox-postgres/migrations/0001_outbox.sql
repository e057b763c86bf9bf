-- The outbox table, its indexes, and nothing else. Written for the default
-- names (schema public, default table name); the crate substitutes the
-- configured, validated names. Safe to run more than once.

CREATE TABLE IF NOT EXISTS public.outbox_messages (
    -- Enqueue order. Writers take a per-key advisory lock before inserting,
    -- so within one ordering key this is also commit order.
    seq             BIGSERIAL PRIMARY KEY,
    id              UUID NOT NULL,
    ordering_key    TEXT NOT NULL,
    destination     TEXT NOT NULL,
    partition_key   TEXT,
    payload         BYTEA NOT NULL,
    headers         JSONB NOT NULL DEFAULT '{}'::jsonb,
    event_type      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Not claimed before this time (retry backoff, stored so it survives restarts).
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    -- Set for a dead letter: out of the delivery path until requeued.
    dead_at         TIMESTAMPTZ,
    -- Set when delivered in mark-done mode; removed later by cleanup.
    done_at         TIMESTAMPTZ
) WITH (fillfactor = 80);

CREATE UNIQUE INDEX IF NOT EXISTS outbox_messages_id
    ON public.outbox_messages (id);

-- The claim scan: waiting rows in enqueue order.
CREATE INDEX IF NOT EXISTS outbox_messages_waiting
    ON public.outbox_messages (seq)
    WHERE done_at IS NULL AND dead_at IS NULL;

-- Per-key look-back of the claim: is an earlier message of the key still
-- in the table, outside the claim?
CREATE INDEX IF NOT EXISTS outbox_messages_key
    ON public.outbox_messages (ordering_key, seq)
    WHERE done_at IS NULL;

-- Operator views and cleanup.
CREATE INDEX IF NOT EXISTS outbox_messages_dead
    ON public.outbox_messages (dead_at)
    WHERE dead_at IS NOT NULL;

CREATE INDEX IF NOT EXISTS outbox_messages_done
    ON public.outbox_messages (done_at)
    WHERE done_at IS NOT NULL;
