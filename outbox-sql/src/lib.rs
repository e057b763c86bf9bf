//! What the SQL sources (`outbox-postgres`, `outbox-mysql`, `outbox-sqlite`)
//! share, so each database crate keeps only what is its own: SQL text,
//! locking, error classification and wake-up.

mod ack_mode;
mod checks;
mod headers;
mod held;
mod operator;

pub use ack_mode::AckMode;
pub use checks::{check_batch_bytes, check_identifier, check_lease};
pub use headers::headers_from_json;
pub use held::{HeldBatch, HeldBatches};
pub use operator::Operator;
