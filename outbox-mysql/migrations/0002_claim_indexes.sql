-- Two indexes of the claim, changed in place, each only while it lacks the
-- new column (MySQL has no `IF NOT EXISTS` for indexes). They keep their
-- names, so a relay of an earlier version keeps working while this runs;
-- InnoDB rebuilds them without stopping writers.
--
-- `waiting` carries the key after `seq`: the claim's look-back reads the
-- key of every earlier waiting row from it alone.
SET @outbox_ddl = IF(
    (SELECT COUNT(*) FROM information_schema.statistics
     WHERE table_schema = DATABASE() AND table_name = 'outbox_messages'
       AND index_name = 'outbox_messages_waiting' AND column_name = 'ordering_key') = 0,
    'ALTER TABLE outbox_messages DROP INDEX outbox_messages_waiting, ADD INDEX outbox_messages_waiting (done_at, dead_at, seq, ordering_key)',
    'DO 0');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
-- `key` carries `attempts` before `seq`: a claim passing over the keys held
-- back by a failed message finds a key's failed rows (`attempts > 0`, few)
-- without reading its others.
SET @outbox_ddl = IF(
    (SELECT COUNT(*) FROM information_schema.statistics
     WHERE table_schema = DATABASE() AND table_name = 'outbox_messages'
       AND index_name = 'outbox_messages_key' AND column_name = 'attempts') = 0,
    'ALTER TABLE outbox_messages DROP INDEX outbox_messages_key, ADD INDEX outbox_messages_key (ordering_key, attempts, seq)',
    'DO 0');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
