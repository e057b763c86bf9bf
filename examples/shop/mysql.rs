//! The shop on MySQL or MariaDB: `<name>_orders` and its outbox table
//! `<name>_outbox`.

use outbox::mysql::{MysqlConfig, MysqlOutbox, MysqlSource};
use outbox::Message;
use sqlx::MySqlPool;

use super::{OrderEvent, Result, Shop};

/// The orders table and outbox of one example.
pub struct MysqlShop {
    pool: MySqlPool,
    outbox: MysqlOutbox,
    orders: String,
}

impl MysqlShop {
    /// Connects to `OUTBOX_MYSQL_URL` and creates the tables if needed.
    pub async fn open(name: &str) -> Result<Self> {
        let url = std::env::var("OUTBOX_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        let pool = MySqlPool::connect(&url).await.map_err(|err| {
            format!("MySQL at OUTBOX_MYSQL_URL: {err} (run scripts/services.sh up)")
        })?;
        let orders = format!("{name}_orders");
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {orders} (id VARCHAR(64) PRIMARY KEY, status VARCHAR(16) NOT NULL, total_cents BIGINT NOT NULL)"
        ))
        .execute(&pool)
        .await?;
        let outbox = MysqlOutbox::new(
            MysqlConfig {
                table: format!("{name}_outbox"),
                ..MysqlConfig::default()
            },
            pool.clone(),
        )?;
        outbox.migrate().await?;
        Ok(Self {
            pool,
            outbox,
            orders,
        })
    }
}

impl Shop for MysqlShop {
    type Source = MysqlSource;

    async fn record(&self, event: &OrderEvent, message: &Message) -> Result {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {} (id, status, total_cents) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE status = VALUES(status)",
            self.orders
        ))
        .bind(event.order_id())
        .bind(event.status())
        .bind(event.total_cents())
        .execute(&mut *tx)
        .await?;
        self.outbox.enqueue(&mut tx, message).await?;
        tx.commit().await?;
        // Wakes this process's relay now; others find it at their next poll.
        self.outbox.notify_committed();
        Ok(())
    }

    async fn source(&self) -> Result<MysqlSource> {
        Ok(self.outbox.source().await?)
    }
}
