//! The ready-made outbox message, its builder, and typed events.

use std::collections::BTreeMap;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, Item};

/// Header carrying the event type when a destination has no native field.
pub const HEADER_EVENT_TYPE: &str = "outbox-event-type";
/// Header carrying a typed event's schema version.
pub const HEADER_EVENT_VERSION: &str = "outbox-event-version";
/// Header carrying the message id when a destination has no native field.
pub const HEADER_MESSAGE_ID: &str = "outbox-message-id";
/// Header carrying the ordering key, so a consumer knows a message's key
/// whatever the broker's partitioning or routing.
pub const HEADER_ORDERING_KEY: &str = "outbox-ordering-key";
/// Header the SQL sources add to each message they read: the row's `seq`
/// in its outbox table, which grows with commit order among the messages of
/// one ordering key (same-key writers commit one after the other). An
/// inbox uses it to refuse a message older than one already applied.
pub const HEADER_SEQUENCE: &str = "outbox-sequence";

/// One outbox message: what the writers store and the relay publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Time-ordered (UUIDv7) stable id; brokers and consumers drop duplicates by it.
    pub id: Uuid,
    /// The entity or aggregate id; messages sharing it are published in order.
    pub ordering_key: String,
    /// Where to publish: a Kafka topic, a NATS subject, an AMQP
    /// `exchange/routing-key` (see each destination's mapping).
    pub destination: String,
    /// Broker partition key when it differs from the ordering key.
    pub partition_key: Option<String>,
    /// The body, published byte for byte.
    pub payload: Vec<u8>,
    /// User headers, published as broker headers.
    pub headers: BTreeMap<String, String>,
    /// The event's type (`OrderPlaced`), published as a header or native field.
    pub event_type: Option<String>,
    /// When the message was written.
    pub created_at: DateTime<Utc>,
    /// Failed delivery attempts so far.
    pub attempts: u32,
}

impl Message {
    /// Starts a message to `destination` for the entity `ordering_key`.
    pub fn builder(
        destination: impl Into<String>,
        ordering_key: impl Into<String>,
    ) -> MessageBuilder {
        MessageBuilder {
            message: Message {
                id: Uuid::now_v7(),
                ordering_key: ordering_key.into(),
                destination: destination.into(),
                partition_key: None,
                payload: Vec::new(),
                headers: BTreeMap::new(),
                event_type: None,
                created_at: Utc::now(),
                attempts: 0,
            },
        }
    }

    /// Builds a message from a typed event in one call: the payload is the
    /// event as JSON, the ordering key its aggregate id, and the event type and
    /// version travel as headers.
    pub fn from_event<E: Event>(destination: impl Into<String>, event: &E) -> Result<Self, Error> {
        Self::event_builder(destination, event)?.build()
    }

    /// [`from_event`](Self::from_event) as a builder, to add metadata
    /// (`correlation_id`, `caused_by`, `tenant`, ...) before `build`.
    pub fn event_builder<E: Event>(
        destination: impl Into<String>,
        event: &E,
    ) -> Result<MessageBuilder, Error> {
        let payload = serde_json::to_vec(event).map_err(|err| {
            Error::permanent(format!(
                "event `{}` does not serialize to JSON",
                event.event_type()
            ))
            .with_source(err)
        })?;
        Ok(Message::builder(destination, event.aggregate_id())
            .event_type(event.event_type())
            .event_version(event.version())
            .header("content-type", "application/json")
            .payload(payload))
    }

    /// Checks what every source and destination relies on.
    pub fn validate(&self) -> Result<(), Error> {
        if self.destination.trim().is_empty() {
            return Err(Error::permanent(format!(
                "message {}: destination is empty",
                self.id
            )));
        }
        if self.ordering_key.is_empty() {
            return Err(Error::permanent(format!(
                "message {}: ordering key is empty",
                self.id
            )));
        }
        if let Some(name) = self.headers.keys().find(|name| name.is_empty()) {
            return Err(Error::permanent(format!(
                "message {}: header name {name:?} is empty",
                self.id
            )));
        }
        Ok(())
    }
}

impl Item for Message {
    fn id(&self) -> Uuid {
        self.id
    }

    fn ordering_key(&self) -> &str {
        &self.ordering_key
    }

    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn created_at(&self) -> Option<SystemTime> {
        Some(self.created_at.into())
    }

    fn destination_name(&self) -> Option<&str> {
        Some(&self.destination)
    }

    fn traceparent(&self) -> Option<&str> {
        self.headers
            .get(crate::HEADER_TRACEPARENT)
            .map(String::as_str)
    }
}

/// Builds a [`Message`]; see [`Message::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MessageBuilder {
    message: Message,
}

impl MessageBuilder {
    /// Sets the body.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.message.payload = payload.into();
        self
    }

    /// Sets the body to `value` as JSON.
    pub fn json<T: Serialize>(self, value: &T) -> Result<Self, Error> {
        let payload = serde_json::to_vec(value).map_err(|err| {
            Error::permanent("payload does not serialize to JSON").with_source(err)
        })?;
        Ok(self.payload(payload))
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.message.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the event type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.message.event_type = Some(event_type.into());
        self
    }

    /// Sets a broker partition key other than the ordering key.
    pub fn partition_key(mut self, key: impl Into<String>) -> Self {
        self.message.partition_key = Some(key.into());
        self
    }

    /// Overrides the generated id (for instance to reuse an id of the caller's).
    pub fn id(mut self, id: Uuid) -> Self {
        self.message.id = id;
        self
    }

    /// Checks the message and returns it. With the feature
    /// `opentelemetry`, a message built inside a traced span also gets the
    /// span's `traceparent` and `tracestate` headers, unless the caller set
    /// a `traceparent` of its own.
    pub fn build(self) -> Result<Message, Error> {
        let message = self.message;
        #[cfg(feature = "opentelemetry")]
        let message = crate::trace_context::with_current(message);
        message.validate()?;
        Ok(message)
    }
}

/// A typed domain event that becomes a [`Message`] with [`Message::from_event`].
pub trait Event: Serialize {
    /// The event's type, such as `OrderPlaced`.
    fn event_type(&self) -> &str;
    /// The aggregate (entity) the event belongs to; its ordering key.
    fn aggregate_id(&self) -> String;
    /// Schema version of the payload.
    fn version(&self) -> u32 {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct OrderPlaced {
        order_id: u64,
        total_cents: u64,
    }

    impl Event for OrderPlaced {
        fn event_type(&self) -> &str {
            "OrderPlaced"
        }
        fn aggregate_id(&self) -> String {
            format!("order-{}", self.order_id)
        }
        fn version(&self) -> u32 {
            2
        }
    }

    #[test]
    fn event_becomes_message() {
        let event = OrderPlaced {
            order_id: 7,
            total_cents: 1250,
        };
        let message = Message::from_event("orders", &event).unwrap();
        assert_eq!(message.ordering_key, "order-7");
        assert_eq!(message.event_type.as_deref(), Some("OrderPlaced"));
        assert_eq!(message.headers[HEADER_EVENT_VERSION], "2");
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["total_cents"], 1250);
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = Message::builder("t", "k").build().unwrap();
        let b = Message::builder("t", "k").build().unwrap();
        assert!(a.id < b.id);
    }

    #[test]
    fn empty_destination_is_refused() {
        let err = Message::builder(" ", "k").build().unwrap_err();
        assert!(err.to_string().contains("destination is empty"), "{err}");
        assert!(!err.is_temporary());
    }
}
