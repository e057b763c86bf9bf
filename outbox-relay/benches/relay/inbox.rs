//! What the inbox adds to a consumer's transaction: 8 consumers commit
//! one-row transactions (a message's effect) for a while, with and without
//! recording the message's id in the inbox first, on PostgreSQL and MariaDB
//! (the backlogs' servers) and on a SQLite file of the run's own.

use outbox_core::Incoming;
use outbox_mysql::MysqlInbox;
use outbox_postgres::PostgresInbox;
use outbox_sqlite::SqliteInbox;
use uuid::Uuid;

use crate::backlog::Backlog;
use crate::enqueue::{timed, Cost};

/// The consumer name the benchmark applies under.
const CONSUMER: &str = "bench";

/// Ordering keys of the messages applied in order.
const KEYS: usize = 1000;

/// What a consumer transaction does besides its effect.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Nothing: the effect alone.
    Without,
    /// `apply` of the message id.
    Apply,
    /// `apply_in_order`: the id and the key's last sequence.
    InOrder,
}

/// A consumer on the backlog's database: its inbox and the orders table.
#[derive(Clone)]
pub enum Consumer {
    Postgres(sqlx::PgPool, PostgresInbox),
    Mysql(sqlx::MySqlPool, MysqlInbox),
    Sqlite(sqlx::SqlitePool, SqliteInbox),
}

impl Consumer {
    /// The inbox `bench_inbox` beside the backlog's table, and its orders
    /// table.
    pub async fn on(backlog: &Backlog) -> Consumer {
        backlog.orders_table().await;
        let consumer = match backlog {
            Backlog::Postgres { pool, .. } | Backlog::Wal { pool, .. } => Consumer::Postgres(
                pool.clone(),
                PostgresInbox::named("outbox_bench", "bench_inbox", pool.clone())
                    .expect("inbox name"),
            ),
            Backlog::Mysql { pool, .. } => Consumer::Mysql(
                pool.clone(),
                MysqlInbox::named("bench_inbox", pool.clone()).expect("inbox name"),
            ),
        };
        consumer.migrate().await;
        consumer
    }

    /// The inbox and an orders table in a new SQLite file (WAL, synchronous
    /// FULL: `outbox_sqlite::connect`'s settings).
    pub async fn sqlite() -> Consumer {
        let path = std::env::temp_dir()
            .join(format!("outbox-bench-inbox-{}.db", Uuid::now_v7()))
            .to_string_lossy()
            .into_owned();
        let pool = outbox_sqlite::connect(&path).await.expect("SQLite file");
        sqlx::query(
            "CREATE TABLE orders (id BLOB PRIMARY KEY, customer TEXT NOT NULL, total INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("orders table");
        let consumer = Consumer::Sqlite(pool.clone(), SqliteInbox::new(pool));
        consumer.migrate().await;
        consumer
    }

    /// Creates the inbox's tables if missing.
    async fn migrate(&self) {
        match self {
            Consumer::Postgres(_, inbox) => inbox.migrate().await,
            Consumer::Mysql(_, inbox) => inbox.migrate().await,
            Consumer::Sqlite(_, inbox) => inbox.migrate().await,
        }
        .expect("migrate inbox");
    }

    /// Empties the inbox's tables and the orders table.
    async fn empty(&self) {
        let statements: &[&str] = match self {
            Consumer::Postgres(..) => &[
                "TRUNCATE outbox_bench.bench_inbox, outbox_bench.bench_inbox_keys, \
                 outbox_bench.orders",
            ],
            Consumer::Mysql(..) => &[
                "TRUNCATE bench_inbox",
                "TRUNCATE bench_inbox_keys",
                "TRUNCATE bench_orders",
            ],
            Consumer::Sqlite(..) => &[
                "DELETE FROM outbox_inbox",
                "DELETE FROM outbox_inbox_keys",
                "DELETE FROM orders",
            ],
        };
        for statement in statements {
            match self {
                Consumer::Postgres(pool, _) => sqlx::query(statement).execute(pool).await.map(drop),
                Consumer::Mysql(pool, _) => sqlx::query(statement).execute(pool).await.map(drop),
                Consumer::Sqlite(pool, _) => sqlx::query(statement).execute(pool).await.map(drop),
            }
            .expect("empty the consumer's tables");
        }
    }

    /// One consumer transaction, the `n`th: the id into the inbox as `mode` says,
    /// then the effect (one order row).
    async fn apply(&self, mode: Mode, n: usize) {
        let id = Uuid::now_v7();
        // Key `n % KEYS`: every transaction of a key runs on one of the 8
        // consumers (KEYS is a multiple of 8), in the order of `n`.
        let incoming = Incoming {
            id,
            ordering_key: Some(format!("key-{}", n % KEYS)),
            event_type: None,
            sequence: Some(n as i64),
            headers: Default::default(),
        };
        match self {
            Consumer::Postgres(pool, inbox) => {
                let mut tx = pool.begin().await.expect("begin");
                let receipt = match mode {
                    Mode::Without => None,
                    Mode::Apply => Some(inbox.apply(&mut tx, CONSUMER, id).await),
                    Mode::InOrder => Some(inbox.apply_in_order(&mut tx, CONSUMER, &incoming).await),
                };
                if let Some(receipt) = receipt {
                    assert!(receipt.expect("apply").is_new());
                }
                sqlx::query(
                    "INSERT INTO outbox_bench.orders (id, customer, total) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind("customer")
                .bind(4200_i64)
                .execute(&mut *tx)
                .await
                .expect("insert order");
                tx.commit().await.expect("commit");
            }
            Consumer::Mysql(pool, inbox) => {
                let mut tx = pool.begin().await.expect("begin");
                let receipt = match mode {
                    Mode::Without => None,
                    Mode::Apply => Some(inbox.apply(&mut tx, CONSUMER, id).await),
                    Mode::InOrder => Some(inbox.apply_in_order(&mut tx, CONSUMER, &incoming).await),
                };
                if let Some(receipt) = receipt {
                    assert!(receipt.expect("apply").is_new());
                }
                sqlx::query("INSERT INTO bench_orders (id, customer, total) VALUES (?, ?, ?)")
                    .bind(id)
                    .bind("customer")
                    .bind(4200_i64)
                    .execute(&mut *tx)
                    .await
                    .expect("insert order");
                tx.commit().await.expect("commit");
            }
            Consumer::Sqlite(pool, inbox) => {
                let mut tx = pool.begin().await.expect("begin");
                let receipt = match mode {
                    Mode::Without => None,
                    Mode::Apply => Some(inbox.apply(&mut tx, CONSUMER, id).await),
                    Mode::InOrder => Some(inbox.apply_in_order(&mut tx, CONSUMER, &incoming).await),
                };
                if let Some(receipt) = receipt {
                    assert!(receipt.expect("apply").is_new());
                }
                sqlx::query("INSERT INTO orders (id, customer, total) VALUES (?1, ?2, ?3)")
                    .bind(id)
                    .bind("customer")
                    .bind(4200_i64)
                    .execute(&mut *tx)
                    .await
                    .expect("insert order");
                tx.commit().await.expect("commit");
            }
        }
    }
}

/// Runs the consumers for `seconds` on emptied tables, in `mode`.
pub async fn measure(consumer: &Consumer, mode: Mode, seconds: u64) -> Cost {
    consumer.empty().await;
    let consumer = consumer.clone();
    timed(crate::enqueue::WRITERS, seconds, move |n| {
        let consumer = consumer.clone();
        async move { consumer.apply(mode, n).await }
    })
    .await
}
