//! Headers as the SQL sources store them.

use std::collections::BTreeMap;

/// Reads headers stored as a JSON object of strings (as the database
/// sources store them). The error says what is wrong, for the dead letter a
/// malformed row becomes.
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
