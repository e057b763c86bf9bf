//! Checks of the settings every SQL source takes.

use std::time::Duration;

use outbox_core::ConfigError;

/// Accepts a plain lowercase SQL identifier of 1 to `max` bytes only, so
/// a table or schema name is safe to splice into SQL: anything that
/// tries injection is refused, naming `setting`.
pub fn check_identifier(setting: &str, value: &str, max: usize) -> Result<(), ConfigError> {
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || value.len() > max {
        return Err(ConfigError::new(
            setting,
            format!(
                "{value:?} is not a plain identifier: use 1 to {max} lowercase letters, \
                 digits and underscores, not starting with a digit"
            ),
        ));
    }
    Ok(())
}

/// Accepts a database source's lease of at least 100 ms.
pub fn check_lease(lease: Duration) -> Result<(), ConfigError> {
    if lease < Duration::from_millis(100) {
        return Err(ConfigError::new(
            "lease",
            format!("must be at least 100 ms, got {lease:?}"),
        ));
    }
    Ok(())
}

/// Accepts a database source's byte budget per claim of at least 1 KiB
/// (see [`DEFAULT_BATCH_BYTES`](outbox_core::DEFAULT_BATCH_BYTES)).
pub fn check_batch_bytes(batch_bytes: usize) -> Result<(), ConfigError> {
    if batch_bytes < 1024 {
        return Err(ConfigError::new(
            "batch_bytes",
            format!("must be at least 1024 bytes, got {batch_bytes}"),
        ));
    }
    Ok(())
}
