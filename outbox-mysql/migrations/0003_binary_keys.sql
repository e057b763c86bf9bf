-- The keys writers lock are compared byte for byte, as the relay compares
-- them. Under a case-insensitive collation (the server's default) `a` and
-- `A` were one row, while writers lock their keys in byte order: two
-- writers could take two such rows in opposite orders and wait for each
-- other until one timed out (`B` then `a`, against `A` then `b`).
-- Changed only while the column is not binary. The table (one short row per
-- key) is copied, and writers wait for the copy.
SET @outbox_ddl = IF(
    (SELECT COUNT(*) FROM information_schema.columns
     WHERE table_schema = DATABASE() AND table_name = 'outbox_messages_keys'
       AND column_name = 'ordering_key' AND data_type = 'varbinary') = 0,
    'ALTER TABLE outbox_messages_keys MODIFY ordering_key VARBINARY(1020) NOT NULL',
    'DO 0');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
