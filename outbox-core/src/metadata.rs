//! The metadata teams ask of a message beyond its payload: correlation and
//! causation ids, tenant, user and event version, written as headers of
//! fixed names by the builder and read back by a consumer's [`Incoming`].

use crate::{Incoming, MessageBuilder, HEADER_EVENT_VERSION};

/// Header of the id shared by every message of one business flow.
pub const HEADER_CORRELATION_ID: &str = "outbox-correlation-id";
/// Header of the id of the message (or request) that caused this one.
pub const HEADER_CAUSATION_ID: &str = "outbox-causation-id";
/// Header of the tenant the message belongs to.
pub const HEADER_TENANT: &str = "outbox-tenant";
/// Header of the user on whose behalf the message was written.
pub const HEADER_USER: &str = "outbox-user";

/// The metadata of a message, as one value: what a request handler or a
/// consumer carries along and hands to every message it writes
/// ([`MessageBuilder::metadata`], and the writers' `enqueue_event_with`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The id shared by every message of one business flow.
    pub correlation_id: Option<String>,
    /// The id of the message or request that caused this one.
    pub causation_id: Option<String>,
    /// The tenant.
    pub tenant: Option<String>,
    /// The user on whose behalf the message is written.
    pub user: Option<String>,
    /// The broker partition key, when it differs from the ordering key.
    pub partition_key: Option<String>,
}

impl Metadata {
    /// The metadata of a message caused by `incoming`, a message the
    /// consumer is handling: causation id its id, correlation id its
    /// correlation id (or its id, when it had none, so it starts the flow),
    /// and its tenant and user.
    pub fn caused_by(incoming: &Incoming) -> Self {
        let correlation = incoming
            .correlation_id()
            .map_or_else(|| incoming.id.to_string(), str::to_string);
        Self {
            correlation_id: Some(correlation),
            causation_id: Some(incoming.id.to_string()),
            tenant: incoming.tenant().map(str::to_string),
            user: incoming.user().map(str::to_string),
            partition_key: None,
        }
    }
}

impl MessageBuilder {
    /// Sets every field of `metadata` that is set.
    pub fn metadata(self, metadata: &Metadata) -> Self {
        let mut builder = self;
        let headers = [
            (HEADER_CORRELATION_ID, &metadata.correlation_id),
            (HEADER_CAUSATION_ID, &metadata.causation_id),
            (HEADER_TENANT, &metadata.tenant),
            (HEADER_USER, &metadata.user),
        ];
        for (name, value) in headers {
            if let Some(value) = value {
                builder = builder.header(name, value.clone());
            }
        }
        if let Some(key) = &metadata.partition_key {
            builder = builder.partition_key(key.clone());
        }
        builder
    }

    /// Sets the correlation id: the same on every message of one business
    /// flow (a request id, an order's saga id).
    pub fn correlation_id(self, id: impl Into<String>) -> Self {
        self.header(HEADER_CORRELATION_ID, id)
    }

    /// Sets the causation id: the id of the message or request that caused
    /// this one.
    pub fn causation_id(self, id: impl Into<String>) -> Self {
        self.header(HEADER_CAUSATION_ID, id)
    }

    /// Marks this message as caused by `incoming`, a message the consumer
    /// is handling: causation id its id, correlation id its correlation id
    /// (or its id, when it had none, so it starts the flow), and its tenant
    /// and user when it had them.
    pub fn caused_by(self, incoming: &Incoming) -> Self {
        self.metadata(&Metadata::caused_by(incoming))
    }

    /// Sets the tenant.
    pub fn tenant(self, tenant: impl Into<String>) -> Self {
        self.header(HEADER_TENANT, tenant)
    }

    /// Sets the user on whose behalf the message is written.
    pub fn user(self, user: impl Into<String>) -> Self {
        self.header(HEADER_USER, user)
    }

    /// Sets the payload's schema version ([`HEADER_EVENT_VERSION`]).
    pub fn event_version(self, version: u32) -> Self {
        self.header(HEADER_EVENT_VERSION, version.to_string())
    }
}

impl Incoming {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The correlation id, if the writer set one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.header(HEADER_CORRELATION_ID)
    }

    /// The causation id, if the writer set one.
    pub fn causation_id(&self) -> Option<&str> {
        self.header(HEADER_CAUSATION_ID)
    }

    /// The tenant, if the writer set one.
    pub fn tenant(&self) -> Option<&str> {
        self.header(HEADER_TENANT)
    }

    /// The user, if the writer set one.
    pub fn user(&self) -> Option<&str> {
        self.header(HEADER_USER)
    }

    /// The payload's schema version, if the writer set one (typed events
    /// always do); `None` also when it is not a whole number.
    pub fn event_version(&self) -> Option<u32> {
        self.header(HEADER_EVENT_VERSION)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use uuid::Uuid;

    use crate::{Message, HEADER_MESSAGE_ID};

    use super::*;

    /// What a consumer would read of `message` once published.
    fn consumed(message: &Message) -> Incoming {
        let mut headers: BTreeMap<String, String> = message.headers.clone();
        headers.insert(HEADER_MESSAGE_ID.into(), message.id.to_string());
        Incoming::from_headers(headers).unwrap()
    }

    #[test]
    fn metadata_set_by_the_writer_is_read_by_the_consumer() {
        let message = Message::builder("orders", "order-1")
            .correlation_id("checkout-17")
            .causation_id("request-3")
            .tenant("acme")
            .user("u-42")
            .event_version(3)
            .build()
            .unwrap();
        let incoming = consumed(&message);
        assert_eq!(incoming.correlation_id(), Some("checkout-17"));
        assert_eq!(incoming.causation_id(), Some("request-3"));
        assert_eq!(incoming.tenant(), Some("acme"));
        assert_eq!(incoming.user(), Some("u-42"));
        assert_eq!(incoming.event_version(), Some(3));
    }

    #[test]
    fn metadata_as_one_value_sets_what_it_has() {
        let metadata = Metadata {
            correlation_id: Some("checkout-17".into()),
            tenant: Some("acme".into()),
            partition_key: Some("region-eu".into()),
            ..Metadata::default()
        };
        let message = Message::builder("orders", "order-1")
            .metadata(&metadata)
            .build()
            .unwrap();
        assert_eq!(message.partition_key.as_deref(), Some("region-eu"));
        let incoming = consumed(&message);
        assert_eq!(incoming.correlation_id(), Some("checkout-17"));
        assert_eq!(incoming.tenant(), Some("acme"));
        assert_eq!((incoming.causation_id(), incoming.user()), (None, None));
    }

    #[test]
    fn a_message_caused_by_another_carries_its_flow_on() {
        let first = Message::builder("orders", "order-1")
            .tenant("acme")
            .build()
            .unwrap();
        let first = consumed(&first);
        let second = Message::builder("billing", "order-1")
            .caused_by(&first)
            .build()
            .unwrap();
        let second = consumed(&second);
        assert_eq!(second.causation_id(), Some(first.id.to_string().as_str()));
        assert_eq!(
            second.correlation_id(),
            Some(first.id.to_string().as_str()),
            "the first message started the flow"
        );
        assert_eq!(second.tenant(), Some("acme"));
        assert_eq!(second.user(), None);
        let third = Message::builder("shipping", "order-1")
            .caused_by(&second)
            .build()
            .unwrap();
        let third = consumed(&third);
        assert_eq!(third.correlation_id(), second.correlation_id());
        assert_eq!(third.causation_id(), Some(second.id.to_string().as_str()));
        assert_ne!(Uuid::nil(), third.id);
    }
}
