//! The one error type of the core, and configuration errors.

use std::fmt;

/// The most bytes of an error's text a source stores as a message's last
/// error. A broker can answer with an error of any length; a longer text is
/// cut at a character boundary, so recording it never fails the report.
pub const MAX_ERROR_BYTES: usize = 4096;

/// `text` cut to at most [`MAX_ERROR_BYTES`], at a character boundary,
/// saying how much was cut.
pub(crate) fn bounded(mut text: String) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text;
    }
    let total = text.len();
    let note = format!(" … ({total} bytes, cut)");
    let mut end = MAX_ERROR_BYTES - note.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&note);
    text
}

/// Boxed error kept as the cause of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The same operation may succeed later: timeouts, lost connections,
    /// broker leader changes, deadlocks, a full destination.
    Temporary,
    /// Retrying cannot help: message too large, unknown topic, malformed row,
    /// access refused. A message failing this way is dead-lettered at once.
    Permanent,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Temporary => "temporary",
            ErrorKind::Permanent => "permanent",
        })
    }
}

/// An error of a source, a destination or the relay, classified by whether
/// retrying can help. Adapters build it from their driver's errors.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// A failure worth retrying.
    pub fn temporary(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Temporary, message)
    }

    /// A failure retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Whether retrying can help.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when retrying can help.
    pub fn is_temporary(&self) -> bool {
        self.kind == ErrorKind::Temporary
    }

    /// The message alone, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by each cause, as stored in a row's last error.
    /// A cause that only repeats the one before it (sqlx's database errors
    /// name their cause in their own text) is left out.
    pub fn report(&self) -> String {
        let mut out = self.message.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            let text = err.to_string();
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = err.source();
        }
        out
    }
}

/// Invalid configuration, found at start-up. Names the setting at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{setting}`: {reason}")]
pub struct ConfigError {
    /// The setting, as the user spells it (`max_attempts`, `table`, ...).
    pub setting: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    /// A complaint about `setting`.
    pub fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    /// Accepts two settings that go together (a client certificate and its
    /// key) when both or neither are set; the error names the missing one.
    pub fn check_pair(first: (&str, bool), second: (&str, bool)) -> Result<(), ConfigError> {
        match (first, second) {
            ((name, true), (missing, false)) | ((missing, false), (name, true)) => Err(
                ConfigError::new(missing, format!("is required with {name}")),
            ),
            _ => Ok(()),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Error::permanent(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        let short = "broker said no".to_string();
        assert_eq!(bounded(short.clone()), short);
        let long = "é".repeat(10_000);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_ERROR_BYTES, "{}", cut.len());
        assert!(cut.starts_with("éé"));
        assert!(cut.ends_with("(20000 bytes, cut)"), "{cut:.40}");
    }

    /// An error that names its cause in its own text, as sqlx's do.
    #[derive(Debug, thiserror::Error)]
    #[error("error returned from database: {0}")]
    struct Wrapped(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("1213 (40001): Deadlock found")]
    struct Inner;

    #[test]
    fn a_report_names_each_cause_once() {
        let err = Error::temporary("mysql").with_source(Wrapped(Inner));
        assert_eq!(
            err.report(),
            "mysql: error returned from database: 1213 (40001): Deadlock found"
        );
        let chained = Error::permanent("lost a batch").with_source(err);
        assert_eq!(
            chained.report(),
            "lost a batch: mysql: error returned from database: 1213 (40001): Deadlock found"
        );
    }
}
