//! What a RabbitMQ consumer reads of a message the relay published.

use std::collections::BTreeMap;

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use outbox_core::{Error, Incoming};

/// The message id, ordering key, event type and headers (trace context
/// included) of a delivery the relay published. Headers that are not text
/// are left out; long-string values that are not UTF-8 are read lossily.
/// An error when the delivery has no outbox message id.
///
/// ```no_run
/// # fn consume(delivery: &lapin::message::Delivery) -> Result<(), outbox_core::Error> {
/// let incoming = outbox_amqp::incoming(delivery)?;
/// // inbox.apply(&mut tx, "billing", incoming.id) ...
/// # Ok(()) }
/// ```
pub fn incoming(delivery: &Delivery) -> Result<Incoming, Error> {
    let mut headers = BTreeMap::new();
    if let Some(table) = delivery.properties.headers() {
        for (name, value) in table.inner() {
            let text = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_string(),
                _ => continue,
            };
            headers.insert(name.as_str().to_string(), text);
        }
    }
    Incoming::from_headers(headers)
}
