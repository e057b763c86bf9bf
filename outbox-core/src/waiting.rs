//! A message waiting for delivery as an operator sees it, whatever the
//! source.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::Message;

/// A waiting row (not delivered, not dead-lettered), as an operator lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// The message id.
    pub id: Uuid,
    /// The message, when the row can be read as one (a row written by hand
    /// may not be; the relay dead-letters it when it claims it).
    pub message: Option<Message>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed, if one did.
    pub last_error: Option<String>,
    /// When it may be attempted next (its backoff after a failure).
    pub next_attempt_at: DateTime<Utc>,
}
