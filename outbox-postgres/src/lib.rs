//! PostgreSQL for the transactional outbox: write messages inside your own
//! sqlx transaction, and relay them with a [`PostgresSource`].
//!
//! ```no_run
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), outbox_core::Error> {
//! use outbox_core::Message;
//! use outbox_postgres::{PostgresConfig, PostgresOutbox};
//!
//! let outbox = PostgresOutbox::new(PostgresConfig::default(), pool.clone())?;
//! outbox.migrate().await?;
//!
//! let mut tx = pool.begin().await.map_err(outbox_postgres::classify)?;
//! // ... your business rows, on the same transaction ...
//! let message = Message::builder("orders", "order-42").payload("{}").build()?;
//! outbox.enqueue(&mut tx, &message).await?;
//! tx.commit().await.map_err(outbox_postgres::classify)?;
//!
//! let source = outbox.source().await?; // hand it to outbox_core::Relay
//! # Ok(()) }
//! ```

mod config;
mod error;
mod idle;
mod inbox;
mod leader;
mod operator;
mod row;
mod schema;
mod source;
mod sql;
mod wake;
#[cfg(feature = "wal")]
pub mod wal;
mod writer;

pub use config::{AckMode, PostgresConfig};
pub use error::classify;
pub use inbox::PostgresInbox;
pub use outbox_core::DeadLetter;
pub use outbox_sql::{Operator, Receipt};
pub use schema::MIGRATIONS;
pub use source::PostgresSource;
/// The sqlx this crate is built on, so your transactions and its match.
pub use sqlx;
#[cfg(feature = "wal")]
pub use wal::{WalConfig, WalMonitor, WalOutbox, WalSource};
pub use writer::PostgresOutbox;
