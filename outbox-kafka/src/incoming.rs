//! What a Kafka consumer reads of a message the relay published.

use std::collections::BTreeMap;

use outbox_core::{Error, Incoming};
use rdkafka::message::Headers;

/// The message id, ordering key, event type and headers (trace context
/// included) of a record the relay published, from any rdkafka message
/// (`BorrowedMessage`, `OwnedMessage`). Header values that are not UTF-8
/// are read lossily. An error when the record has no outbox message id.
///
/// ```no_run
/// # fn consume(record: &rdkafka::message::BorrowedMessage<'_>) -> Result<(), outbox_core::Error> {
/// let incoming = outbox_kafka::incoming(record)?;
/// // inbox.apply(&mut tx, "billing", incoming.id) ...
/// # Ok(()) }
/// ```
pub fn incoming<M: rdkafka::Message>(record: &M) -> Result<Incoming, Error> {
    let mut headers = BTreeMap::new();
    if let Some(list) = record.headers() {
        for header in list.iter() {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
            headers.insert(header.key.to_string(), value);
        }
    }
    Incoming::from_headers(headers)
}
