//! A claimed row turned into a [`Message`], or the reason it cannot be.

use chrono::{DateTime, Utc};
use outbox_core::{headers_from_json, Message};
use sqlx::mysql::MySqlRow;
use sqlx::Row;
use uuid::Uuid;

/// A row read back: the message, or why it is malformed (a row written by
/// hand, say), to be dead-lettered with that reason.
pub(crate) enum Decoded {
    Message(Message),
    Malformed {
        id: Uuid,
        attempts: i32,
        reason: String,
    },
}

pub(crate) fn decode(row: &MySqlRow) -> Result<Decoded, sqlx::Error> {
    let id: Uuid = row.try_get("id")?;
    let attempts: i32 = row.try_get("attempts")?;
    let malformed = |reason: String| Decoded::Malformed {
        id,
        attempts,
        reason,
    };
    let headers: String = row.try_get("headers")?;
    let headers = match serde_json::from_str(&headers) {
        Ok(json) => match headers_from_json(json) {
            Ok(headers) => headers,
            Err(reason) => return Ok(malformed(reason)),
        },
        Err(err) => {
            return Ok(malformed(format!(
                "malformed row: headers are not JSON: {err}"
            )))
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
        Err(err) => malformed(format!("malformed row: {}", err.report())),
    })
}
