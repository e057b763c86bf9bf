//! The schema, shipped as plain SQL and rendered for the configured name.

use crate::MysqlConfig;

/// The migrations, in order: `(name, SQL)`, written for the default table
/// name `outbox_messages`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_outbox.sql",
        include_str!("../migrations/0001_outbox.sql"),
    ),
    (
        "0002_claim_indexes.sql",
        include_str!("../migrations/0002_claim_indexes.sql"),
    ),
    (
        "0003_binary_keys.sql",
        include_str!("../migrations/0003_binary_keys.sql"),
    ),
    (
        "0004_utf8mb4.sql",
        include_str!("../migrations/0004_utf8mb4.sql"),
    ),
    (
        "0005_key_lock_trigger.sql",
        include_str!("../migrations/0005_key_lock_trigger.sql"),
    ),
];

/// The statements of every migration rendered for `config`'s (validated)
/// table name, one statement per item (MySQL runs one at a time), to run
/// in order on one connection (they share session variables).
pub(crate) fn statements(config: &MysqlConfig) -> Vec<String> {
    MIGRATIONS
        .iter()
        .flat_map(|(_, sql)| {
            // Comments first: they may hold a `;`.
            let code: Vec<&str> = sql
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect();
            code.join("\n")
                .split(';')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|statement| !statement.trim().is_empty())
        .map(|statement| statement.replace("outbox_messages", &config.table))
        .collect()
}
