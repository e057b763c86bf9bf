//! Settings of the WAL outbox, checked when the outbox is built.

use std::fmt;
use std::time::Duration;

use outbox_core::{ConfigError, OnDeadLetter, DEFAULT_BATCH_BYTES};

/// Where the WAL outbox reads and keeps its failures, and how its relay
/// behaves.
#[derive(Clone, PartialEq)]
pub struct WalConfig {
    /// A PostgreSQL URL (`postgres://user:password@host:port/database`) for
    /// the replication connection, whose user needs the `REPLICATION`
    /// attribute (or superuser). Never logged. Password or SCRAM
    /// authentication. TLS by libpq's parameters (`sslmode`, default
    /// `prefer`; `sslrootcert`, `sslcert`, `sslkey`) with the feature
    /// `wal-tls`; without it a URL that requires TLS is refused.
    pub url: String,
    /// The prefix writers give `pg_logical_emit_message`; messages under
    /// other prefixes are not the outbox's. Default `outbox`.
    pub prefix: String,
    /// The logical replication slot the relay reads (pgoutput). Default
    /// `outbox_slot`.
    pub slot: String,
    /// The publication pgoutput needs: empty for messages alone, with
    /// `table`'s inserts in the table mode. Default `outbox_publication`.
    pub publication: String,
    /// Schema of the failures table, and of `table`. Default `public`.
    pub schema: String,
    /// The table mode: an outbox table (in `schema`) whose inserted rows
    /// the relay reads from the log, beside the messages written under
    /// `prefix`. [`WalOutbox::enqueue`](super::WalOutbox::enqueue) then
    /// inserts rows; any writer that inserts into the table (the
    /// table-based outbox's writers, another language's) is read the same
    /// way. `migrate` creates the table if it does not exist and adds it to
    /// the publication (inserts only); the relay deletes the rows it read.
    /// Default `None`: messages only.
    pub table: Option<String>,
    /// The failures table: messages waiting for a retry, the later
    /// messages of their keys, and dead letters. Default
    /// `outbox_wal_failures`.
    pub failures_table: String,
    /// How long a claim holds. Also the replication connection's
    /// `wal_sender_timeout`: a relay stopped for longer loses the slot to a
    /// standby, and its sends, fenced by this lease, never start. Default
    /// 30 s.
    pub lease: Duration,
    /// Whether later messages of a dead-lettered key go on or wait.
    pub on_dead_letter: OnDeadLetter,
    /// Most payload bytes one claim hands out (default 16 MiB).
    pub batch_bytes: usize,
    /// Most messages read from the log and not yet settled that the relay
    /// holds in memory; reading pauses at this, between transactions (a
    /// transaction with more messages is held whole). Default 10,000: ten claims
    /// of 1,000 ahead, measured faster than 50,000 (48,802 against 32,770
    /// msg/s draining 1,000,000 in one `outbox-relay`) and within 64 MiB.
    pub max_held: usize,
    /// Log bytes the slot may fall behind the log's end before the relay
    /// reports unhealthy (`Stats::health`, `/healthz`): the server keeps
    /// that much log for the slot. `None` never. Default 1 GiB.
    pub max_lag_bytes: Option<u64>,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: "outbox".into(),
            slot: "outbox_slot".into(),
            publication: "outbox_publication".into(),
            schema: "public".into(),
            table: None,
            failures_table: "outbox_wal_failures".into(),
            lease: Duration::from_secs(30),
            on_dead_letter: OnDeadLetter::Continue,
            batch_bytes: DEFAULT_BATCH_BYTES,
            max_held: 10_000,
            max_lag_bytes: Some(1 << 30),
        }
    }
}

impl fmt::Debug for WalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalConfig")
            .field("url", &outbox_core::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("failures_table", &self.failures_table)
            .field("lease", &self.lease)
            .field("on_dead_letter", &self.on_dead_letter)
            .field("batch_bytes", &self.batch_bytes)
            .field("max_held", &self.max_held)
            .field("max_lag_bytes", &self.max_lag_bytes)
            .finish()
    }
}

impl WalConfig {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.endpoint()?;
        if self.prefix.is_empty() || self.prefix.contains('\0') {
            return Err(ConfigError::new("prefix", "must be a non-empty text"));
        }
        outbox_sql::check_identifier("slot", &self.slot, 63)?;
        outbox_sql::check_identifier("publication", &self.publication, 63)?;
        outbox_sql::check_identifier("schema", &self.schema, 63)?;
        outbox_sql::check_identifier("failures_table", &self.failures_table, 55)?;
        if let Some(table) = &self.table {
            outbox_sql::check_identifier("table", table, 63)?;
            if *table == self.failures_table {
                return Err(ConfigError::new(
                    "table",
                    "must differ from failures_table, which the relay writes itself",
                ));
            }
        }
        outbox_sql::check_lease(self.lease)?;
        outbox_sql::check_batch_bytes(self.batch_bytes)?;
        if self.lease.as_millis() > i32::MAX as u128 {
            return Err(ConfigError::new(
                "lease",
                "is the replication connection's wal_sender_timeout: at most 2147483647 ms",
            ));
        }
        if self.max_held == 0 {
            return Err(ConfigError::new("max_held", "must be at least 1"));
        }
        if self.max_lag_bytes == Some(0) {
            return Err(ConfigError::new(
                "max_lag_bytes",
                "must be at least 1 (or unset, to never report the lag unhealthy)",
            ));
        }
        Ok(())
    }

    /// The replication connection's address and credentials, from `url`.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        let bad = |why: &str| ConfigError::new("url", why.to_string());
        let url =
            url::Url::parse(&self.url).map_err(|err| bad(&format!("is not a URL ({err})")))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad("must start with postgres:// or postgresql://"));
        }
        let decode = |text: &str| {
            percent_decode(text).ok_or_else(|| bad("holds a percent-escape that is not UTF-8"))
        };
        let tls = super::tls::tls_config(&url)?;
        let database = url.path().trim_start_matches('/');
        if database.is_empty() {
            return Err(bad("names no database (postgres://user@host/database)"));
        }
        Ok(Endpoint {
            host: url.host_str().unwrap_or("localhost").to_string(),
            port: url.port().unwrap_or(5432),
            user: match url.username() {
                "" => "postgres".to_string(),
                user => decode(user)?,
            },
            password: decode(url.password().unwrap_or(""))?,
            database: decode(database)?,
            application_name: url
                .query_pairs()
                .find(|(k, _)| k == "application_name")
                .map_or_else(|| "outbox-relay".to_string(), |(_, v)| v.into_owned()),
            tls,
        })
    }
}

/// What the replication connection needs of `url`.
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) database: String,
    /// The URL's `application_name`, or `outbox-relay`.
    pub(crate) application_name: String,
    pub(crate) tls: pgwire_replication::TlsConfig,
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> WalConfig {
        WalConfig {
            url: url.into(),
            ..WalConfig::default()
        }
    }

    #[test]
    fn the_url_gives_the_endpoint() {
        let endpoint = config("postgres://repl:p%40ss@db.example:6432/shop")
            .endpoint()
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            (
                endpoint.host.as_str(),
                endpoint.port,
                endpoint.user.as_str()
            ),
            ("db.example", 6432, "repl")
        );
        assert_eq!(
            (endpoint.password.as_str(), endpoint.database.as_str()),
            ("p@ss", "shop")
        );
    }

    #[test]
    fn bad_settings_are_named_and_the_password_never_shown() {
        for (url, setting) in [
            ("", "url"),
            ("mysql://root@h/db", "url"),
            ("postgres://root:secret@h", "url"),
            ("postgres://root:secret@h/db?sslmode=sometimes", "url"),
        ] {
            let err = config(url).validate().unwrap_err();
            assert_eq!(err.setting, setting, "{url}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let slot = WalConfig {
            slot: "bad slot".into(),
            ..config("postgres://h/db")
        };
        assert_eq!(slot.validate().unwrap_err().setting, "slot");
        let lag = WalConfig {
            max_lag_bytes: Some(0),
            ..config("postgres://h/db")
        };
        assert_eq!(lag.validate().unwrap_err().setting, "max_lag_bytes");
        for table in ["bad table", "outbox_wal_failures"] {
            let mode = WalConfig {
                table: Some(table.into()),
                ..config("postgres://h/db")
            };
            assert_eq!(mode.validate().unwrap_err().setting, "table", "{table}");
        }
        let shown = format!("{:?}", config("postgres://u:secret@h/db"));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
