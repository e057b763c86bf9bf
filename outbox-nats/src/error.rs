//! async-nats errors classified by whether retrying can help.

use async_nats::client::PublishErrorKind as CoreKind;
use async_nats::jetstream::context::{
    GetStreamByNameError, GetStreamByNameErrorKind, PublishError, PublishErrorKind as StreamKind,
};
use outbox_core::{Error, ErrorKind};

/// Classifies a JetStream publish or acknowledgement error.
///
/// Permanent: the message is over the server's `max_payload`, or the server
/// refused it (permissions, a subject it rejects). Temporary: timeouts, a
/// broken connection, too many acknowledgements pending, and no answer at
/// all (async-nats's `StreamNotFound`, the server's "no responders"): that
/// is what a publish gets while JetStream restarts or a clustered stream
/// elects a leader, so on its own it is no proof that the stream is
/// missing. [`classify_no_responders`] tells the two apart.
pub fn classify_jetstream(err: PublishError) -> Error {
    let kind = match err.kind() {
        StreamKind::MaxPayloadExceeded => ErrorKind::Permanent,
        StreamKind::StreamNotFound
        | StreamKind::TimedOut
        | StreamKind::BrokenPipe
        | StreamKind::MaxAckPending => ErrorKind::Temporary,
        StreamKind::WrongLastMessageId | StreamKind::WrongLastSequence => ErrorKind::Permanent,
        StreamKind::Other => other_kind(&err.to_string()),
    };
    Error::new(kind, format!("nats jetstream publish: {}", err.kind())).with_source(err)
}

/// Classifies a publish to `subject` that got no answer, given what
/// JetStream's API said when asked which stream listens on `subject`
/// (`Context::stream_by_subject`).
///
/// Permanent only when the API answered that no stream does. A stream that
/// exists but did not answer, or an API that did not answer either, is
/// temporary: JetStream is restarting, electing a leader, or not enabled.
pub fn classify_no_responders(
    subject: &str,
    stream: Result<String, GetStreamByNameError>,
    err: PublishError,
) -> Error {
    match stream {
        Err(lookup) if lookup.kind() == GetStreamByNameErrorKind::NotFound => Error::permanent(
            format!("nats jetstream publish: no stream listens on subject {subject}"),
        )
        .with_source(err),
        Ok(stream) => Error::temporary(format!(
            "nats jetstream publish: stream {stream} listens on subject {subject} but did not \
             answer (restarting or without a leader)"
        ))
        .with_source(err),
        Err(lookup) => Error::temporary(format!(
            "nats jetstream publish: no answer on subject {subject}, and JetStream's API did not \
             answer either ({lookup}): is JetStream enabled and up?"
        ))
        .with_source(err),
    }
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
