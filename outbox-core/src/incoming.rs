//! What a consumer reads of a message the relay published.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::{Error, HEADER_EVENT_TYPE, HEADER_MESSAGE_ID, HEADER_ORDERING_KEY, HEADER_SEQUENCE};

/// The W3C trace context header a writer's span travels in, when it had one.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// The W3C trace state header that goes with [`HEADER_TRACEPARENT`].
pub const HEADER_TRACESTATE: &str = "tracestate";

/// A published message as a consumer sees it: its id (the key of an inbox,
/// so a copy is applied once), its ordering key, its event type and its
/// headers (the writer's, trace context included, and the relay's own).
/// Each broker crate reads one from what its client hands a consumer
/// (`outbox_kafka::incoming`, `outbox_amqp::incoming`,
/// `outbox_nats::incoming`); the payload stays in the broker's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The message id the writer gave it, the same in every copy.
    pub id: Uuid,
    /// The ordering key; `None` when the broker could not carry it (a key
    /// with a line break, on NATS).
    pub ordering_key: Option<String>,
    /// The event type, if the message had one.
    pub event_type: Option<String>,
    /// The message's place among those of its ordering key in its outbox
    /// table ([`HEADER_SEQUENCE`]); `None` from a source that has none.
    pub sequence: Option<i64>,
    /// Every header as text, the relay's included.
    pub headers: BTreeMap<String, String>,
}

impl Incoming {
    /// Reads the relay's headers out of `headers`; an error (permanent)
    /// when the message id is missing or not a UUID, which means the
    /// message was not published by an outbox relay.
    pub fn from_headers(headers: BTreeMap<String, String>) -> Result<Self, Error> {
        let id = match headers.get(HEADER_MESSAGE_ID) {
            Some(text) => text.parse().map_err(|_| {
                Error::permanent(format!(
                    "header {HEADER_MESSAGE_ID} is {text:?}, not a UUID"
                ))
            })?,
            None => {
                return Err(Error::permanent(format!(
                    "no {HEADER_MESSAGE_ID} header: not published by an outbox relay"
                )))
            }
        };
        let sequence = match headers.get(HEADER_SEQUENCE) {
            Some(text) => Some(text.parse().map_err(|_| {
                Error::permanent(format!(
                    "header {HEADER_SEQUENCE} is {text:?}, not a whole number"
                ))
            })?),
            None => None,
        };
        Ok(Self {
            id,
            sequence,
            ordering_key: headers.get(HEADER_ORDERING_KEY).cloned(),
            event_type: headers.get(HEADER_EVENT_TYPE).cloned(),
            headers,
        })
    }

    /// The writer's `traceparent`, if its span context was recorded.
    pub fn traceparent(&self) -> Option<&str> {
        self.headers.get(HEADER_TRACEPARENT).map(String::as_str)
    }

    /// The writer's `tracestate`, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.headers.get(HEADER_TRACESTATE).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_relays_headers_are_read_and_the_rest_kept() {
        let id = Uuid::now_v7();
        let incoming = Incoming::from_headers(headers(&[
            (HEADER_MESSAGE_ID, &id.to_string()),
            (HEADER_ORDERING_KEY, "order-7"),
            (HEADER_EVENT_TYPE, "OrderPlaced"),
            (HEADER_SEQUENCE, "42"),
            (
                HEADER_TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tenant", "acme"),
        ]))
        .unwrap();
        assert_eq!(incoming.id, id);
        assert_eq!(incoming.ordering_key.as_deref(), Some("order-7"));
        assert_eq!(incoming.event_type.as_deref(), Some("OrderPlaced"));
        assert_eq!(incoming.sequence, Some(42));
        assert!(incoming.traceparent().unwrap().starts_with("00-4bf9"));
        assert_eq!(incoming.tracestate(), None);
        assert_eq!(incoming.headers["tenant"], "acme");
    }

    #[test]
    fn a_message_without_a_readable_id_is_refused_by_name() {
        let missing = Incoming::from_headers(headers(&[("tenant", "acme")])).unwrap_err();
        assert!(missing.message().contains(HEADER_MESSAGE_ID), "{missing}");
        let garbled = Incoming::from_headers(headers(&[(HEADER_MESSAGE_ID, "nope")])).unwrap_err();
        assert!(garbled.message().contains("not a UUID"), "{garbled}");
    }
}
