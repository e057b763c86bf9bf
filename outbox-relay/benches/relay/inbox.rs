//! What the inbox adds to a consumer's transaction: 8 consumers commit
//! one-row transactions (a message's effect) for a while, with and without
//! recording the message's id in the inbox first.

use outbox_mysql::MysqlInbox;
use outbox_postgres::PostgresInbox;
use uuid::Uuid;

use crate::backlog::Backlog;
use crate::enqueue::{timed, Cost};

/// The consumer name the benchmark applies under.
const CONSUMER: &str = "bench";

/// A consumer on the backlog's database: its inbox and the orders table.
#[derive(Clone)]
enum Consumer {
    Postgres(sqlx::PgPool, PostgresInbox),
    Mysql(sqlx::MySqlPool, MysqlInbox),
}

impl Consumer {
    /// The inbox `bench_inbox` beside the backlog's table, created and empty.
    async fn on(backlog: &Backlog) -> Consumer {
        backlog.orders_table().await;
        let (consumer, empty) = match backlog {
            Backlog::Postgres { pool, .. } => (
                Consumer::Postgres(
                    pool.clone(),
                    PostgresInbox::named("outbox_bench", "bench_inbox", pool.clone())
                        .expect("inbox name"),
                ),
                "TRUNCATE outbox_bench.bench_inbox",
            ),
            Backlog::Mysql { pool, .. } => (
                Consumer::Mysql(
                    pool.clone(),
                    MysqlInbox::named("bench_inbox", pool.clone()).expect("inbox name"),
                ),
                "TRUNCATE bench_inbox",
            ),
        };
        match &consumer {
            Consumer::Postgres(pool, inbox) => {
                inbox.migrate().await.expect("migrate inbox");
                sqlx::query(empty).execute(pool).await.expect("truncate");
            }
            Consumer::Mysql(pool, inbox) => {
                inbox.migrate().await.expect("migrate inbox");
                sqlx::query(empty).execute(pool).await.expect("truncate");
            }
        }
        consumer
    }

    /// One consumer transaction: the id into the inbox when `with_inbox`,
    /// then the effect (one order row).
    async fn apply(&self, with_inbox: bool) {
        let id = Uuid::now_v7();
        match self {
            Consumer::Postgres(pool, inbox) => {
                let mut tx = pool.begin().await.expect("begin");
                if with_inbox {
                    let receipt = inbox.apply(&mut tx, CONSUMER, id).await.expect("apply");
                    assert!(receipt.is_new());
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
                if with_inbox {
                    let receipt = inbox.apply(&mut tx, CONSUMER, id).await.expect("apply");
                    assert!(receipt.is_new());
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
        }
    }
}

/// Runs the consumers for `seconds`, with or without the inbox.
pub async fn measure(backlog: &Backlog, with_inbox: bool, seconds: u64) -> Cost {
    let consumer = Consumer::on(backlog).await;
    timed(seconds, move |_| {
        let consumer = consumer.clone();
        async move { consumer.apply(with_inbox).await }
    })
    .await
}
