//! The database side of a pair: the outbox table the benchmark fills, and
//! the raw claims of the two hand-written references.

use outbox_core::{CancellationToken, Message, Relay, RelayConfig};
use outbox_mysql::{MysqlConfig, MysqlOutbox};
use outbox_nats::NatsDestination;
use outbox_postgres::{PostgresConfig, PostgresOutbox, WalConfig, WalOutbox};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row as _;
use uuid::Uuid;

use crate::KEYS;

/// A claimed row, as the references publish it.
pub struct Row {
    pub seq: i64,
    pub id: Uuid,
    pub destination: String,
    pub payload: Vec<u8>,
}

/// Which database, with the outbox table of one pair.
#[derive(Clone)]
pub enum Backlog {
    Postgres {
        pool: PgPool,
        outbox: PostgresOutbox,
    },
    Mysql {
        pool: MySqlPool,
        outbox: MysqlOutbox,
    },
    /// PostgreSQL's WAL outbox: writers emit into the log, the relay reads
    /// a slot. No table to claim from: the references do not run on it.
    Wal { pool: PgPool, outbox: WalOutbox },
}

/// What a business transaction holds besides its order row.
#[derive(Clone, Copy)]
pub enum Added<'a> {
    Nothing,
    /// `SELECT 1`, the floor of any enqueue call.
    EmptyStatement,
    Message(&'a Message),
}

/// An open claim of the references: the transaction holds the rows.
pub enum Claim {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Mysql(sqlx::Transaction<'static, sqlx::MySql>),
}

impl Backlog {
    /// The PostgreSQL table `outbox_bench.<table>`, created if missing;
    /// writers NOTIFY the relay when `notify`.
    pub async fn postgres(url: &str, table: &str, notify: bool) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(80)
            .connect(url)
            .await
            .expect("PostgreSQL at OUTBOX_POSTGRES_URL");
        sqlx::query("CREATE SCHEMA IF NOT EXISTS outbox_bench")
            .execute(&pool)
            .await
            .ok();
        let outbox = PostgresOutbox::new(
            PostgresConfig {
                schema: "outbox_bench".into(),
                table: table.into(),
                notify,
                ..PostgresConfig::default()
            },
            pool.clone(),
        )
        .expect("config");
        outbox.migrate().await.expect("migrate");
        Backlog::Postgres { pool, outbox }
    }

    /// Leaves the PostgreSQL table with the lane index of `lanes` only
    /// (none for 1), so that the relays of one fleet pay for their own lanes
    /// and no other fleet's writes pay for them.
    pub async fn lane_index(&self, lanes: u16) {
        let Backlog::Postgres { pool, outbox } = self else {
            return;
        };
        let table = &outbox.config().table;
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'outbox_bench' \
             AND tablename = $1 AND indexname ~ ('^' || $1 || '_l[0-9]+$')",
        )
        .bind(table)
        .fetch_all(pool)
        .await
        .expect("lane indexes");
        for index in indexes {
            sqlx::query(&format!("DROP INDEX outbox_bench.\"{index}\""))
                .execute(pool)
                .await
                .expect("drop lane index");
        }
        if lanes > 1 {
            let config = PostgresConfig {
                lanes,
                ..outbox.config().clone()
            };
            let laned = PostgresOutbox::new(config, pool.clone()).expect("lanes");
            laned.migrate().await.expect("lane index");
        }
    }

    /// The WAL outbox `<name>` (its prefix, slot, publication and failures
    /// table `outbox_bench.<name>`) on the logical cluster at `url`,
    /// created if missing.
    pub async fn wal(url: &str, name: &str) -> Self {
        Self::wal_mode(url, name, false).await
    }

    /// The same in the table mode: writers insert rows into
    /// `outbox_bench.<name>_rows`, which the relay reads from the log.
    pub async fn wal_table(url: &str, name: &str) -> Self {
        Self::wal_mode(url, name, true).await
    }

    async fn wal_mode(url: &str, name: &str, table: bool) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(80)
            .connect(url)
            .await
            .expect("PostgreSQL with wal_level = logical at OUTBOX_POSTGRES_WAL_URL");
        sqlx::query("CREATE SCHEMA IF NOT EXISTS outbox_bench")
            .execute(&pool)
            .await
            .ok();
        let outbox = WalOutbox::new(
            WalConfig {
                url: url.into(),
                prefix: name.into(),
                slot: name.into(),
                publication: name.into(),
                schema: "outbox_bench".into(),
                table: table.then(|| format!("{name}_rows")),
                failures_table: name.into(),
                ..WalConfig::default()
            },
            pool.clone(),
        )
        .expect("config");
        // A fresh slot each run: one left by an earlier run has pinned the
        // log written since, or been invalidated past max_slot_wal_keep_size.
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
        )
        .bind(name)
        .execute(&pool)
        .await
        .expect("drop an earlier run's slot");
        outbox.migrate().await.expect("migrate");
        Backlog::Wal { pool, outbox }
    }

    /// The MySQL/MariaDB table `bench_<table>`, created if missing.
    pub async fn mysql(url: &str, table: &str) -> Self {
        let pool = MySqlPoolOptions::new()
            .max_connections(80)
            .connect(url)
            .await
            .expect("MySQL/MariaDB at OUTBOX_MYSQL_URL");
        let outbox = MysqlOutbox::new(
            MysqlConfig {
                table: format!("bench_{table}"),
                ..MysqlConfig::default()
            },
            pool.clone(),
        )
        .expect("config");
        outbox.migrate().await.expect("migrate");
        Backlog::Mysql { pool, outbox }
    }

    /// The log the WAL outbox's slot makes the server keep: from the slot's
    /// restart position to the log's end, in bytes.
    pub async fn retained_bytes(&self) -> i64 {
        let Backlog::Wal { pool, outbox } = self else {
            panic!("only the WAL outbox retains log")
        };
        sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&outbox.config().slot)
        .fetch_one(pool)
        .await
        .expect("the slot's restart position")
    }

    /// The `[source]` settings of an `outbox-relay` on this PostgreSQL
    /// outbox at `url`.
    pub fn relay_source_settings(&self, url: &str) -> String {
        match self {
            Backlog::Postgres { outbox, .. } => format!(
                "kind = \"postgres\"\nurl = \"{url}\"\nschema = \"outbox_bench\"\n\
                 table = \"{}\"\nnotify = {}\n",
                outbox.config().table,
                outbox.config().notify
            ),
            Backlog::Wal { outbox, .. } => {
                let config = outbox.config();
                format!(
                    "kind = \"postgres_wal\"\nurl = \"{url}\"\nprefix = \"{}\"\nslot = \"{}\"\n\
                     publication = \"{}\"\nschema = \"{}\"\nfailures_table = \"{}\"\n{}",
                    config.prefix,
                    config.slot,
                    config.publication,
                    config.schema,
                    config.failures_table,
                    match &config.table {
                        Some(table) => format!("read_table = true\ntable = \"{table}\"\n"),
                        None => String::new(),
                    }
                )
            }
            Backlog::Mysql { .. } => panic!("outbox-relay processes run on PostgreSQL here"),
        }
    }

    /// Empties the table (for the WAL outbox: its failures table, and its
    /// slot advanced to the end of the log, once no relay reads it).
    pub async fn truncate(&self) {
        let sql = format!("TRUNCATE {}", self.qualified());
        match self {
            Backlog::Postgres { pool, .. } => sqlx::query(&sql).execute(pool).await.map(drop),
            Backlog::Mysql { pool, .. } => sqlx::query(&sql).execute(pool).await.map(drop),
            Backlog::Wal { pool, outbox } => {
                advance_to_end(pool, &outbox.config().slot).await;
                let rows = match &outbox.config().table {
                    Some(table) => format!(", {}.{table}", outbox.config().schema),
                    None => String::new(),
                };
                sqlx::query(&format!("{sql}{rows}"))
                    .execute(pool)
                    .await
                    .map(drop)
            }
        }
        .expect("truncate");
    }

    /// For the WAL outbox: moves the slot's restart position to the log's
    /// end, as a relay that has been reading for 15 s finds it (PostgreSQL
    /// moves it on where it logged a snapshot of running transactions, which
    /// it does every 15 s while it writes, and at a checkpoint). Without it,
    /// a drain would first decode everything the other runs wrote since the
    /// last snapshot: a relay's start after downtime, not its rate.
    pub async fn restart_at_end(&self) {
        let Backlog::Wal { pool, outbox } = self else {
            return;
        };
        sqlx::query("CHECKPOINT")
            .execute(pool)
            .await
            .expect("checkpoint");
        advance_to_end(pool, &outbox.config().slot).await;
    }

    fn qualified(&self) -> String {
        match self {
            Backlog::Postgres { outbox, .. } => format!("outbox_bench.{}", outbox.config().table),
            Backlog::Mysql { outbox, .. } => outbox.config().table.clone(),
            Backlog::Wal { outbox, .. } => {
                let config = outbox.config();
                format!("{}.{}", config.schema, config.failures_table)
            }
        }
    }

    /// Empties the table, then writes `count` messages of 200 bytes to
    /// `destination`, interleaved over the keys, in transactions of 1,000
    /// through the outbox's own writer, and refreshes the statistics.
    pub async fn fill(&self, destination: &str, count: usize) {
        self.truncate().await;
        let payload = vec![b'x'; 200];
        let mut batch = Vec::with_capacity(1000);
        for i in 0..count {
            batch.push(
                Message::builder(destination, format!("key-{}", i % KEYS))
                    .payload(payload.clone())
                    .build()
                    .expect("message"),
            );
            if batch.len() == 1000 || i + 1 == count {
                self.enqueue(&batch).await;
                batch.clear();
            }
        }
        let analyze = match self {
            Backlog::Postgres { .. } | Backlog::Wal { .. } => {
                format!("VACUUM ANALYZE {}", self.qualified())
            }
            Backlog::Mysql { .. } => format!("ANALYZE TABLE {}", self.qualified()),
        };
        match self {
            Backlog::Postgres { pool, .. } | Backlog::Wal { pool, .. } => {
                sqlx::query(&analyze).execute(pool).await.map(drop)
            }
            Backlog::Mysql { pool, .. } => sqlx::query(&analyze).execute(pool).await.map(drop),
        }
        .expect("analyze");
    }

    /// Writes `messages` in one transaction.
    pub async fn enqueue(&self, messages: &[Message]) {
        match self {
            Backlog::Postgres { pool, outbox } => {
                let mut tx = pool.begin().await.expect("begin");
                outbox
                    .enqueue_many(&mut tx, messages)
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
            }
            Backlog::Mysql { pool, outbox } => {
                let mut tx = pool.begin().await.expect("begin");
                outbox
                    .enqueue_many(&mut tx, messages)
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
            }
            Backlog::Wal { pool, outbox } => {
                let mut tx = pool.begin().await.expect("begin");
                outbox
                    .enqueue_many(&mut tx, messages)
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
            }
        }
    }

    /// Rows still in the table (for the WAL outbox: messages after the
    /// slot's position, once no relay reads it, and in the failures table).
    pub async fn remaining(&self) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {}", self.qualified());
        if let Backlog::Wal { outbox, .. } = self {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let unread = loop {
                match outbox.unread().await {
                    Ok(unread) => break unread,
                    Err(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await
                    }
                    Err(err) => panic!("unread: {err}"),
                }
            };
            let rows: i64 = match &outbox.config().table {
                Some(table) => {
                    let Backlog::Wal { pool, .. } = self else {
                        unreachable!()
                    };
                    let sql = format!("SELECT COUNT(*) FROM {}.{table}", outbox.config().schema);
                    sqlx::query_scalar(&sql)
                        .fetch_one(pool)
                        .await
                        .expect("rows")
                }
                None => 0,
            };
            return (unread + outbox.backlog().await.expect("backlog").waiting) as i64 + rows;
        }
        match self {
            Backlog::Postgres { pool, .. } => sqlx::query_scalar(&sql).fetch_one(pool).await,
            Backlog::Mysql { pool, .. } => sqlx::query_scalar(&sql).fetch_one(pool).await,
            Backlog::Wal { .. } => unreachable!("counted above"),
        }
        .expect("count")
    }

    /// The references' claim: up to `limit` rows in enqueue order, locked
    /// (`FOR UPDATE SKIP LOCKED`) in a transaction that stays open. On
    /// PostgreSQL the rows are deleted by the same statement; MariaDB
    /// refuses a `DELETE` that selects from its own table, so there the
    /// rows are deleted by [`Backlog::finish`] before the commit.
    pub async fn claim(&self, limit: u32) -> (Claim, Vec<Row>) {
        let table = self.qualified();
        match self {
            Backlog::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.expect("begin");
                let sql = if limit == 1 {
                    format!(
                        "SELECT seq, id, destination, payload FROM {table} \
                         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
                    )
                } else {
                    format!(
                        "DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} \
                         ORDER BY seq LIMIT {limit} FOR UPDATE SKIP LOCKED) \
                         RETURNING seq, id, destination, payload"
                    )
                };
                let rows = sqlx::query(&sql)
                    .fetch_all(&mut *tx)
                    .await
                    .expect("claim")
                    .iter()
                    .map(|r| Row {
                        seq: r.get("seq"),
                        id: r.get("id"),
                        destination: r.get("destination"),
                        payload: r.get("payload"),
                    })
                    .collect();
                (Claim::Postgres(tx), rows)
            }
            Backlog::Mysql { pool, .. } => {
                let mut tx = pool.begin().await.expect("begin");
                // The index, forced as the source does: with a million
                // rows MariaDB would otherwise sort them all (and lock what
                // it read) for every claim.
                let sql = format!(
                    "SELECT seq, id, destination, payload FROM {table} FORCE INDEX ({table}_waiting) \
                     WHERE done_at IS NULL AND dead_at IS NULL \
                     ORDER BY seq LIMIT {limit} FOR UPDATE SKIP LOCKED"
                );
                let rows = sqlx::query(&sql)
                    .fetch_all(&mut *tx)
                    .await
                    .expect("claim")
                    .iter()
                    .map(|r| Row {
                        seq: r.get::<u64, _>("seq") as i64,
                        id: r.get("id"),
                        destination: r.get("destination"),
                        payload: r.get("payload"),
                    })
                    .collect();
                (Claim::Mysql(tx), rows)
            }
            Backlog::Wal { .. } => panic!("the WAL outbox has no table for the references"),
        }
    }

    /// Deletes what the claim has not deleted yet and commits.
    pub async fn finish(&self, claim: Claim, rows: &[Row]) {
        let table = self.qualified();
        let deleted_by_claim = rows.len() > 1;
        let list = rows
            .iter()
            .map(|r| r.seq.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let delete = format!("DELETE FROM {table} WHERE seq IN ({list})");
        match claim {
            Claim::Postgres(mut tx) => {
                if !deleted_by_claim {
                    sqlx::query(&delete)
                        .execute(&mut *tx)
                        .await
                        .expect("delete");
                }
                tx.commit().await.expect("commit");
            }
            Claim::Mysql(mut tx) => {
                sqlx::query(&delete)
                    .execute(&mut *tx)
                    .await
                    .expect("delete");
                tx.commit().await.expect("commit");
            }
        }
    }

    /// One order row and `added`, in one transaction.
    pub async fn business_transaction(&self, added: Added<'_>) {
        let order = Uuid::now_v7();
        match self {
            Backlog::Postgres { pool, .. } | Backlog::Wal { pool, .. } => {
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query(
                    "INSERT INTO outbox_bench.orders (id, customer, total) VALUES ($1, $2, $3)",
                )
                .bind(order)
                .bind("customer")
                .bind(4200_i64)
                .execute(&mut *tx)
                .await
                .expect("insert order");
                match (added, self) {
                    (Added::Nothing, _) => {}
                    (Added::EmptyStatement, _) => {
                        sqlx::query("SELECT 1")
                            .execute(&mut *tx)
                            .await
                            .expect("select");
                    }
                    (Added::Message(message), Backlog::Wal { outbox, .. }) => {
                        outbox.enqueue(&mut tx, message).await.expect("enqueue");
                    }
                    (Added::Message(message), Backlog::Postgres { outbox, .. }) => {
                        outbox.enqueue(&mut tx, message).await.expect("enqueue");
                    }
                    (Added::Message(_), Backlog::Mysql { .. }) => unreachable!("a PostgreSQL arm"),
                }
                tx.commit().await.expect("commit");
            }
            Backlog::Mysql { pool, outbox } => {
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("INSERT INTO bench_orders (id, customer, total) VALUES (?, ?, ?)")
                    .bind(order)
                    .bind("customer")
                    .bind(4200_i64)
                    .execute(&mut *tx)
                    .await
                    .expect("insert order");
                match added {
                    Added::Nothing => {}
                    Added::EmptyStatement => {
                        sqlx::query("SELECT 1")
                            .execute(&mut *tx)
                            .await
                            .expect("select");
                    }
                    Added::Message(message) => {
                        outbox.enqueue(&mut tx, message).await.expect("enqueue");
                    }
                }
                tx.commit().await.expect("commit");
            }
        }
    }

    /// Runs a relay with default settings on this outbox, publishing to
    /// `destination`, until `shutdown`.
    pub async fn relay(&self, destination: NatsDestination, shutdown: CancellationToken) {
        let config = RelayConfig::default();
        let ran = match self {
            Backlog::Postgres { outbox, .. } => {
                let source = outbox.source().await.expect("source");
                let relay = Relay::new(source, destination, config).expect("relay");
                relay.run(shutdown).await
            }
            Backlog::Mysql { outbox, .. } => {
                let source = outbox.source().await.expect("source");
                let relay = Relay::new(source, destination, config).expect("relay");
                relay.run(shutdown).await
            }
            Backlog::Wal { outbox, .. } => {
                let source = outbox.source().await.expect("source");
                let relay = Relay::new(source, destination, config).expect("relay");
                relay.run(shutdown).await
            }
        };
        ran.expect("relay");
    }

    /// Creates (and empties) the business table of the enqueue-cost runs.
    pub async fn orders_table(&self) {
        match self {
            Backlog::Postgres { pool, .. } | Backlog::Wal { pool, .. } => {
                sqlx::query("CREATE TABLE IF NOT EXISTS outbox_bench.orders (id UUID PRIMARY KEY, customer TEXT NOT NULL, total BIGINT NOT NULL)")
                    .execute(pool)
                    .await
                    .expect("orders table");
                sqlx::query("TRUNCATE outbox_bench.orders")
                    .execute(pool)
                    .await
                    .expect("truncate orders");
            }
            Backlog::Mysql { pool, .. } => {
                sqlx::query("CREATE TABLE IF NOT EXISTS bench_orders (id BINARY(16) PRIMARY KEY, customer VARCHAR(64) NOT NULL, total BIGINT NOT NULL) ENGINE = InnoDB")
                    .execute(pool)
                    .await
                    .expect("orders table");
                sqlx::query("TRUNCATE bench_orders")
                    .execute(pool)
                    .await
                    .expect("truncate orders");
            }
        }
    }
}

/// Advances `slot` to the log's end, once no relay reads it.
async fn advance_to_end(pool: &PgPool, slot: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match sqlx::query("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())")
            .bind(slot)
            .execute(pool)
            .await
        {
            Ok(_) => return,
            // A stopping relay may still hold the slot a moment.
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(err) => panic!("advance the slot: {err}"),
        }
    }
}
