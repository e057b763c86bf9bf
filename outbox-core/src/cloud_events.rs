//! CloudEvents 1.0 envelopes: a destination configured with
//! [`CloudEvents`] publishes each message as a CloudEvent under its
//! protocol's binding, in binary mode (the attributes as broker headers,
//! the payload untouched) or structured mode (the whole event as JSON).
//!
//! The attributes: `specversion` 1.0, `id` the message id, `source` the
//! configured one, `type` the event type (the destination's name when the
//! message has none), `time` its commit time, `subject` its ordering key,
//! `partitionkey` (the partitioning extension) its partition key, and
//! `datacontenttype` its `content-type` header. The outbox's own headers
//! (message id, ordering key, metadata, trace context) are published as
//! well, so an [`Incoming`](crate::Incoming) reads a CloudEvent like any
//! other message.

use std::borrow::Cow;

use base64::Engine;
use chrono::SecondsFormat;
use serde_json::{Map, Value};

use crate::{ConfigError, Message};

/// The `content-type` of a structured CloudEvent in JSON.
pub const CLOUD_EVENTS_JSON: &str = "application/cloudevents+json; charset=UTF-8";

/// Publishes messages as CloudEvents 1.0 (set on a destination's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvents {
    /// Binary or structured content mode.
    pub mode: CloudEventsMode,
    /// The `source` attribute: a URI-reference naming the producer, such
    /// as `/shop/orders` or `urn:acme:shop`.
    pub source: String,
}

/// How a CloudEvent is laid on a broker message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudEventsMode {
    /// The attributes as headers, the payload as it is: consumers that
    /// know nothing of CloudEvents read the same body as before.
    Binary,
    /// The event as one JSON document in the payload (`data` when the
    /// payload is JSON, `data_base64` otherwise), with the `content-type`
    /// [`CLOUD_EVENTS_JSON`].
    Structured,
}

/// A broker protocol's CloudEvents binding: how attribute headers are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudEventsBinding {
    /// Kafka: `ce_` headers.
    Kafka,
    /// AMQP: `cloudEvents:` application properties (AMQP headers here).
    Amqp,
    /// NATS: `ce-` headers, values percent-encoded as in HTTP.
    Nats,
}

impl CloudEventsBinding {
    /// The prefix of attribute headers in binary mode.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Kafka => "ce_",
            Self::Amqp => "cloudEvents:",
            Self::Nats => "ce-",
        }
    }
}

impl CloudEvents {
    /// Binary mode with `source`.
    pub fn binary(source: impl Into<String>) -> Self {
        Self {
            mode: CloudEventsMode::Binary,
            source: source.into(),
        }
    }

    /// Structured mode with `source`.
    pub fn structured(source: impl Into<String>) -> Self {
        Self {
            mode: CloudEventsMode::Structured,
            source: source.into(),
        }
    }

    /// Checks the settings, naming the one at fault
    /// (`cloud_events.source`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.source.trim().is_empty() {
            return Err(ConfigError::new(
                "cloud_events.source",
                "must name the producer (a URI-reference such as /shop/orders)",
            ));
        }
        Ok(())
    }

    /// `message` as published under `binding`.
    pub fn wrap(&self, message: &Message, binding: CloudEventsBinding) -> Message {
        let mut wrapped = message.clone();
        let attributes = self.attributes(message);
        match self.mode {
            CloudEventsMode::Binary => {
                for (name, value) in attributes {
                    let value = match binding {
                        CloudEventsBinding::Nats => percent_encoded(&value),
                        _ => value,
                    };
                    wrapped
                        .headers
                        .insert(format!("{}{name}", binding.prefix()), value);
                }
            }
            CloudEventsMode::Structured => {
                let content_type = wrapped.headers.remove("content-type");
                wrapped.payload = structured(attributes, content_type, &message.payload);
                wrapped
                    .headers
                    .insert("content-type".into(), CLOUD_EVENTS_JSON.into());
            }
        }
        wrapped
    }

    fn attributes(&self, message: &Message) -> Vec<(&'static str, String)> {
        let event_type = message.event_type.as_ref().unwrap_or(&message.destination);
        let partition_key = message
            .partition_key
            .as_ref()
            .unwrap_or(&message.ordering_key);
        vec![
            ("specversion", "1.0".to_string()),
            ("id", message.id.to_string()),
            ("source", self.source.clone()),
            ("type", event_type.clone()),
            (
                "time",
                message
                    .created_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            ("subject", message.ordering_key.clone()),
            ("partitionkey", partition_key.clone()),
        ]
    }
}

/// `message`, wrapped when `cloud_events` is set.
pub fn wrap_as_cloud_event<'a>(
    cloud_events: Option<&CloudEvents>,
    message: &'a Message,
    binding: CloudEventsBinding,
) -> Cow<'a, Message> {
    match cloud_events {
        Some(cloud_events) => Cow::Owned(cloud_events.wrap(message, binding)),
        None => Cow::Borrowed(message),
    }
}

/// The JSON event format: the attributes, `datacontenttype`, and the
/// payload as `data` when it is JSON, as `data_base64` otherwise.
fn structured(
    attributes: Vec<(&'static str, String)>,
    content_type: Option<String>,
    payload: &[u8],
) -> Vec<u8> {
    let mut event: Map<String, Value> = attributes
        .into_iter()
        .map(|(name, value)| (name.to_string(), Value::String(value)))
        .collect();
    let json_declared = content_type
        .as_deref()
        .is_none_or(|kind| kind.starts_with("application/json") || kind.contains("+json"));
    if let Some(content_type) = content_type {
        event.insert("datacontenttype".into(), Value::String(content_type));
    }
    let json = json_declared
        .then(|| serde_json::from_slice::<Value>(payload).ok())
        .flatten();
    match json {
        Some(data) => {
            event.insert("data".into(), data);
        }
        None if payload.is_empty() => {}
        None => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
            event.insert("data_base64".into(), Value::String(encoded));
        }
    }
    serde_json::to_vec(&Value::Object(event)).expect("a JSON object serializes")
}

/// The HTTP binding's rule, which NATS follows: space, `"`, `%` and every
/// character outside printable ASCII as `%XX` of its UTF-8 bytes.
fn percent_encoded(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Message {
        Message::builder("shop.orders", "order 7é")
            .event_type("OrderPlaced")
            .header("content-type", "application/json")
            .payload(br#"{"total":12}"#.to_vec())
            .build()
            .unwrap()
    }

    #[test]
    fn binary_mode_adds_prefixed_attributes_and_keeps_the_payload() {
        let message = order();
        let wrapped = CloudEvents::binary("/shop").wrap(&message, CloudEventsBinding::Kafka);
        assert_eq!(wrapped.payload, message.payload);
        assert_eq!(wrapped.headers["ce_specversion"], "1.0");
        assert_eq!(wrapped.headers["ce_id"], message.id.to_string());
        assert_eq!(wrapped.headers["ce_source"], "/shop");
        assert_eq!(wrapped.headers["ce_type"], "OrderPlaced");
        assert_eq!(wrapped.headers["ce_subject"], "order 7é");
        assert!(wrapped.headers["ce_time"].ends_with('Z'));
        assert_eq!(wrapped.headers["content-type"], "application/json");
        let nats = CloudEvents::binary("/shop").wrap(&message, CloudEventsBinding::Nats);
        assert_eq!(nats.headers["ce-subject"], "order%207%C3%A9");
        let amqp = CloudEvents::binary("/shop").wrap(&message, CloudEventsBinding::Amqp);
        assert_eq!(amqp.headers["cloudEvents:type"], "OrderPlaced");
    }

    #[test]
    fn structured_mode_carries_json_as_data_and_the_rest_as_base64() {
        let message = order();
        let wrapped = CloudEvents::structured("/shop").wrap(&message, CloudEventsBinding::Nats);
        assert_eq!(wrapped.headers["content-type"], CLOUD_EVENTS_JSON);
        let event: Value = serde_json::from_slice(&wrapped.payload).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], message.id.to_string());
        assert_eq!(event["type"], "OrderPlaced");
        assert_eq!(event["datacontenttype"], "application/json");
        assert_eq!(event["data"]["total"], 12);

        let bytes = Message::builder("shop.blobs", "b-1")
            .header("content-type", "application/octet-stream")
            .payload(vec![0, 159, 146, 150])
            .build()
            .unwrap();
        let wrapped = CloudEvents::structured("/shop").wrap(&bytes, CloudEventsBinding::Kafka);
        let event: Value = serde_json::from_slice(&wrapped.payload).unwrap();
        assert_eq!(
            event["type"], "shop.blobs",
            "no event type: the destination"
        );
        assert_eq!(event["data_base64"], "AJ+Slg==");
        assert!(event.get("data").is_none());
    }

    #[test]
    fn a_source_is_required() {
        assert!(CloudEvents::binary(" ").validate().is_err());
        assert!(CloudEvents::binary("/shop").validate().is_ok());
    }
}
