//! The schema, shipped as plain SQL and rendered for the configured names.

use outbox_core::Error;
use sqlx::PgPool;

use crate::{classify, PostgresConfig};

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
    (
        "0003_idle_relays.sql",
        include_str!("../migrations/0003_idle_relays.sql"),
    ),
];

/// Advisory lock class of the inbox's migrations (the bytes of "oinb"):
/// they take `(INBOX_LOCK_CLASS, hashtext(table))` for their transaction.
pub(crate) const INBOX_LOCK_CLASS: i32 = 0x6f69_6e62;

/// Creates `schema` (a validated name) if it does not exist, in a
/// transaction of its own. Two `CREATE SCHEMA IF NOT EXISTS` at once are
/// not safe in PostgreSQL: the loser waits for the winner and then fails
/// with a unique violation on `pg_namespace`. That failure means the schema
/// now exists, which the statement run again confirms. (Serializing the
/// creators with an advisory lock inside the migration's transaction is
/// not enough: the catalog cache of the waiting transaction may not see the
/// new schema, and it fails the same way.)
pub(crate) async fn create_schema(pool: &PgPool, schema: &str) -> Result<(), Error> {
    let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    match sqlx::query(&sql).execute(pool).await {
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("23505") => {
            sqlx::query(&sql).execute(pool).await.map_err(classify)?;
            Ok(())
        }
        done => done.map(drop).map_err(classify),
    }
}

const DEFAULT_TABLE: &str = "public.outbox_messages";
const DEFAULT_IDLE_TABLE: &str = "public.outbox_messages_idle";
const DEFAULT_INDEX_PREFIX: &str = "outbox_messages_";

/// `"schema"."table"`, from validated names.
pub(crate) fn qualified(config: &PostgresConfig) -> String {
    format!("\"{}\".\"{}\"", config.schema, config.table)
}

/// `"schema"."table_idle"`: the relays waiting for a NOTIFY.
pub(crate) fn qualified_idle(config: &PostgresConfig) -> String {
    format!("\"{}\".\"{}_idle\"", config.schema, config.table)
}

/// The migrations rendered for `config`'s (validated) names.
pub(crate) fn render(config: &PostgresConfig) -> String {
    let table = qualified(config);
    let idle = qualified_idle(config);
    let prefix = format!("{}_", config.table);
    // The idle table first: its default name starts with the table's.
    let names = [
        (DEFAULT_IDLE_TABLE, idle.as_str()),
        (DEFAULT_TABLE, table.as_str()),
        (DEFAULT_INDEX_PREFIX, &prefix),
    ];
    let mut sql = MIGRATIONS
        .iter()
        .map(|(_, sql)| replace_once(sql, &names))
        .collect::<Vec<_>>()
        .join("\n");
    if config.lanes > 1 {
        sql.push_str(&lane_index(config));
    }
    sql
}

/// The name of the lane index for `config`'s lane count (see
/// [`PostgresConfig::lanes`]).
pub(crate) fn lane_index_name(config: &PostgresConfig) -> String {
    format!("{}_l{}", config.table, config.lanes)
}

/// A key's lane, as every statement computes it: `hashtext` (immutable,
/// the hash the writers' key locks use) folded to a lane number.
pub(crate) fn lane_of_key(config: &PostgresConfig, key: &str) -> String {
    format!("((hashtext({key}) & 2147483647) % {})", config.lanes)
}

/// The index a claim of one lane scans: the waiting rows of each lane in
/// enqueue order. Named for the lane count, so relays configured with
/// another count find it missing instead of scanning a wrong one.
fn lane_index(config: &PostgresConfig) -> String {
    format!(
        "\n-- Lanes of keys (lanes = {lanes}): a claim scans one lane's waiting rows.\n\
         CREATE INDEX IF NOT EXISTS \"{name}\"\n    ON {table} ({lane}, seq)\n    \
         WHERE done_at IS NULL AND dead_at IS NULL;\n",
        lanes = config.lanes,
        name = lane_index_name(config),
        table = qualified(config),
        lane = lane_of_key(config, "ordering_key"),
    )
}

/// Replaces each default name in `sql` in one pass from left to right, so
/// a configured name that contains a default one (`outbox_messages_v2`) is
/// never rewritten again. Two `str::replace` passes made that table
/// `outbox_messages_v2_v2`.
fn replace_once(sql: &str, names: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while !rest.is_empty() {
        match names.iter().find(|(from, _)| rest.starts_with(from)) {
            Some((from, to)) => {
                out.push_str(to);
                rest = &rest[from.len()..];
            }
            None => {
                let next = rest.chars().next().expect("not empty");
                out.push(next);
                rest = &rest[next.len_utf8()..];
            }
        }
    }
    out
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

    #[test]
    fn lanes_add_their_index_and_one_lane_adds_none() {
        let config = PostgresConfig {
            lanes: 16,
            ..PostgresConfig::default()
        };
        let sql = render(&config);
        assert!(
            sql.contains("\"outbox_messages_l16\"\n    ON \"public\".\"outbox_messages\" (((hashtext(ordering_key) & 2147483647) % 16), seq)"),
            "{sql}"
        );
        assert!(!render(&PostgresConfig::default()).contains("hashtext"));
    }

    #[test]
    fn names_that_contain_the_default_name_are_rendered_once() {
        let config = PostgresConfig {
            table: "outbox_messages_v2".into(),
            ..PostgresConfig::default()
        };
        let sql = render(&config);
        assert!(
            sql.contains("CREATE TABLE IF NOT EXISTS \"public\".\"outbox_messages_v2\" ("),
            "{sql}"
        );
        assert!(sql.contains("outbox_messages_v2_waiting"), "{sql}");
        assert!(!sql.contains("_v2_v2"), "a name was rewritten twice: {sql}");
    }
}
