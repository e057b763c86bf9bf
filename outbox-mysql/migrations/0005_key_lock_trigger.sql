-- Writers' key lock, taken by the database on every insert: the row of the
-- message's key in outbox_messages_keys, written (or, when it exists,
-- locked) before the row takes its `seq`, and held until commit. So a
-- writer pays one statement per message, not two, and any writer that
-- inserts rows (another language's, plain SQL) keeps a key's commit order
-- without knowing about the lock. Writers that lock several keys still
-- take them first, in byte order, so two of them never wait for each
-- other; the trigger then finds its key already held.
--
-- Creating it needs the TRIGGER privilege and, with binary logging on,
-- SUPER or log_bin_trust_function_creators = 1. Without the trigger the
-- writer takes the lock itself, as before this migration.
CREATE TRIGGER IF NOT EXISTS outbox_messages_keylock
    BEFORE INSERT ON outbox_messages FOR EACH ROW
    INSERT INTO outbox_messages_keys (ordering_key) VALUES (NEW.ordering_key)
    ON DUPLICATE KEY UPDATE ordering_key = ordering_key;
