//! rdkafka errors classified by whether retrying can help.

use outbox_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Turns an rdkafka error into an outbox error.
///
/// Permanent: message too large, unknown or invalid topic, topic not
/// authorized, a record the broker calls invalid. Everything else (timeouts,
/// transport errors, leader changes, a full local queue) is temporary.
pub fn classify(err: KafkaError) -> Error {
    let permanent = matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
        )
    );
    let kind = if permanent {
        ErrorKind::Permanent
    } else {
        ErrorKind::Temporary
    };
    Error::new(kind, format!("kafka: {err}"))
}
