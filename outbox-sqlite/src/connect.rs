//! Opening a SQLite file the way an outbox needs it.

use std::str::FromStr;
use std::time::Duration;

use outbox_core::Error;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::classify;

/// Options for a file database fit for an outbox: created if missing, WAL
/// journal (writers do not block readers), `synchronous = FULL` (a commit
/// survives power loss, so a committed message is never lost) and a 10 s
/// busy timeout (writers and relays wait for each other rather than fail).
/// `path` is a file path or a `sqlite:` URL.
pub fn connect_options(path: &str) -> Result<SqliteConnectOptions, Error> {
    let url = if path.starts_with("sqlite:") {
        path.to_string()
    } else {
        format!("sqlite://{path}")
    };
    let options = SqliteConnectOptions::from_str(&url).map_err(classify)?;
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10)))
}

/// A pool on `path` with [`connect_options`].
pub async fn connect(path: &str) -> Result<SqlitePool, Error> {
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(connect_options(path)?)
        .await
        .map_err(classify)
}
