//! A claimed row turned into a [`Message`], or the reason it cannot be.

use chrono::{DateTime, Utc};
use outbox_core::Message;
use outbox_sql::headers_from_text;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

/// A row read back, named by its id.
pub(crate) type Decoded = outbox_sql::Decoded<Uuid, i32>;

/// Reads a row. Only `id` and `attempts` must decode (the statements that
/// dead-letter a row name it by id); any other column that cannot be read
/// (text that is not UTF-8 in a `SQL_ASCII` database, a NULL, a time out
/// of range) makes the row malformed, never fails the claim.
///
/// `payload`, when given, was read apart from the row (a claim over its
/// byte budget reads the payloads it keeps on their own).
pub(crate) fn decode(row: &PgRow, payload: Option<Vec<u8>>) -> Result<Decoded, sqlx::Error> {
    let id: Uuid = row.try_get("id")?;
    let attempts: i32 = row.try_get("attempts")?;
    let seq: i64 = row.try_get("seq")?;
    Ok(Decoded::new(id, attempts, read(row, id, attempts, payload)).sequenced(seq))
}

pub(crate) fn read(
    row: &PgRow,
    id: Uuid,
    attempts: i32,
    payload: Option<Vec<u8>>,
) -> Result<Message, String> {
    let payload = match payload {
        Some(payload) => payload,
        None => row
            .try_get("payload")
            .map_err(|err| format!("malformed row: column payload: {err}"))?,
    };
    let headers = headers_from_text(&required_text(row, "headers")?)?;
    let created_at: Option<DateTime<Utc>> = row
        .try_get("created_at")
        .map_err(|err| format!("malformed row: column created_at: {err}"))?;
    let created_at = created_at.ok_or_else(|| {
        "malformed row: created_at is not a time the relay can read \
         (infinity, or past the year 200000)"
            .to_string()
    })?;
    Ok(Message {
        id,
        ordering_key: required_text(row, "ordering_key")?,
        destination: required_text(row, "destination")?,
        partition_key: text(row, "partition_key")?,
        payload,
        headers,
        event_type: text(row, "event_type")?,
        created_at,
        attempts: attempts.max(0) as u32,
    })
}

/// A text column read as its bytes (see `sql::READ_COLUMNS`),
/// or why it cannot be a Rust string.
pub(crate) fn text(row: &PgRow, name: &str) -> Result<Option<String>, String> {
    let bytes: Option<Vec<u8>> = row
        .try_get(name)
        .map_err(|err| format!("malformed row: column {name}: {err}"))?;
    bytes
        .map(String::from_utf8)
        .transpose()
        .map_err(|err| format!("malformed row: column {name} is not UTF-8: {err}"))
}

fn required_text(row: &PgRow, name: &str) -> Result<String, String> {
    text(row, name)?.ok_or_else(|| format!("malformed row: column {name} is NULL"))
}
