//! A claimed row turned into a [`Message`], or the reason it cannot be:
//! what every SQL source does with a row once its columns are read.

use std::collections::BTreeMap;

use outbox_core::{Message, HEADER_SEQUENCE};

/// A row read back: the message, or why it is malformed (a row written by
/// hand, say). A malformed row is dead-lettered with the reason, never
/// dropped and never allowed to stop the relay. `K` names the row in the
/// statements that dead-letter it (its id, or SQLite's `seq`), `A` is the
/// attempts column as the database stores it.
pub enum Decoded<K, A> {
    /// A message the relay can deliver.
    Message(Message),
    /// A row that cannot be one, and why.
    Malformed {
        /// The row's name in the dead-lettering statements.
        key: K,
        /// Attempts recorded so far.
        attempts: A,
        /// Why it cannot be delivered, for the dead letter.
        reason: String,
    },
}

impl<K, A> Decoded<K, A> {
    /// What `read` made of the row named `key`: the message once it passes
    /// [`Message::validate`], or the row as malformed with the reason.
    pub fn new(key: K, attempts: A, read: Result<Message, String>) -> Self {
        let checked = read.and_then(|message| match message.validate() {
            Ok(()) => Ok(message),
            Err(err) => Err(format!("malformed row: {}", err.report())),
        });
        match checked {
            Ok(message) => Decoded::Message(message),
            Err(reason) => Decoded::Malformed {
                key,
                attempts,
                reason,
            },
        }
    }
}

impl<K, A> Decoded<K, A> {
    /// Stamps a message with its row's `seq` ([`HEADER_SEQUENCE`]), which a
    /// consumer's inbox compares within an ordering key.
    pub fn sequenced(mut self, seq: i64) -> Self {
        if let Decoded::Message(message) = &mut self {
            message
                .headers
                .insert(HEADER_SEQUENCE.to_string(), seq.to_string());
        }
        self
    }
}

/// Headers as the SQL sources store them: a JSON object of strings.
pub fn headers_json(message: &Message) -> String {
    serde_json::to_string(&message.headers).expect("a map of strings serializes")
}

/// Reads headers stored as JSON text. The error says what is wrong, for the
/// dead letter a malformed row becomes.
pub fn headers_from_text(text: &str) -> Result<BTreeMap<String, String>, String> {
    let value = serde_json::from_str(text)
        .map_err(|err| format!("malformed row: headers are not JSON: {err}"))?;
    headers_from_json(value)
}

/// Reads headers stored as a JSON object of strings. The error says what
/// is wrong, for the dead letter a malformed row becomes.
pub fn headers_from_json(value: serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let serde_json::Value::Object(map) = value else {
        return Err(format!(
            "malformed row: headers must be a JSON object of strings, got {value}"
        ));
    };
    map.into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(text) => Ok((name, text)),
            other => Err(format!(
                "malformed row: header {name:?} must be a string, got {other}"
            )),
        })
        .collect()
}
