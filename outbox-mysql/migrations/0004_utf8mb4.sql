-- Every text column in utf8mb4, whatever the server's or the database's
-- default character set: under latin1 a key, destination or header outside
-- it was stored as '?' (or refused in strict mode), and two keys could
-- become one. (The key keeps utf8mb4's default collation: with a binary
-- one the server describes the column as VARBINARY, which sqlx will not
-- read as text. The relay compares keys by their bytes itself, and the keys
-- table is VARBINARY.) Changed only while a column is not utf8mb4. On a
-- large table this copies it, and writers wait for the copy: run it when
-- the outbox is quiet, or with an online schema-change tool.
SET @outbox_ddl = IF(
    (SELECT COUNT(*) FROM information_schema.columns
     WHERE table_schema = DATABASE() AND table_name = 'outbox_messages'
       AND character_set_name IS NOT NULL AND character_set_name <> 'utf8mb4') = 0,
    'DO 0',
    'ALTER TABLE outbox_messages
       MODIFY ordering_key VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,
       MODIFY destination VARCHAR(255) CHARACTER SET utf8mb4 NOT NULL,
       MODIFY partition_key VARCHAR(255) CHARACTER SET utf8mb4 NULL,
       MODIFY headers LONGTEXT CHARACTER SET utf8mb4 NOT NULL,
       MODIFY event_type VARCHAR(255) CHARACTER SET utf8mb4 NULL,
       MODIFY last_error TEXT CHARACTER SET utf8mb4 NULL');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
