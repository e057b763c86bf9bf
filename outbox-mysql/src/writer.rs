//! The outbox handle: schema, writing inside the caller's transaction, and
//! making relays.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{ConfigError, Error, Event, Message, Metadata};
use sqlx::{Connection, Executor, MySqlConnection, MySqlPool};
use tokio::sync::Notify;

use crate::error::{classify, error_number};
use crate::key_lock::{trigger_name, KeyLockTrigger};
use crate::schema::statements;
use crate::sql::{table_lock, Statements};
use crate::{MysqlConfig, MysqlSource};

/// Most rows (or keys) one statement writes: eight placeholders a row stay
/// under MySQL's 65,535 a statement.
pub(crate) const MAX_ROWS: usize = 8_000;

/// One outbox table on one pool: writes messages in your transactions, runs
/// migrations, makes relay sources and answers operators. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MysqlOutbox {
    pub(crate) config: Arc<MysqlConfig>,
    pub(crate) pool: MySqlPool,
    pub(crate) sql: Arc<Statements>,
    pub(crate) committed: Arc<Notify>,
    /// Whether inserts lock their key by the schema's trigger.
    key_lock: Arc<KeyLockTrigger>,
    trigger: Arc<str>,
}

impl MysqlOutbox {
    /// Checks `config` (naming a bad setting) and prepares the statements;
    /// operator calls, migrations and relay sources use `pool`.
    pub fn new(config: MysqlConfig, pool: MySqlPool) -> Result<Self, ConfigError> {
        config.validate()?;
        let sql = Statements::new(&config);
        let trigger = trigger_name(&config.table).into();
        Ok(Self {
            config: Arc::new(config),
            pool,
            sql: Arc::new(sql),
            committed: Arc::default(),
            key_lock: Arc::default(),
            trigger,
        })
    }

    /// The settings.
    pub fn config(&self) -> &MysqlConfig {
        &self.config
    }

    /// The pool operator calls and relay sources use.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The schema as plain SQL statements for the configured name.
    pub fn schema_sql(&self) -> String {
        statements(&self.config).join(";\n\n") + ";\n"
    }

    /// Creates the tables, or brings their indexes up to date, if needed
    /// (idempotent; see [`MIGRATIONS`](crate::MIGRATIONS)). Concurrent
    /// callers on one table wait for each other, up to
    /// [`MIGRATE_WAIT`]: relays starting together rebuild an index once.
    pub async fn migrate(&self) -> Result<(), Error> {
        // A connection taken out of the pool: the lock belongs to its
        // session and goes with it when it closes, here or, should this
        // future be dropped half-way, when the connection is dropped.
        let mut conn = self.pool.acquire().await.map_err(classify)?.detach();
        let taken: Option<i64> =
            sqlx::query_scalar(&format!("SELECT GET_LOCK({}, ?)", table_lock("migrate")))
                .bind(&self.config.table)
                .bind(MIGRATE_WAIT.as_secs())
                .fetch_one(&mut conn)
                .await
                .map_err(classify)?;
        if taken != Some(1) {
            return Err(Error::temporary(format!(
                "migrate: another migration of table {} held its lock for {} s",
                self.config.table,
                MIGRATE_WAIT.as_secs()
            )));
        }
        for statement in statements(&self.config) {
            // `Executor::execute`, not `RawSql::execute`: with the latter
            // this future is not `Send`, and `migrate` could not be spawned.
            let done = conn.execute(sqlx::raw_sql(&statement)).await;
            match done {
                Err(err) if is_trigger(&statement) && trigger_refused(&err) => {
                    // Writers then lock their keys themselves (see
                    // `key_lock`): one statement more per call, same order.
                    tracing::warn!(
                        error = %err,
                        "migrate: the server refused the outbox's key-lock trigger \
                         (0005_key_lock_trigger.sql); writers will lock keys themselves"
                    );
                }
                done => {
                    done.map_err(classify)?;
                }
            }
        }
        conn.close().await.map_err(classify)
    }

    /// Writes one message on `conn`, which should be your open transaction
    /// (`&mut *tx`): it commits or rolls back with your business rows.
    pub async fn enqueue(
        &self,
        conn: &mut MySqlConnection,
        message: &Message,
    ) -> Result<(), Error> {
        self.enqueue_many(conn, std::slice::from_ref(message)).await
    }

    /// Writes many messages, in this order: first locks their keys (so two
    /// transactions writing one key commit in enqueue order), then inserts
    /// them in one statement.
    pub async fn enqueue_many(
        &self,
        conn: &mut MySqlConnection,
        messages: &[Message],
    ) -> Result<(), Error> {
        if messages.is_empty() {
            return Ok(());
        }
        for message in messages {
            message.validate()?;
            fits_columns(message)?;
        }
        let mut keys: Vec<&str> = messages.iter().map(|m| m.ordering_key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        // One key: the insert's trigger locks it (when the schema has it).
        // Several: locked here first, in byte order, so that two writers
        // never take two keys in opposite orders; the trigger then finds
        // each already held.
        let locked_by_insert = keys.len() == 1 && self.key_lock.present(conn, &self.trigger).await;
        if locked_by_insert {
            keys.clear();
        }
        // In statements of at most MAX_ROWS rows: MySQL takes 65,535
        // placeholders a statement. Keys are locked in byte order, chunk
        // after chunk, and rows inserted in order, so `seq` keeps it.
        for keys in keys.chunks(MAX_ROWS) {
            let rows = vec!["(?)"; keys.len()].join(", ");
            let lock_sql = format!(
                "{}{rows} ON DUPLICATE KEY UPDATE ordering_key = ordering_key",
                self.sql.lock_keys_prefix
            );
            let mut query = sqlx::query(&lock_sql);
            for key in keys {
                query = query.bind(*key);
            }
            query.execute(&mut *conn).await.map_err(classify)?;
        }
        for messages in messages.chunks(MAX_ROWS) {
            // `next_attempt_at` by the database's clock, as the claim
            // compares it: an application host ahead of the database would
            // otherwise hide its new messages for the difference.
            let values =
                vec!["(?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))"; messages.len()].join(", ");
            let insert_sql = format!("{}{values}", self.sql.enqueue_prefix);
            let mut insert = sqlx::query(&insert_sql);
            for message in messages {
                let headers = outbox_sql::headers_json(message);
                insert = insert
                    .bind(message.id)
                    .bind(&message.ordering_key)
                    .bind(&message.destination)
                    .bind(&message.partition_key)
                    .bind(&message.payload)
                    .bind(headers)
                    .bind(&message.event_type)
                    .bind(message.created_at);
            }
            insert.execute(&mut *conn).await.map_err(classify)?;
        }
        Ok(())
    }

    /// Writes a typed event to `destination` (see [`Message::from_event`]).
    pub async fn enqueue_event<E: Event>(
        &self,
        conn: &mut MySqlConnection,
        destination: &str,
        event: &E,
    ) -> Result<Message, Error> {
        self.enqueue_event_with(conn, destination, event, &Metadata::default())
            .await
    }

    /// Writes a typed event to `destination` with `metadata`
    /// (correlation and causation ids, tenant, user, partition key).
    pub async fn enqueue_event_with<E: Event>(
        &self,
        conn: &mut MySqlConnection,
        destination: &str,
        event: &E,
        metadata: &Metadata,
    ) -> Result<Message, Error> {
        let message = Message::event_builder(destination, event)?
            .metadata(metadata)
            .build()?;
        self.enqueue(conn, &message).await?;
        Ok(message)
    }

    /// Wakes this process's idle relays at once. Call it after committing a
    /// transaction that enqueued; relays in other processes find the
    /// messages at their next poll.
    pub fn notify_committed(&self) {
        self.committed.notify_waiters();
    }

    /// A relay's source on this table, with its own identity and leases.
    /// Async and fallible like every database's, though making one here
    /// neither waits nor fails.
    pub async fn source(&self) -> Result<MysqlSource, Error> {
        Ok(MysqlSource::new(self.clone()))
    }
}

/// How long `migrate` waits for another migration of the same table.
pub const MIGRATE_WAIT: Duration = Duration::from_secs(600);

/// The longest ordering key, destination, partition key or event type the
/// table holds: its `VARCHAR(255)` columns count characters.
const TEXT_COLUMN_CHARS: usize = 255;

/// Checks the text fields fit their columns, before anything is written:
/// under a `sql_mode` without `STRICT_TRANS_TABLES` MySQL would cut a longer
/// value short without a word, publishing to a truncated destination.
fn fits_columns(message: &Message) -> Result<(), Error> {
    let fields = [
        ("ordering key", Some(message.ordering_key.as_str())),
        ("destination", Some(message.destination.as_str())),
        ("partition key", message.partition_key.as_deref()),
        ("event type", message.event_type.as_deref()),
    ];
    for (what, text) in fields {
        let Some(text) = text else { continue };
        let chars = text.chars().count();
        if chars > TEXT_COLUMN_CHARS {
            return Err(Error::permanent(format!(
                "message {}: the {what} is {chars} characters long; the MySQL outbox table \
                 holds at most {TEXT_COLUMN_CHARS}",
                message.id
            )));
        }
    }
    Ok(())
}

/// Whether `statement` is the migration that creates the key-lock trigger.
fn is_trigger(statement: &str) -> bool {
    statement.trim_start().starts_with("CREATE TRIGGER")
}

/// The errors of a server that will not create the trigger, which the
/// outbox works without: binary logging on without SUPER (1419), no
/// TRIGGER privilege (1142), or MySQL before 8.0.29, which does not know
/// `CREATE TRIGGER IF NOT EXISTS` (1064).
fn trigger_refused(err: &sqlx::Error) -> bool {
    matches!(error_number(err), Some(1419 | 1142 | 1064))
}
