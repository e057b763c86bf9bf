//! A claimed row turned into a [`Message`], or the reason it cannot be.

use chrono::{DateTime, Utc};
use outbox_core::Message;
use outbox_sql::headers_from_text;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use uuid::Uuid;

/// A row read back, named by `seq`, the one column SQLite itself
/// guarantees (an id or attempts written by hand may be anything).
pub(crate) type Decoded = outbox_sql::Decoded<i64, i64>;

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
            let reason = format!("malformed row: column attempts: {err}");
            return Ok(Decoded::new(seq, 0, Err(reason)));
        }
    };
    let id: Uuid = match row.try_get("id") {
        Ok(id) => id,
        Err(err) => {
            let reason = format!("malformed row: column id: {err}");
            return Ok(Decoded::new(seq, attempts, Err(reason)));
        }
    };
    Ok(Decoded::new(seq, attempts, read(row, id, attempts)).sequenced(seq))
}

/// Typed reads of rows written by hand may fail (a blob key, say): such a
/// row is dead-lettered with the reason.
fn read(row: &SqliteRow, id: Uuid, attempts: i64) -> Result<Message, String> {
    let malformed = |err: sqlx::Error| format!("malformed row: {err}");
    let headers: String = row.try_get("headers").map_err(malformed)?;
    let headers = headers_from_text(&headers)?;
    // A payload inserted as TEXT by hand is still its bytes.
    let payload = row
        .try_get::<Vec<u8>, _>("payload")
        .or_else(|_| row.try_get::<String, _>("payload").map(String::into_bytes))
        .map_err(malformed)?;
    Ok(Message {
        id,
        ordering_key: row.try_get("ordering_key").map_err(malformed)?,
        destination: row.try_get("destination").map_err(malformed)?,
        partition_key: row.try_get("partition_key").map_err(malformed)?,
        payload,
        headers,
        event_type: row.try_get("event_type").map_err(malformed)?,
        created_at: time(row.try_get("created_at").map_err(malformed)?),
        attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
    })
}
