//! What the end-to-end tests share: a PostgreSQL outbox of their own, and
//! orders written with their events in one transaction each.

use outbox::postgres::{PostgresConfig, PostgresOutbox};
use outbox::Message;
use sqlx::PgPool;

/// A fresh outbox table `outbox_e2e.<table>` and its orders table.
pub async fn postgres_outbox(table: &str) -> (PostgresOutbox, PgPool) {
    let url = std::env::var("OUTBOX_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("PostgreSQL reachable at OUTBOX_POSTGRES_URL");
    sqlx::query("CREATE SCHEMA IF NOT EXISTS outbox_e2e")
        .execute(&pool)
        .await
        .ok();
    sqlx::query(&format!(
        "DROP TABLE IF EXISTS outbox_e2e.{table}, outbox_e2e.{table}_orders"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE outbox_e2e.{table}_orders (id uuid primary key, key text not null)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let outbox = PostgresOutbox::new(
        PostgresConfig {
            schema: "outbox_e2e".into(),
            table: table.into(),
            ..PostgresConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.unwrap();
    (outbox, pool)
}

/// Writes each message with a business row in one transaction.
pub async fn write_orders(outbox: &PostgresOutbox, pool: &PgPool, messages: &[Message]) {
    let table = &outbox.config().table;
    for message in messages {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO outbox_e2e.{table}_orders VALUES ($1, $2)"
        ))
        .bind(message.id)
        .bind(&message.ordering_key)
        .execute(&mut *tx)
        .await
        .unwrap();
        outbox.enqueue(&mut tx, message).await.unwrap();
        tx.commit().await.unwrap();
    }
}
