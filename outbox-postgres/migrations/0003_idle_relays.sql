-- The relays that found nothing to claim and wait for a writer's NOTIFY,
-- one row each. Writers call pg_notify only while a row is here:
-- PostgreSQL commits notifying transactions one at a time, so writers that
-- always notified capped the database's commit rate, while with every
-- relay busy nobody needs waking and writers pay nothing for it.
-- Unlogged: after a crash PostgreSQL empties it, and idle relays list
-- themselves again at their next poll.
CREATE UNLOGGED TABLE IF NOT EXISTS public.outbox_messages_idle (
    relay UUID PRIMARY KEY,
    since TIMESTAMPTZ NOT NULL
);
