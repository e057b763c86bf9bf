//! Settings of a PostgreSQL outbox, checked when the outbox is built.

use std::time::Duration;

use outbox_core::{ConfigError, OnDeadLetter, DEFAULT_BATCH_BYTES};

pub use outbox_sql::AckMode;

/// Where the outbox lives and how its relays behave.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConfig {
    /// Schema of the table. Default `public`.
    pub schema: String,
    /// Table name. Default `outbox_messages`.
    pub table: String,
    /// How long a claim holds before another relay may take the rows over.
    /// Default 30 s.
    pub lease: Duration,
    /// Delete delivered rows, or mark them done. Default delete.
    pub ack_mode: AckMode,
    /// Whether later messages of a dead-lettered key go on or wait.
    /// Default [`OnDeadLetter::Continue`].
    pub on_dead_letter: OnDeadLetter,
    /// Relays LISTEN, and writers send `pg_notify` while a relay waits for
    /// work, so an idle relay wakes at once instead of at its next poll.
    /// Default true. A relay lists itself as waiting (in `<table>_idle`)
    /// only after two claims 5 ms apart found nothing, and writers notify
    /// only while one is listed: PostgreSQL commits notifying transactions
    /// one at a time, so writers that notified on every commit capped the
    /// database's commit rate (about 2,700 against 7,500 per second on a
    /// 2-core machine); now they pay for it about once per pause of the
    /// relays, and not at all while the relays keep finding work.
    pub notify: bool,
    /// Only one relay claims at a time: the one holding a session advisory
    /// lock on a connection of its own; the others wait as hot standbys and
    /// take over when the leader's connection ends. Default false (every
    /// relay claims, order per key still holds).
    pub leader_only: bool,
    /// Most payload bytes one claim hands out (default 16 MiB): a claim
    /// stops before the row that would take it past this, so a relay holds
    /// about this much per batch in memory (twice with prefetch) however
    /// large the rows. The first row of a claim is always taken: a row
    /// larger than the budget is delivered alone, in a batch of one.
    pub batch_bytes: usize,
    /// Lanes of keys (default 1: none). With more than one, each ordering
    /// key belongs to one lane (a hash of the key), and a claim takes the
    /// rows of one lane no other batch holds, locking the lane for its
    /// batch: relays claiming at once no longer step over each other's
    /// rows at the head of the queue, which made each claim's work grow
    /// with the number of relays. Give about four lanes per relay (each
    /// relay holds two batches with prefetch). Every relay of a table must
    /// use the same count, and `migrate` with it creates the lane index
    /// `<table>_l<lanes>` (one more index each message pays for), which a
    /// relay checks for when it starts. At most 1024.
    pub lanes: u16,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            schema: "public".to_string(),
            table: "outbox_messages".to_string(),
            lease: Duration::from_secs(30),
            ack_mode: AckMode::Delete,
            on_dead_letter: OnDeadLetter::Continue,
            notify: true,
            leader_only: false,
            batch_bytes: DEFAULT_BATCH_BYTES,
            lanes: 1,
        }
    }
}

/// Longest table name: PostgreSQL cuts identifiers at 63 bytes, and index
/// names append up to 8 characters.
const MAX_TABLE_LEN: usize = 55;

/// Most lanes of keys (see [`PostgresConfig::lanes`]).
pub(crate) const MAX_LANES: u16 = 1024;

/// Longest NOTIFY channel PostgreSQL takes (an identifier, 63 bytes).
const MAX_CHANNEL_LEN: usize = 63;

impl PostgresConfig {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        outbox_sql::check_identifier("schema", &self.schema, 63)?;
        outbox_sql::check_identifier("table", &self.table, MAX_TABLE_LEN)?;
        outbox_sql::check_lease(self.lease)?;
        outbox_sql::check_batch_bytes(self.batch_bytes)?;
        // The lease is the claim transaction's
        // `idle_in_transaction_session_timeout`, an int of milliseconds.
        if self.lease.as_millis() > i32::MAX as u128 {
            return Err(ConfigError::new(
                "lease",
                format!(
                    "{:?} is over PostgreSQL's idle_in_transaction_session_timeout range \
                     (at most 2147483647 ms, about 24 days)",
                    self.lease
                ),
            ));
        }
        if !(1..=MAX_LANES).contains(&self.lanes) {
            return Err(ConfigError::new(
                "lanes",
                format!(
                    "{} lanes: give 1 (no lanes) to {MAX_LANES}, about four per relay",
                    self.lanes
                ),
            ));
        }
        let channel = self.channel();
        if self.notify && channel.len() > MAX_CHANNEL_LEN {
            return Err(ConfigError::new(
                "table",
                format!(
                    "with notify on, schema and table name the NOTIFY channel `{channel}`, \
                     {} bytes where PostgreSQL takes at most {MAX_CHANNEL_LEN}: \
                     shorten the schema or table name, or set notify = false",
                    channel.len()
                ),
            ));
        }
        Ok(())
    }

    /// The channel relays LISTEN on.
    pub(crate) fn channel(&self) -> String {
        format!("{}_{}", self.schema, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_is_refused_and_named() {
        for bad in ["outbox; drop table x", "Outbox", "1abc", "", "a\"b", "a.b"] {
            let config = PostgresConfig {
                table: bad.to_string(),
                ..PostgresConfig::default()
            };
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, "table", "{bad}");
        }
        let config = PostgresConfig {
            schema: "public\"; --".to_string(),
            ..PostgresConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "schema");
        PostgresConfig::default().validate().unwrap();
    }

    #[test]
    fn a_notify_channel_postgresql_would_refuse_is_refused_and_named() {
        let config = PostgresConfig {
            schema: "outbox_test".into(),
            table: "conf_a_lost_claims_reports_never_touch_a_newer_claim".into(),
            ..PostgresConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.setting, "table");
        assert!(err.to_string().contains("notify = false"), "{err}");
        PostgresConfig {
            notify: false,
            ..config
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn a_lease_over_the_servers_timeout_range_is_refused() {
        let config = PostgresConfig {
            lease: Duration::from_secs(30 * 24 * 3600),
            ..PostgresConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "lease");
    }

    #[test]
    fn lanes_out_of_range_are_refused_and_named() {
        for lanes in [0, MAX_LANES + 1] {
            let config = PostgresConfig {
                lanes,
                ..PostgresConfig::default()
            };
            assert_eq!(config.validate().unwrap_err().setting, "lanes", "{lanes}");
        }
        PostgresConfig {
            lanes: MAX_LANES,
            ..PostgresConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn short_lease_is_refused() {
        let config = PostgresConfig {
            lease: Duration::from_millis(10),
            ..PostgresConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "lease");
    }
}
