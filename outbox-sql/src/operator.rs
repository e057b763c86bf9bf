//! The operator's calls on an outbox table, whatever its database.

use std::time::Duration;

use futures_util::future::BoxFuture;
use outbox_core::{Backlog, BoxSource, DeadLetter, Error, Message, Waiting};
use uuid::Uuid;

/// One outbox table on one database, behind one trait object: what an
/// operator asks of it, and relay sources on it. Each database's outbox
/// handle implements it (its own methods of the same names are the same
/// calls), so a binary that picks its database at run time holds a
/// `Box<dyn Operator>` and needs no dispatch of its own.
pub trait Operator: Send + Sync {
    /// Creates or updates the table (idempotent; concurrent callers wait
    /// for each other).
    fn migrate(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Messages waiting, age of the oldest, and dead letters.
    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, Error>>;

    /// The oldest `limit` messages waiting for delivery (a retry's error
    /// and next attempt with them), in the order they were written.
    fn waiting(&self, limit: u32) -> BoxFuture<'_, Result<Vec<Waiting>, Error>>;

    /// The oldest `limit` dead letters, with their reasons.
    fn dead_letters(&self, limit: u32) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>>;

    /// How many dead letters wait.
    fn count_dead_letters(&self) -> BoxFuture<'_, Result<u64, Error>>;

    /// Puts these dead letters back in the delivery path, attempts reset;
    /// returns how many.
    fn requeue<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<u64, Error>>;

    /// Puts every dead letter back; returns how many.
    fn requeue_all(&self) -> BoxFuture<'_, Result<u64, Error>>;

    /// In mark-done mode, deletes rows delivered more than `older_than` ago,
    /// `batch` rows per statement; returns how many.
    fn cleanup(&self, older_than: Duration, batch: u32) -> BoxFuture<'_, Result<u64, Error>>;

    /// Deletes bookkeeping no message needs any more, `batch` rows per
    /// statement (MySQL: `<table>_keys` rows of keys with no message left);
    /// returns how many. Nothing to do on the other databases.
    fn prune(&self, batch: u32) -> BoxFuture<'_, Result<u64, Error>> {
        let _ = batch;
        Box::pin(async { Ok(0) })
    }

    /// A relay's source on this table, with its own identity and leases.
    fn relay_source(&self) -> BoxFuture<'_, Result<BoxSource<Message>, Error>>;
}
