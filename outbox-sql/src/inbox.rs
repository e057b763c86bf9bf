//! What the inboxes of the SQL databases share: the answer of `apply` and
//! the check of a consumer's name.
//!
//! An inbox is the consumer's half of the outbox: a table of the message
//! ids a consumer applied, written in the consumer's own transaction with
//! the message's effect, so a copy the broker redelivers is recognised and
//! skipped. Each database crate has its own (`PostgresInbox`, `MysqlInbox`,
//! `SqliteInbox`) with the same calls:
//!
//! - `migrate()` creates the table (idempotent);
//! - `apply(&mut tx, consumer, message_id)` records the id on the caller's
//!   transaction and returns a [`Receipt`]: [`New`](Receipt::New), apply
//!   the effect in that transaction; [`Duplicate`](Receipt::Duplicate),
//!   skip it. When another transaction is recording the same id, `apply`
//!   waits for it and returns `Duplicate` if it commits, `New` if it rolls
//!   back. A consumer name out of bounds ([`check_consumer`]) is a
//!   permanent error before any statement;
//! - `prune(older_than, batch)` deletes ids applied (and key positions
//!   last advanced) more than `older_than` ago, `batch` rows per
//!   statement, and returns how many rows. A copy that
//!   arrives after its id was pruned is applied again: keep ids longer than
//!   the broker may redeliver and the relay may retry;
//! - `apply_in_order(&mut tx, consumer, &incoming)` does what `apply` does
//!   and, for a new message, also refuses it as [`Stale`](Receipt::Stale)
//!   when a message of the same ordering key with a later sequence
//!   ([`HEADER_SEQUENCE`], which the SQL sources add) was applied already.
//!   The inbox keeps the last sequence per consumer and key in a second
//!   table, `<table>_keys`, and `prune` deletes a key's position once no
//!   message of the key was applied for `older_than` (after that, an older
//!   copy of the key is applied again, as a copy of a pruned id is).
//!   Sequences order the messages of one outbox table: a consumer of
//!   several outboxes names one consumer per outbox.

use outbox_core::{Error, Incoming, HEADER_ORDERING_KEY, HEADER_SEQUENCE};
use uuid::Uuid;

/// Default name of the inbox table.
pub const DEFAULT_INBOX_TABLE: &str = "outbox_inbox";

/// Longest consumer name, in bytes. MySQL keys a `VARCHAR(190)` of
/// four-byte characters within its 767-byte index limit; the other
/// databases keep the same bound so a name works everywhere.
pub const MAX_CONSUMER_LEN: usize = 190;

/// What `apply` found for one message id and consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a duplicate's effect must be skipped"]
pub enum Receipt {
    /// First time: the id is now recorded in the caller's transaction;
    /// apply the message's effect in that same transaction.
    New,
    /// Already applied (by this consumer, in a committed transaction):
    /// skip the effect and acknowledge the message.
    Duplicate,
    /// New, but older than a message of its ordering key this consumer
    /// already applied (`apply_in_order` only): skip the effect and
    /// acknowledge the message. Its id is recorded, so its copies are
    /// duplicates.
    Stale,
}

impl Receipt {
    /// Whether the message is new and its effect must be applied.
    pub fn is_new(self) -> bool {
        self == Receipt::New
    }

    /// The receipt of the statement that records a new message's sequence
    /// as its key's last: one row written means in order, none means stale.
    pub fn of_advanced_keys(rows: u64) -> Self {
        if rows == 0 {
            Receipt::Stale
        } else {
            Receipt::New
        }
    }

    /// The receipt of an insert that skips an id already there: one row
    /// inserted means new.
    pub fn of_inserted_rows(rows: u64) -> Self {
        if rows == 1 {
            Receipt::New
        } else {
            Receipt::Duplicate
        }
    }
}

/// What `apply_in_order` compares: the key's id (a name-based UUID of the
/// ordering key, so any key fits a fixed-size column) and the sequence.
/// A permanent error when the message lacks either header.
pub fn ordering_of(incoming: &Incoming) -> Result<(Uuid, i64), Error> {
    let missing = |header: &str| {
        Error::permanent(format!(
            "message {}: no {header} header, so its order cannot be checked \
             (it was not read from a SQL outbox by a relay of this version)",
            incoming.id
        ))
    };
    let key = incoming
        .ordering_key
        .as_deref()
        .ok_or_else(|| missing(HEADER_ORDERING_KEY))?;
    let sequence = incoming.sequence.ok_or_else(|| missing(HEADER_SEQUENCE))?;
    Ok((Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes()), sequence))
}

/// Accepts a consumer name of 1 to [`MAX_CONSUMER_LEN`] bytes; anything
/// else is a permanent error that names the consumer, before a statement
/// runs (MySQL would cut a longer name short and mix two consumers).
pub fn check_consumer(consumer: &str) -> Result<(), Error> {
    if consumer.is_empty() || consumer.len() > MAX_CONSUMER_LEN {
        return Err(Error::permanent(format!(
            "inbox consumer name must be 1 to {MAX_CONSUMER_LEN} bytes, got {} bytes ({:?})",
            consumer.len(),
            consumer.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_out_of_bounds_are_refused_and_named() {
        assert!(check_consumer("billing").is_ok());
        assert!(check_consumer(&"a".repeat(MAX_CONSUMER_LEN)).is_ok());
        for bad in [String::new(), "é".repeat(MAX_CONSUMER_LEN / 2 + 1)] {
            let err = check_consumer(&bad).unwrap_err();
            assert!(!err.is_temporary());
            assert!(err.message().contains("consumer name"), "{}", err.message());
        }
    }
}
