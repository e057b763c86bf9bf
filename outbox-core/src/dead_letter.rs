//! A dead-lettered message as an operator sees it, whatever the source.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::Message;

/// A dead-lettered row, as an operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The message id.
    pub id: Uuid,
    /// The message, when the row can still be read as one (a row written by
    /// hand may not be).
    pub message: Option<Message>,
    /// Attempts made.
    pub attempts: u32,
    /// Why it was dead-lettered.
    pub error: String,
    /// When.
    pub dead_at: DateTime<Utc>,
}
