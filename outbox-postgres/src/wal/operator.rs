//! The WAL outbox behind `outbox_sql::Operator`, for `outbox-relay`.

use std::time::Duration;

use futures_util::future::BoxFuture;
use outbox_core::{Backlog, BoxSource, DeadLetter, Error, Message, Source, Waiting};
use outbox_sql::Operator;
use uuid::Uuid;

use super::WalOutbox;

impl Operator for WalOutbox {
    fn migrate(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(WalOutbox::migrate(self))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog, Error>> {
        Box::pin(WalOutbox::backlog(self))
    }

    fn waiting(&self, limit: u32) -> BoxFuture<'_, Result<Vec<Waiting>, Error>> {
        Box::pin(WalOutbox::waiting(self, limit))
    }

    fn dead_letters(&self, limit: u32) -> BoxFuture<'_, Result<Vec<DeadLetter>, Error>> {
        Box::pin(WalOutbox::dead_letters(self, limit))
    }

    fn count_dead_letters(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(WalOutbox::count_dead_letters(self))
    }

    fn requeue<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(WalOutbox::requeue(self, ids))
    }

    fn requeue_all(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(WalOutbox::requeue_all(self))
    }

    /// Nothing to clean: delivered messages leave no row.
    fn cleanup(&self, _older_than: Duration, _batch: u32) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(async { Ok(0) })
    }

    fn relay_source(&self) -> BoxFuture<'_, Result<BoxSource<Message>, Error>> {
        Box::pin(async { Ok(self.source().await?.boxed()) })
    }
}
