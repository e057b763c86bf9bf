//! MySQL 8 and MariaDB for the transactional outbox: write messages inside
//! your own sqlx transaction, and relay them with a [`MysqlSource`].
//!
//! The same model as `outbox-postgres`: a claim's transaction holds its rows
//! locked while the relay publishes them, and is the lease (see
//! [`MysqlSource`]); a claim never hands out a message whose key has an
//! earlier one held by another batch, waiting for its retry, or (with
//! `OnDeadLetter::Park`) dead. There is no NOTIFY: relays poll adaptively,
//! and a writer in the same process can wake them right after its commit
//! with [`MysqlOutbox::notify_committed`].
//!
//! MySQL and MariaDB differ in ways this crate avoids: it uses neither
//! `RETURNING` nor subqueries with `LIMIT` inside `IN`, claims with
//! `SELECT … FOR UPDATE SKIP LOCKED` and acknowledges through `JSON_TABLE`
//! (both MySQL 8.0.4+, MariaDB 10.6+), stores headers as text holding JSON,
//! and keeps every time in UTC.

mod claim;
mod config;
mod error;
mod inbox;
mod key_lock;
mod leader;
mod operator;
mod row;
mod schema;
mod source;
mod sql;
mod writer;

pub use config::{AckMode, MysqlConfig};
pub use error::classify;
pub use inbox::MysqlInbox;
pub use outbox_core::DeadLetter;
pub use outbox_sql::{Operator, Receipt};
pub use schema::MIGRATIONS;
pub use source::MysqlSource;
/// The sqlx this crate is built on, so your transactions and its match.
pub use sqlx;
pub use writer::{MysqlOutbox, MIGRATE_WAIT};
