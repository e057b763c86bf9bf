//! The bytes a writer hands to `pg_logical_emit_message`: version 1 of the
//! WAL outbox's envelope, simple enough for a writer in any language.
//!
//! ```text
//! {"v":1,"id":"0190…","key":"order-42","destination":"orders", …}\n<payload bytes>
//! ```
//!
//! One line of JSON (JSON text never holds a raw newline), one newline byte,
//! then the payload byte for byte. The JSON object's fields:
//!
//! | field | type | |
//! |---|---|---|
//! | `v` | number | `1`; another version is refused by name |
//! | `id` | string | a UUID, the message id (UUIDv7 recommended) |
//! | `key` | string | the ordering key |
//! | `destination` | string | topic, subject or `exchange/routing-key` |
//! | `partition_key` | string, optional | |
//! | `event_type` | string, optional | |
//! | `headers` | object of strings, optional | |
//! | `created_at` | RFC 3339 string, optional | the transaction's commit time when absent |
//!
//! In SQL, with the default prefix:
//!
//! ```sql
//! SELECT pg_logical_emit_message(true, 'outbox',
//!   convert_to(json_build_object('v', 1, 'id', gen_random_uuid(),
//!     'key', 'order-42', 'destination', 'orders')::text, 'UTF8')
//!   || '\x0a'::bytea || convert_to('{"total": 12}', 'UTF8'));
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_core::Message;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Head<'a> {
    v: u32,
    id: Uuid,
    key: std::borrow::Cow<'a, str>,
    destination: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partition_key: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<DateTime<Utc>>,
}

/// `message` as envelope bytes.
pub fn encode(message: &Message) -> Vec<u8> {
    let head = Head {
        v: ENVELOPE_VERSION,
        id: message.id,
        key: message.ordering_key.as_str().into(),
        destination: message.destination.as_str().into(),
        partition_key: message.partition_key.as_deref().map(Into::into),
        event_type: message.event_type.as_deref().map(Into::into),
        headers: message.headers.clone(),
        created_at: Some(message.created_at),
    };
    let mut bytes = serde_json::to_vec(&head).expect("the head serializes");
    bytes.push(b'\n');
    bytes.extend_from_slice(&message.payload);
    bytes
}

/// Why an envelope cannot be read, for the dead letter it becomes. When the
/// head named an id, the dead letter keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The id, when the head got as far as naming one.
    pub id: Option<Uuid>,
    /// The ordering key, likewise.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// Reads envelope bytes; `committed_at` stands in for a missing `created_at`.
pub fn decode(bytes: &[u8], committed_at: DateTime<Utc>) -> Result<Message, Malformed> {
    let Some(newline) = bytes.iter().position(|b| *b == b'\n') else {
        return Err(partial(bytes, "no newline after the JSON head"));
    };
    let (head, payload) = (&bytes[..newline], &bytes[newline + 1..]);
    let head: Head = serde_json::from_slice(head).map_err(|err| {
        partial(
            head,
            &format!("the head is not a version 1 envelope: {err}"),
        )
    })?;
    if head.v != ENVELOPE_VERSION {
        return Err(Malformed {
            id: Some(head.id),
            key: Some(head.key.into_owned()),
            reason: format!(
                "envelope version {} (this relay reads {ENVELOPE_VERSION})",
                head.v
            ),
        });
    }
    Ok(Message {
        id: head.id,
        ordering_key: head.key.into_owned(),
        destination: head.destination.into_owned(),
        partition_key: head.partition_key.map(|k| k.into_owned()),
        payload: payload.to_vec(),
        headers: head.headers,
        event_type: head.event_type.map(|t| t.into_owned()),
        created_at: head.created_at.unwrap_or(committed_at),
        attempts: 0,
    })
}

/// A malformed envelope with whatever id and key its head still yields.
fn partial(head: &[u8], reason: &str) -> Malformed {
    let value: Option<serde_json::Value> = serde_json::from_slice(head).ok();
    let field = |name: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    Malformed {
        id: field("id").and_then(|id| id.parse().ok()),
        key: field("key"),
        reason: format!("malformed envelope: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_envelope() {
        let message = Message::builder("orders", "order-1")
            .payload(b"line one\nline two\x00".to_vec())
            .header("tenant", "a\nb")
            .event_type("OrderPlaced")
            .partition_key("p")
            .build()
            .unwrap();
        let read = decode(&encode(&message), Utc::now()).unwrap();
        assert_eq!(read, message);
    }

    #[test]
    fn a_missing_created_at_is_the_commit_time() {
        let id = Uuid::now_v7();
        let bytes =
            format!("{{\"v\":1,\"id\":\"{id}\",\"key\":\"k\",\"destination\":\"d\"}}\n{{}}");
        let committed = Utc::now();
        let read = decode(bytes.as_bytes(), committed).unwrap();
        assert_eq!(
            (read.id, read.created_at, read.payload),
            (id, committed, b"{}".to_vec())
        );
    }

    #[test]
    fn what_cannot_be_read_says_why_and_keeps_the_id() {
        let id = Uuid::now_v7();
        let later = format!("{{\"v\":2,\"id\":\"{id}\",\"key\":\"k\",\"destination\":\"d\"}}\n");
        let err = decode(later.as_bytes(), Utc::now()).unwrap_err();
        assert_eq!((err.id, err.key.as_deref()), (Some(id), Some("k")));
        assert!(err.reason.contains("version 2"), "{}", err.reason);

        let no_destination = format!("{{\"v\":1,\"id\":\"{id}\",\"key\":\"k\"}}\n");
        let err = decode(no_destination.as_bytes(), Utc::now()).unwrap_err();
        assert_eq!(err.id, Some(id));
        assert!(err.reason.contains("destination"), "{}", err.reason);

        let err = decode(b"not json at all", Utc::now()).unwrap_err();
        assert_eq!(err.id, None);
        assert!(err.reason.contains("no newline"), "{}", err.reason);
    }
}
