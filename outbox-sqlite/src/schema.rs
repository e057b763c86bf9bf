//! The schema, shipped as plain SQL and rendered for the configured name.

use crate::SqliteConfig;

/// The migrations, in order: `(name, SQL)`, written for the default table
/// name `outbox_messages`.
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_outbox.sql",
    include_str!("../migrations/0001_outbox.sql"),
)];

/// Every migration rendered for `config`'s (validated) table name.
pub(crate) fn script(config: &SqliteConfig) -> String {
    MIGRATIONS
        .iter()
        .map(|(_, sql)| sql.replace("outbox_messages", &config.table))
        .collect::<Vec<_>>()
        .join("\n")
}
