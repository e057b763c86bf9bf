//! A claimed row turned into a [`Message`], or the reason it cannot be.

use chrono::{DateTime, Utc};
use outbox_core::Message;
use outbox_sql::headers_from_json;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

/// A row read back: the message, or why it is malformed (a row written by
/// hand, say), to be dead-lettered with that reason.
pub(crate) enum Decoded {
    Message(Message),
    /// Named by `seq`, the one column SQLite itself guarantees (an id or
    /// attempts written by hand may be anything).
    Malformed {
        seq: i64,
        attempts: i64,
        reason: String,
    },
}

/// Unix microseconds as a time; out-of-range values read as the epoch.
pub(crate) fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Reads a row. Only `seq` must decode; any other column that cannot be
/// read makes the row malformed, never fails the claim.
pub(crate) fn decode(row: &SqliteRow) -> Result<Decoded, sqlx::Error> {
    let seq: i64 = row.try_get("seq")?;
    let attempts: i64 = match row.try_get("attempts") {
        Ok(attempts) => attempts,
        Err(err) => {
            return Ok(Decoded::Malformed {
                seq,
                attempts: 0,
                reason: format!("malformed row: column attempts: {err}"),
            })
        }
    };
    let malformed = |reason: String| Decoded::Malformed {
        seq,
        attempts,
        reason,
    };
    let id: Uuid = match row.try_get("id") {
        Ok(id) => id,
        Err(err) => return Ok(malformed(format!("malformed row: column id: {err}"))),
    };
    let headers: String = match row.try_get("headers") {
        Ok(headers) => headers,
        Err(err) => return Ok(malformed(format!("malformed row: {err}"))),
    };
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
    // Typed reads of rows written by hand may fail (a blob key, say): such
    // a row is dead-lettered with the reason.
    let message = match read(row, id, attempts, headers) {
        Ok(message) => message,
        Err(err) => return Ok(malformed(format!("malformed row: {err}"))),
    };
    Ok(match message.validate() {
        Ok(()) => Decoded::Message(message),
        Err(err) => malformed(format!("malformed row: {}", err.report())),
    })
}

fn read(
    row: &SqliteRow,
    id: Uuid,
    attempts: i64,
    headers: std::collections::BTreeMap<String, String>,
) -> Result<Message, sqlx::Error> {
    // A payload inserted as TEXT by hand is still its bytes.
    let payload = row
        .try_get::<Vec<u8>, _>("payload")
        .or_else(|_| row.try_get::<String, _>("payload").map(String::into_bytes))?;
    Ok(Message {
        id,
        ordering_key: row.try_get("ordering_key")?,
        destination: row.try_get("destination")?,
        partition_key: row.try_get("partition_key")?,
        payload,
        headers,
        event_type: row.try_get("event_type")?,
        created_at: time(row.try_get("created_at")?),
        attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
    })
}
