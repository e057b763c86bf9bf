//! Settings of a SQLite outbox, checked when the outbox is built.

use std::time::Duration;

use outbox_core::{ConfigError, OnDeadLetter, DEFAULT_BATCH_BYTES};

pub use outbox_sql::AckMode;

/// Where the outbox lives and how its relays behave.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteConfig {
    /// Table name. Default `outbox_messages`.
    pub table: String,
    /// How long a claim holds before another relay may take the rows over.
    /// Default 30 s.
    pub lease: Duration,
    /// Delete delivered rows, or mark them done. Default delete.
    pub ack_mode: AckMode,
    /// Whether later messages of a dead-lettered key go on or wait.
    pub on_dead_letter: OnDeadLetter,
    /// Most payload bytes one claim hands out (default 16 MiB): a claim
    /// stops before the row that would take it past this, so a relay holds
    /// about this much per batch in memory (twice with prefetch) however
    /// large the rows. The first row of a claim is always taken: a row
    /// larger than the budget is delivered alone, in a batch of one.
    pub batch_bytes: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            table: "outbox_messages".to_string(),
            lease: Duration::from_secs(30),
            ack_mode: AckMode::Delete,
            on_dead_letter: OnDeadLetter::Continue,
            batch_bytes: DEFAULT_BATCH_BYTES,
        }
    }
}

/// Longest table name accepted (index names append up to 8 characters).
const MAX_TABLE_LEN: usize = 56;

impl SqliteConfig {
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
        for bad in ["t\"; drop table x; --", "Outbox", "9t", "", "a.b", "main.t"] {
            let config = SqliteConfig {
                table: bad.into(),
                ..SqliteConfig::default()
            };
            assert_eq!(config.validate().unwrap_err().setting, "table", "{bad}");
        }
        let config = SqliteConfig {
            lease: Duration::from_millis(1),
            ..SqliteConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "lease");
        SqliteConfig::default().validate().unwrap();
    }
}
