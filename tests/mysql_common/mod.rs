//! What the MySQL end-to-end tests share: an outbox of their own, and
//! messages committed one transaction each.

use outbox::mysql::{MysqlConfig, MysqlOutbox};
use outbox::Message;
use sqlx::MySqlPool;

/// A fresh outbox table `<table>` (and its helper tables).
pub async fn mysql_outbox(table: &str) -> (MysqlOutbox, MySqlPool) {
    let url = std::env::var("OUTBOX_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("MariaDB reachable at OUTBOX_MYSQL_URL");
    for suffix in ["", "_keys"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS `{table}{suffix}`"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let outbox = MysqlOutbox::new(
        MysqlConfig {
            table: table.into(),
            ..MysqlConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.unwrap();
    (outbox, pool)
}

/// Commits each message in a transaction of its own, then wakes the relays.
pub async fn write(outbox: &MysqlOutbox, pool: &MySqlPool, messages: &[Message]) {
    for message in messages {
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue(&mut tx, message).await.unwrap();
        tx.commit().await.unwrap();
    }
    outbox.notify_committed();
}
