//! sqlx errors classified by whether retrying can help.

use outbox_core::{Error, ErrorKind};

/// Turns a sqlx error into an outbox error, temporary or permanent.
///
/// Temporary: lost or refused connections, pool timeouts, and the SQLSTATE
/// classes that say "try again": serialization failure (40001), deadlock
/// (40P01), lock not available (55P03), connection exceptions (08),
/// insufficient resources (53), operator intervention (57: admin shutdown,
/// cancelled statement). Everything else is permanent.
pub fn classify(err: sqlx::Error) -> Error {
    let kind = match &err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(code) if retryable_sqlstate(code) => ErrorKind::Temporary,
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
    Error::new(kind, "postgres").with_source(err)
}

fn retryable_sqlstate(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "55P03")
        || code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert!(retryable_sqlstate("40001"));
        assert!(retryable_sqlstate("40P01"));
        assert!(retryable_sqlstate("08006"));
        assert!(retryable_sqlstate("57P01"));
        assert!(!retryable_sqlstate("23505"));
        assert!(!retryable_sqlstate("42P01"));
        assert!(classify(sqlx::Error::PoolTimedOut).is_temporary());
        assert!(!classify(sqlx::Error::RowNotFound).is_temporary());
    }
}
