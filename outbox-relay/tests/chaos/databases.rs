//! The outbox databases of the chaos runs: PostgreSQL (the shared server,
//! or a cluster of the harness's own that it restarts), MariaDB, and a
//! SQLite file the relay processes share.

use outbox_core::Message;
use outbox_mysql::{MysqlConfig, MysqlInbox, MysqlOutbox};
use outbox_postgres::{PostgresConfig, PostgresInbox, PostgresOutbox};
use outbox_sqlite::{SqliteConfig, SqliteInbox, SqliteOutbox};
use uuid::Uuid;

use crate::support::servers::{OwnMariadb, OwnPostgres};
use crate::support::{commit, postgres_url, table};

/// PostgreSQL relays connect under this application name and their
/// table's, so their connections can be told apart from the test's and
/// from other tests' relays.
pub const APPLICATION: &str = "outbox-relay-chaos";
/// The MariaDB user the relays connect as, for the same reason.
const MYSQL_USER: &str = "outbox_chaos";
/// The verifying consumer's name in the inbox.
const CONSUMER: &str = "chaos-verifier";

/// The outbox database under test, as the harness needs it.
pub trait Database {
    /// The `[source]` table body for the relays' settings file.
    fn source_settings(&self) -> String;
    /// Commits `messages` in one transaction.
    async fn commit(&self, messages: &[Message]);
    /// Messages waiting and dead letters.
    async fn backlog(&self) -> outbox_core::Backlog;
    /// Ends every connection the relays hold; returns how many.
    async fn end_relay_connections(&self) -> usize;
    /// Restarts the database server; only one of the harness's own.
    async fn restart(&self);
    /// Creates the consumer's inbox and business table, empty.
    async fn prepare_consumer(&self);
    /// The consumer: in one transaction, records `id` in the inbox and, if
    /// it is new, adds a row of `amount` to the business table (which has
    /// no unique key, so an effect applied twice shows). Whether it was new,
    /// or the error that ended the transaction (the caller retries, as a
    /// consumer would: the database may be restarting).
    async fn apply(&self, id: Uuid, amount: i64) -> Result<bool, String>;
    /// Rows of the business table, and the sum of their amounts.
    async fn effects(&self) -> (i64, i64);
    /// Frees what the run leaves on the server beyond tables (a WAL
    /// outbox's slot, which would pin the log).
    async fn clean_up(&self) {}
}

pub struct Postgres {
    outbox: PostgresOutbox,
    pool: sqlx::PgPool,
    url: String,
    own: Option<OwnPostgres>,
    /// The relays' `lanes` setting (1: none).
    lanes: u16,
}

impl Postgres {
    /// A fresh table `outbox_relay_test.<name>` on the shared server.
    pub async fn shared(name: &str) -> Self {
        let (outbox, pool) = table(name).await;
        Postgres {
            outbox,
            pool,
            url: postgres_url(),
            own: None,
            lanes: 1,
        }
    }

    /// The same, its relays claiming by `lanes` lanes of keys, which they
    /// migrate the table for when they start.
    pub async fn shared_lanes(name: &str, lanes: u16) -> Self {
        Postgres {
            lanes,
            ..Self::shared(name).await
        }
    }

    /// A cluster of the harness's own, with the outbox in `public`.
    pub async fn own(name: &str) -> Self {
        let own = OwnPostgres::start().await;
        let url = own.url();
        let pool = sqlx::PgPool::connect(&url).await.expect("own PostgreSQL");
        let outbox = PostgresOutbox::new(
            PostgresConfig {
                table: name.into(),
                ..PostgresConfig::default()
            },
            pool.clone(),
        )
        .unwrap();
        outbox.migrate().await.unwrap();
        Postgres {
            outbox,
            pool,
            url,
            own: Some(own),
            lanes: 1,
        }
    }
}

impl Database for Postgres {
    fn source_settings(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let lanes = match self.lanes {
            1 => String::new(),
            lanes => format!("\nlanes = {lanes}\nmigrate = true"),
        };
        format!(
            "kind = \"postgres\"\nurl = \"{}{separator}application_name={APPLICATION}-{table}\"\n\
             schema = \"{}\"\ntable = \"{table}\"{lanes}",
            self.url,
            self.outbox.config().schema,
            table = self.outbox.config().table
        )
    }

    async fn commit(&self, messages: &[Message]) {
        commit(&self.outbox, &self.pool, messages).await;
    }

    async fn backlog(&self) -> outbox_core::Backlog {
        self.outbox.backlog().await.unwrap()
    }

    async fn end_relay_connections(&self) -> usize {
        end_connections(&self.pool, &self.outbox.config().table).await
    }

    async fn restart(&self) {
        restart(self.own.as_ref()).await;
    }

    async fn prepare_consumer(&self) {
        self.consumer().prepare().await;
    }

    async fn apply(&self, id: Uuid, amount: i64) -> Result<bool, String> {
        self.consumer().apply(id, amount).await
    }

    async fn effects(&self) -> (i64, i64) {
        self.consumer().effects().await
    }
}

impl Postgres {
    fn consumer(&self) -> PgConsumer<'_> {
        let config = self.outbox.config();
        PgConsumer {
            pool: &self.pool,
            schema: &config.schema,
            name: &config.table,
        }
    }
}

/// Ends every connection of the relays of the outbox `name` (they connect
/// under `APPLICATION-name`); returns how many.
pub async fn end_connections(pool: &sqlx::PgPool, name: &str) -> usize {
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(format!("{APPLICATION}-{name}"))
    .fetch_all(pool)
    .await
    .unwrap();
    ended.len()
}

/// Restarts a cluster of the harness's own.
pub async fn restart(own: Option<&OwnPostgres>) {
    own.expect("only a cluster of the harness's own restarts")
        .restart()
        .await;
}

/// The verifying consumer's inbox and business table on a PostgreSQL
/// database, named after the outbox.
pub struct PgConsumer<'a> {
    pub pool: &'a sqlx::PgPool,
    pub schema: &'a str,
    pub name: &'a str,
}

impl PgConsumer<'_> {
    pub async fn prepare(&self) {
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS \"{}\".\"{}_inbox\"",
            self.schema, self.name
        ))
        .execute(self.pool)
        .await
        .unwrap();
        self.inbox().migrate().await.unwrap();
        sqlx::raw_sql(&format!(
            "DROP TABLE IF EXISTS {effects}; CREATE TABLE {effects} (id uuid NOT NULL, amount bigint NOT NULL)",
            effects = self.effects_table()
        ))
        .execute(self.pool)
        .await
        .unwrap();
    }

    pub async fn apply(&self, id: Uuid, amount: i64) -> Result<bool, String> {
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        let new = self
            .inbox()
            .apply(&mut tx, CONSUMER, id)
            .await
            .map_err(|e| e.to_string())?
            .is_new();
        if new {
            sqlx::query(&format!(
                "INSERT INTO {} VALUES ($1, $2)",
                self.effects_table()
            ))
            .bind(id)
            .bind(amount)
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(new)
    }

    pub async fn effects(&self) -> (i64, i64) {
        sqlx::query_as(&format!(
            "SELECT count(*), coalesce(sum(amount), 0)::bigint FROM {}",
            self.effects_table()
        ))
        .fetch_one(self.pool)
        .await
        .unwrap()
    }

    fn inbox(&self) -> PostgresInbox {
        PostgresInbox::named(
            self.schema,
            &format!("{}_inbox", self.name),
            self.pool.clone(),
        )
        .unwrap()
    }

    fn effects_table(&self) -> String {
        format!("\"{}\".\"{}_effects\"", self.schema, self.name)
    }
}

pub struct Mysql {
    outbox: MysqlOutbox,
    pool: sqlx::MySqlPool,
    /// The relays' URL.
    url: String,
    own: Option<tokio::sync::Mutex<OwnMariadb>>,
}

fn mysql_url() -> String {
    std::env::var("OUTBOX_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

impl Mysql {
    /// A fresh table `<name>` on the shared server, and the relays' user.
    pub async fn shared(name: &str) -> Self {
        let pool = sqlx::MySqlPool::connect(&mysql_url())
            .await
            .expect("MariaDB reachable");
        sqlx::raw_sql(&format!(
            "DROP TABLE IF EXISTS {name}, {name}_keys, {name}_claim; \
             CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'%' IDENTIFIED BY ''; \
             CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'localhost' IDENTIFIED BY ''; \
             GRANT ALL ON *.* TO '{MYSQL_USER}'@'%'; GRANT ALL ON *.* TO '{MYSQL_USER}'@'localhost'"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let outbox = MysqlOutbox::new(
            MysqlConfig {
                table: name.into(),
                ..MysqlConfig::default()
            },
            pool.clone(),
        )
        .unwrap();
        outbox.migrate().await.unwrap();
        let url = mysql_url().replacen("://root@", &format!("://{MYSQL_USER}@"), 1);
        Self {
            outbox,
            pool,
            url,
            own: None,
        }
    }

    /// A server of the harness's own, which it restarts.
    pub async fn own(name: &str) -> Self {
        let own = OwnMariadb::start().await;
        let url = own.url().await;
        let pool = sqlx::MySqlPool::connect(&url).await.expect("own MariaDB");
        let outbox = MysqlOutbox::new(
            MysqlConfig {
                table: name.into(),
                ..MysqlConfig::default()
            },
            pool.clone(),
        )
        .unwrap();
        outbox.migrate().await.unwrap();
        Self {
            outbox,
            pool,
            url,
            own: Some(tokio::sync::Mutex::new(own)),
        }
    }
}

impl Database for Mysql {
    fn source_settings(&self) -> String {
        format!(
            "kind = \"mysql\"\nurl = \"{}\"\ntable = \"{}\"",
            self.url,
            self.outbox.config().table
        )
    }

    async fn commit(&self, messages: &[Message]) {
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox.enqueue_many(&mut tx, messages).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn backlog(&self) -> outbox_core::Backlog {
        self.outbox.backlog().await.unwrap()
    }

    async fn end_relay_connections(&self) -> usize {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?")
                .bind(MYSQL_USER)
                .fetch_all(&self.pool)
                .await
                .unwrap();
        for id in &ids {
            // A connection may have ended on its own meanwhile.
            let _ = sqlx::query(&format!("KILL {id}")).execute(&self.pool).await;
        }
        ids.len()
    }

    async fn restart(&self) {
        let own = self
            .own
            .as_ref()
            .expect("only a server of the harness's own restarts");
        own.lock().await.restart().await;
    }

    async fn prepare_consumer(&self) {
        let table = &self.outbox.config().table;
        sqlx::raw_sql(&format!(
            "DROP TABLE IF EXISTS {table}_inbox, {table}_effects; \
             CREATE TABLE {table}_effects (id BINARY(16) NOT NULL, amount BIGINT NOT NULL) ENGINE = InnoDB"
        ))
        .execute(&self.pool)
        .await
        .unwrap();
        self.inbox().migrate().await.unwrap();
    }

    async fn apply(&self, id: Uuid, amount: i64) -> Result<bool, String> {
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        let new = self
            .inbox()
            .apply(&mut tx, CONSUMER, id)
            .await
            .map_err(|e| e.to_string())?
            .is_new();
        if new {
            let table = &self.outbox.config().table;
            sqlx::query(&format!("INSERT INTO {table}_effects VALUES (?, ?)"))
                .bind(id)
                .bind(amount)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(new)
    }

    async fn effects(&self) -> (i64, i64) {
        let table = &self.outbox.config().table;
        sqlx::query_as(&format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM(amount), 0) AS SIGNED) FROM {table}_effects"
        ))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

impl Mysql {
    fn inbox(&self) -> MysqlInbox {
        let table = format!("{}_inbox", self.outbox.config().table);
        MysqlInbox::named(&table, self.pool.clone()).unwrap()
    }
}

/// A SQLite file of the run's own, which the relay processes open
/// together. SQLite has no server: nothing to restart, and no connection
/// to end but by ending its process.
pub struct Sqlite {
    outbox: SqliteOutbox,
    pool: sqlx::SqlitePool,
    path: String,
}

impl Sqlite {
    /// A fresh file under the system temp directory.
    pub async fn file(name: &str) -> Self {
        let path = std::env::temp_dir()
            .join(format!("outbox-chaos-{name}-{}.db", uuid::Uuid::now_v7()))
            .to_string_lossy()
            .into_owned();
        let pool = outbox_sqlite::connect(&path).await.expect("SQLite file");
        let outbox = SqliteOutbox::new(
            SqliteConfig {
                table: name.into(),
                ..SqliteConfig::default()
            },
            pool.clone(),
        )
        .unwrap();
        outbox.migrate().await.unwrap();
        Self { outbox, pool, path }
    }
}

impl Database for Sqlite {
    fn source_settings(&self) -> String {
        format!(
            "kind = \"sqlite\"\nurl = \"{}\"\ntable = \"{}\"",
            self.path,
            self.outbox.config().table
        )
    }

    async fn commit(&self, messages: &[Message]) {
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox.enqueue_many(&mut tx, messages).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn backlog(&self) -> outbox_core::Backlog {
        self.outbox.backlog().await.unwrap()
    }

    async fn end_relay_connections(&self) -> usize {
        unreachable!("a SQLite file has no connections to end from outside")
    }

    async fn restart(&self) {
        unreachable!("a SQLite file has no server to restart")
    }

    async fn prepare_consumer(&self) {
        let table = &self.outbox.config().table;
        sqlx::raw_sql(&format!(
            "DROP TABLE IF EXISTS {table}_inbox; DROP TABLE IF EXISTS {table}_effects; \
             CREATE TABLE {table}_effects (id BLOB NOT NULL, amount INTEGER NOT NULL)"
        ))
        .execute(&self.pool)
        .await
        .unwrap();
        self.inbox().migrate().await.unwrap();
    }

    async fn apply(&self, id: Uuid, amount: i64) -> Result<bool, String> {
        let mut tx = self.pool.begin().await.map_err(|e| e.to_string())?;
        let new = self
            .inbox()
            .apply(&mut tx, CONSUMER, id)
            .await
            .map_err(|e| e.to_string())?
            .is_new();
        if new {
            let table = &self.outbox.config().table;
            sqlx::query(&format!("INSERT INTO {table}_effects VALUES (?1, ?2)"))
                .bind(id)
                .bind(amount)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(new)
    }

    async fn effects(&self) -> (i64, i64) {
        let table = &self.outbox.config().table;
        sqlx::query_as(&format!(
            "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM {table}_effects"
        ))
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

impl Sqlite {
    fn inbox(&self) -> SqliteInbox {
        let table = format!("{}_inbox", self.outbox.config().table);
        SqliteInbox::named(&table, self.pool.clone()).unwrap()
    }
}
