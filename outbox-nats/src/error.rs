//! async-nats errors classified by whether retrying can help.

use async_nats::client::PublishErrorKind as CoreKind;
use async_nats::jetstream::context::{PublishError, PublishErrorKind as StreamKind};
use outbox_core::{Error, ErrorKind};

/// Classifies a JetStream publish or acknowledgement error.
///
/// Permanent: no stream listens on the subject, the message is over the
/// server's `max_payload`, or the server refused it (permissions, a subject
/// it rejects). Temporary: timeouts, a broken connection, too many
/// acknowledgements pending.
pub fn classify_jetstream(err: PublishError) -> Error {
    let kind = match err.kind() {
        StreamKind::StreamNotFound | StreamKind::MaxPayloadExceeded => ErrorKind::Permanent,
        StreamKind::TimedOut | StreamKind::BrokenPipe | StreamKind::MaxAckPending => {
            ErrorKind::Temporary
        }
        StreamKind::WrongLastMessageId | StreamKind::WrongLastSequence => ErrorKind::Permanent,
        StreamKind::Other => other_kind(&err.to_string()),
    };
    Error::new(kind, format!("nats jetstream publish: {}", err.kind())).with_source(err)
}

/// Classifies a core NATS publish error.
pub fn classify_core(err: async_nats::client::PublishError) -> Error {
    let kind = match err.kind() {
        CoreKind::MaxPayloadExceeded | CoreKind::InvalidSubject => ErrorKind::Permanent,
        CoreKind::Send => ErrorKind::Temporary,
    };
    Error::new(kind, format!("nats publish: {}", err.kind())).with_source(err)
}

/// Errors the server sends back as text.
fn other_kind(text: &str) -> ErrorKind {
    let text = text.to_ascii_lowercase();
    let refused = [
        "permission",
        "authorization",
        "maximum payload",
        "invalid subject",
    ];
    if refused.iter().any(|word| text.contains(word)) {
        ErrorKind::Permanent
    } else {
        ErrorKind::Temporary
    }
}
