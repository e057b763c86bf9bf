//! Settings of a MySQL outbox, checked when the outbox is built.

use std::time::Duration;

use outbox_core::{ConfigError, OnDeadLetter, DEFAULT_BATCH_BYTES};

pub use outbox_sql::AckMode;

/// Where the outbox lives and how its relays behave.
#[derive(Debug, Clone, PartialEq)]
pub struct MysqlConfig {
    /// Table name, in the connection's database. Default `outbox_messages`.
    pub table: String,
    /// How long a claim's connection may stay silent (its relay stalled or
    /// gone) before the server ends it and another relay may take the rows
    /// over; the server counts whole seconds, so it is rounded up. Default 30 s.
    pub lease: Duration,
    /// Delete delivered rows, or mark them done. Default delete.
    pub ack_mode: AckMode,
    /// Whether later messages of a dead-lettered key go on or wait.
    pub on_dead_letter: OnDeadLetter,
    /// Only one relay claims at a time: the one holding `GET_LOCK` on a
    /// connection of its own; the others wait as hot standbys. Default false.
    pub leader_only: bool,
    /// Most payload bytes one claim hands out (default 16 MiB): a claim
    /// stops before the row that would take it past this, so a relay holds
    /// about this much per batch in memory (twice with prefetch) however
    /// large the rows. The first row of a claim is always taken: a row
    /// larger than the budget is delivered alone, in a batch of one.
    pub batch_bytes: usize,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            table: "outbox_messages".to_string(),
            lease: Duration::from_secs(30),
            ack_mode: AckMode::Delete,
            on_dead_letter: OnDeadLetter::Continue,
            leader_only: false,
            batch_bytes: DEFAULT_BATCH_BYTES,
        }
    }
}

/// Longest table name: MySQL names are at most 64 characters and the helper
/// tables and indexes append up to 8.
const MAX_TABLE_LEN: usize = 56;

impl MysqlConfig {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        outbox_sql::check_identifier("table", &self.table, MAX_TABLE_LEN)?;
        outbox_sql::check_lease(self.lease)?;
        outbox_sql::check_batch_bytes(self.batch_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_is_refused_and_named() {
        for bad in ["t`; drop table x; --", "Outbox", "9t", "", "a.b"] {
            let config = MysqlConfig {
                table: bad.into(),
                ..MysqlConfig::default()
            };
            assert_eq!(config.validate().unwrap_err().setting, "table", "{bad}");
        }
        MysqlConfig::default().validate().unwrap();
    }
}
