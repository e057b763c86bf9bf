//! What a NATS consumer reads of a message the relay published.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use outbox_core::{Error, Incoming};

/// The message id, ordering key, event type and headers (trace context
/// included) of a message the relay published, from a core NATS message
/// or a JetStream one (which dereferences to it). An error when it has no
/// outbox message id.
///
/// ```no_run
/// # fn consume(message: &async_nats::jetstream::Message) -> Result<(), outbox_core::Error> {
/// let incoming = outbox_nats::incoming(message)?;
/// // inbox.apply(&mut tx, "billing", incoming.id) ...
/// # Ok(()) }
/// ```
pub fn incoming(message: &async_nats::Message) -> Result<Incoming, Error> {
    incoming_from_headers(message.headers.as_ref().unwrap_or(&HeaderMap::new()))
}

/// The same as [`incoming`], from the headers alone (a message read from a
/// stream by sequence, say). A header given more than once is read by its
/// first value.
pub fn incoming_from_headers(headers: &HeaderMap) -> Result<Incoming, Error> {
    let mut text = BTreeMap::new();
    for (name, values) in headers.iter() {
        if let Some(value) = values.first() {
            text.insert(name.to_string(), value.to_string());
        }
    }
    Incoming::from_headers(text)
}
