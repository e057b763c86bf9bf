//! sqlx MySQL errors classified by whether retrying can help.

use outbox_core::{Error, ErrorKind};

/// Turns a sqlx error into an outbox error, temporary or permanent.
///
/// Temporary: deadlock (1213), lock wait timeout (1205), lost or refused
/// connections (2002, 2003, 2006, 2013, 1040 too many connections, 1053
/// server shutdown, 1927 connection killed), I/O errors and pool timeouts.
/// Everything else is permanent.
pub fn classify(err: sqlx::Error) -> Error {
    let kind = match &err {
        sqlx::Error::Database(_) => match error_number(&err) {
            Some(1213 | 1205 | 1040 | 1053 | 1927 | 2002 | 2003 | 2006 | 2013) => {
                ErrorKind::Temporary
            }
            _ => ErrorKind::Permanent,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Temporary,
        _ => ErrorKind::Permanent,
    };
    Error::new(kind, "mysql").with_source(err)
}

/// The server's error number, for an error the server reported.
pub(crate) fn error_number(err: &sqlx::Error) -> Option<u16> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}
