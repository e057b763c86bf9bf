-- Rows that have failed at least once and are not delivered: the messages
-- waiting for their retry, and dead letters. The claim's scan skips the
-- later messages of their keys before it counts its batch, so a failing key
-- with more messages than a batch cannot fill every claim with rows it then
-- has to leave behind (which would hold back every other key). Rows are
-- written with `attempts = 0`, so a new message adds nothing to this index.
CREATE INDEX IF NOT EXISTS outbox_messages_failing
    ON public.outbox_messages (ordering_key, seq)
    WHERE attempts > 0 AND done_at IS NULL;
-- On an existing large table, `CREATE INDEX CONCURRENTLY` it first to keep
-- writers going while it is built; this statement then does nothing.
