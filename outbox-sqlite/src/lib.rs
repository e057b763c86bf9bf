//! SQLite for the transactional outbox: write messages inside your own sqlx
//! transaction on a file database, and relay them with a [`SqliteSource`].
//! No server to run, which makes it the quickstart's source and a fit for
//! single-node services and edge devices.
//!
//! ```no_run
//! # async fn demo() -> Result<(), outbox_core::Error> {
//! use outbox_core::Message;
//! use outbox_sqlite::{connect, SqliteConfig, SqliteOutbox};
//!
//! let pool = connect("orders.db").await?;
//! let outbox = SqliteOutbox::new(SqliteConfig::default(), pool.clone())?;
//! outbox.migrate().await?;
//!
//! let mut tx = pool.begin().await.map_err(outbox_sqlite::classify)?;
//! // ... your business rows, on the same transaction ...
//! let message = Message::builder("orders", "order-42").payload("{}").build()?;
//! outbox.enqueue(&mut tx, &message).await?;
//! tx.commit().await.map_err(outbox_sqlite::classify)?;
//! outbox.notify_committed();
//!
//! let source = outbox.source().await?; // hand it to outbox_core::Relay
//! # Ok(()) }
//! ```
//!
//! # How claims stay safe
//!
//! SQLite runs one write transaction at a time. A claim is one `UPDATE …
//! RETURNING` statement that leases the first waiting rows whose earlier
//! messages of the same key are neither leased nor waiting for a retry;
//! reports are fenced by the relay id written into the rows. Several relays
//! (in one process or several on the same file) therefore keep every key in
//! order, as with the other sources.

mod config;
mod connect;
mod error;
mod inbox;
mod operator;
mod row;
mod schema;
mod source;
mod sql;
mod writer;

pub use config::{AckMode, SqliteConfig};
pub use connect::{connect, connect_options};
pub use error::classify;
pub use inbox::SqliteInbox;
pub use outbox_core::DeadLetter;
pub use outbox_sql::{Operator, Receipt};
pub use schema::MIGRATIONS;
pub use source::SqliteSource;
/// The sqlx this crate is built on, so your transactions and its match.
pub use sqlx;
pub use writer::SqliteOutbox;
