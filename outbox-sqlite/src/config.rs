//! Settings of a SQLite outbox, checked when the outbox is built.

use std::time::Duration;

use outbox_core::{ConfigError, OnDeadLetter};

/// What acknowledging a delivered message does to its row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// Delete the row (the default).
    #[default]
    Delete,
    /// Set `done_at`; [`SqliteOutbox::cleanup`](crate::SqliteOutbox::cleanup)
    /// removes such rows later, in bounded batches.
    MarkDone,
}

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
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            table: "outbox_messages".to_string(),
            lease: Duration::from_secs(30),
            ack_mode: AckMode::Delete,
            on_dead_letter: OnDeadLetter::Continue,
        }
    }
}

/// Longest table name accepted (index names append up to 8 characters).
const MAX_TABLE_LEN: usize = 56;

impl SqliteConfig {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut chars = self.table.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !first_ok || !rest_ok || self.table.len() > MAX_TABLE_LEN {
            return Err(ConfigError::new(
                "table",
                format!(
                    "{:?} is not a plain identifier: use 1 to {MAX_TABLE_LEN} lowercase letters, \
                     digits and underscores, not starting with a digit",
                    self.table
                ),
            ));
        }
        if self.lease < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "lease",
                format!("must be at least 100 ms, got {:?}", self.lease),
            ));
        }
        Ok(())
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
