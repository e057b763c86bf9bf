//! A claimed row turned into a [`Message`], or the reason it cannot be.

use chrono::{DateTime, Utc};
use outbox_core::{headers_from_json, Message};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

/// A row read back: the message, or why it is malformed (a row written by
/// hand, say). A malformed row is dead-lettered with the reason, never
/// dropped and never allowed to stop the relay.
pub(crate) enum Decoded {
    Message(Message),
    Malformed {
        id: Uuid,
        attempts: i32,
        reason: String,
    },
}

pub(crate) fn decode(row: &PgRow) -> Result<Decoded, sqlx::Error> {
    let id: Uuid = row.try_get("id")?;
    let attempts: i32 = row.try_get("attempts")?;
    let headers: serde_json::Value = row.try_get("headers")?;
    let headers = match headers_from_json(headers) {
        Ok(headers) => headers,
        Err(reason) => {
            return Ok(Decoded::Malformed {
                id,
                attempts,
                reason,
            })
        }
    };
    let message = Message {
        id,
        ordering_key: row.try_get("ordering_key")?,
        destination: row.try_get("destination")?,
        partition_key: row.try_get("partition_key")?,
        payload: row.try_get("payload")?,
        headers,
        event_type: row.try_get("event_type")?,
        created_at: row.try_get::<DateTime<Utc>, _>("created_at")?,
        attempts: attempts.max(0) as u32,
    };
    Ok(match message.validate() {
        Ok(()) => Decoded::Message(message),
        Err(err) => Decoded::Malformed {
            id,
            attempts,
            reason: format!("malformed row: {}", err.report()),
        },
    })
}

/// Headers as stored: a JSON object of strings.
pub(crate) fn headers_json(message: &Message) -> String {
    serde_json::to_string(&message.headers).expect("a map of strings serializes")
}
