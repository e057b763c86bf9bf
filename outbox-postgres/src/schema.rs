//! The schema, shipped as plain SQL and rendered for the configured names.

use crate::PostgresConfig;

/// The migrations, in order: `(name, SQL)`. Written for the default names
/// (`public.outbox_messages`); teams running their own migration tool can
/// take them as they are, or render them for their names with
/// [`PostgresOutbox::schema_sql`](crate::PostgresOutbox::schema_sql).
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_outbox.sql",
        include_str!("../migrations/0001_outbox.sql"),
    ),
    (
        "0002_failing.sql",
        include_str!("../migrations/0002_failing.sql"),
    ),
];

const DEFAULT_TABLE: &str = "public.outbox_messages";
const DEFAULT_INDEX_PREFIX: &str = "outbox_messages_";

/// `"schema"."table"`, from validated names.
pub(crate) fn qualified(config: &PostgresConfig) -> String {
    format!("\"{}\".\"{}\"", config.schema, config.table)
}

/// The migrations rendered for `config`'s (validated) names.
pub(crate) fn render(config: &PostgresConfig) -> String {
    let table = qualified(config);
    let prefix = format!("{}_", config.table);
    MIGRATIONS
        .iter()
        .map(|(_, sql)| {
            sql.replace(DEFAULT_TABLE, &table)
                .replace(DEFAULT_INDEX_PREFIX, &prefix)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_configured_names() {
        let config = PostgresConfig {
            schema: "billing".into(),
            table: "events".into(),
            ..PostgresConfig::default()
        };
        let sql = render(&config);
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"billing\".\"events\""));
        assert!(sql.contains("events_waiting"));
        assert!(!sql.contains("outbox_messages"), "{sql}");
    }
}
