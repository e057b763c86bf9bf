//! sqlx SQLite errors classified by whether retrying can help.

use outbox_core::{Error, ErrorKind};

/// Turns a sqlx error into an outbox error, temporary or permanent.
///
/// Temporary: the database is busy or locked (`SQLITE_BUSY`, 5, and
/// `SQLITE_LOCKED`, 6, with their extended codes), I/O errors and pool
/// timeouts. Everything else is permanent.
pub fn classify(err: sqlx::Error) -> Error {
    let kind = match &err {
        sqlx::Error::Database(db) => match db.code().and_then(|c| c.parse::<i32>().ok()) {
            // The primary result code is the low byte of the extended one.
            Some(code) if matches!(code & 0xff, 5 | 6) => ErrorKind::Temporary,
            _ => ErrorKind::Permanent,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Temporary,
        _ => ErrorKind::Permanent,
    };
    Error::new(kind, "sqlite").with_source(err)
}
