//! A claimed row turned into a [`Message`], or the reason it cannot be.

use chrono::{DateTime, Utc};
use outbox_core::Message;
use outbox_sql::headers_from_text;
use sqlx::mysql::MySqlRow;
use sqlx::Row;
use uuid::Uuid;

/// A row read back, named by its id.
pub(crate) type Decoded = outbox_sql::Decoded<Uuid, i32>;

/// Reads a row. Only `id` and `attempts` must decode; any other column
/// that cannot be read (a zero DATETIME, a NULL, bytes that are not UTF-8)
/// makes the row malformed, never fails the claim.
///
/// `payload`, when given, was read apart from the row (one too large to
/// come with it).
pub(crate) fn decode(row: &MySqlRow, payload: Option<Vec<u8>>) -> Result<Decoded, sqlx::Error> {
    let id: Uuid = row.try_get("id")?;
    let attempts: i32 = row.try_get("attempts")?;
    let seq: u64 = row.try_get("seq")?;
    Ok(Decoded::new(id, attempts, read(row, id, attempts, payload)).sequenced(seq as i64))
}

fn read(
    row: &MySqlRow,
    id: Uuid,
    attempts: i32,
    payload: Option<Vec<u8>>,
) -> Result<Message, String> {
    fn column<'r, T>(row: &'r MySqlRow, name: &str) -> Result<T, String>
    where
        T: sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql>,
    {
        row.try_get(name)
            .map_err(|err| format!("malformed row: column {name}: {err}"))
    }
    let headers: String = column(row, "headers")?;
    Ok(Message {
        id,
        ordering_key: column(row, "ordering_key")?,
        destination: column(row, "destination")?,
        partition_key: column(row, "partition_key")?,
        payload: match payload {
            Some(payload) => payload,
            None => column(row, "payload")?,
        },
        headers: headers_from_text(&headers)?,
        event_type: column(row, "event_type")?,
        created_at: column::<DateTime<Utc>>(row, "created_at")?,
        attempts: attempts.max(0) as u32,
    })
}
