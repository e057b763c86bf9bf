//! lapin errors classified by whether retrying can help.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::{ChannelState, ErrorKind as LapinKind};
use outbox_core::{Error, ErrorKind};

/// Turns a lapin error into an outbox error.
///
/// Permanent: the broker refused the message or its address (not found,
/// access refused, precondition failed, content too large, no route, frame
/// too large). Temporary: lost connections and channels, I/O errors, missed
/// heartbeats, a connection the broker closed on purpose.
pub fn classify(err: lapin::Error) -> Error {
    let kind = match err.kind() {
        LapinKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(
                AMQPSoftError::NOTFOUND
                | AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::PRECONDITIONFAILED
                | AMQPSoftError::CONTENTTOOLARGE
                | AMQPSoftError::NOROUTE,
            ) => ErrorKind::Permanent,
            AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR | AMQPHardError::NOTALLOWED) => {
                ErrorKind::Permanent
            }
            _ => ErrorKind::Temporary,
        },
        LapinKind::SerialisationError(_) => ErrorKind::Permanent,
        _ => ErrorKind::Temporary,
    };
    Error::new(kind, format!("amqp: {err}"))
}

/// Whether the channel or connection is gone after this error, so the next
/// send must open new ones.
pub(crate) fn breaks_link(err: &lapin::Error) -> bool {
    !matches!(err.kind(), LapinKind::SerialisationError(_))
}

/// Whether the broker closed the channel or the connection under this
/// publish, or the publish found it closing. RabbitMQ does so in answer to
/// one refused publish, and every other publish waiting on the channel gets
/// the same error, so the error is not necessarily this message's own.
pub(crate) fn closed_the_channel(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        LapinKind::ProtocolError(_)
            | LapinKind::InvalidChannelState(ChannelState::Closing | ChannelState::Closed, _)
    )
}
