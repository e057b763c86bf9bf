-- The claim's look-back reads the key of every earlier waiting row from the
-- `waiting` index alone, so the index carries the key after `seq`. Run only
-- while the index lacks it (MySQL has no `IF NOT EXISTS` for indexes); the
-- index keeps its name, so a relay of an earlier version keeps working
-- while this runs. InnoDB builds it in place without stopping writers.
-- This version reads the `key` index no more; it is left for relays of an
-- earlier version, and can be dropped once none runs.
SET @outbox_ddl = IF(
    (SELECT COUNT(*) FROM information_schema.statistics
     WHERE table_schema = DATABASE() AND table_name = 'outbox_messages'
       AND index_name = 'outbox_messages_waiting' AND column_name = 'ordering_key') = 0,
    'ALTER TABLE outbox_messages DROP INDEX outbox_messages_waiting, ADD INDEX outbox_messages_waiting (done_at, dead_at, seq, ordering_key)',
    'DO 0');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
