//! What the SQL sources (`outbox-postgres`, `outbox-mysql`, `outbox-sqlite`)
//! share, so each database crate keeps only what is its own: SQL text,
//! locking, error classification and wake-up.

mod ack_mode;
mod batches;
mod checks;
mod held;
pub mod inbox;
mod leader;
mod operator;
mod reports;
mod row;

pub use ack_mode::AckMode;
pub use batches::delete_in_batches;
pub use checks::{check_batch_bytes, check_identifier, check_lease};
pub use held::{HeldBatch, HeldBatches};
pub use inbox::{check_consumer, ordering_of, Receipt, DEFAULT_INBOX_TABLE, MAX_CONSUMER_LEN};
pub use leader::{LeaderLock, Leadership};
pub use operator::Operator;
pub use reports::{Report, TransactionReports};
pub use row::{headers_from_json, headers_from_text, headers_json, Decoded};
