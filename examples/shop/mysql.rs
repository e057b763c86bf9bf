//! The shop on MySQL or MariaDB: `<name>_orders` and its outbox table
//! `<name>_outbox`; the consumer's `<name>_history` and its inbox
//! `<name>_inbox`.

use outbox::mysql::{MysqlConfig, MysqlInbox, MysqlOutbox, MysqlSource, Receipt};
use outbox::Message;
use sqlx::MySqlPool;

use super::{Arrival, OrderEvent, Result, Shop, CONSUMER};

/// The orders table and outbox of one example.
pub struct MysqlShop {
    pool: MySqlPool,
    outbox: MysqlOutbox,
    orders: String,
    inbox: MysqlInbox,
    history: String,
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
        let history = format!("{name}_history");
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {history} (message_id BINARY(16) NOT NULL, order_id VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL)"
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
        let inbox = MysqlInbox::named(&format!("{name}_inbox"), pool.clone())?;
        inbox.migrate().await?;
        Ok(Self {
            pool,
            outbox,
            orders,
            inbox,
            history,
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

    async fn apply(&self, arrival: &Arrival) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let receipt = self
            .inbox
            .apply_in_order(&mut tx, CONSUMER, &arrival.incoming)
            .await?;
        if receipt == Receipt::Stale {
            return Err(format!(
                "{} arrived after a later event of its order",
                arrival.incoming.id
            )
            .into());
        }
        if receipt.is_new() {
            sqlx::query(&format!(
                "INSERT INTO {} (message_id, order_id, status) VALUES (?, ?, ?)",
                self.history
            ))
            .bind(arrival.incoming.id)
            .bind(arrival.event.order_id())
            .bind(arrival.event.status())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(receipt.is_new())
    }

    async fn history(&self, prefix: &str) -> Result<u64> {
        let rows: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {} WHERE order_id LIKE ?",
            self.history
        ))
        .bind(format!("{prefix}%"))
        .fetch_one(&self.pool)
        .await?;
        Ok(rows as u64)
    }

    async fn source(&self) -> Result<MysqlSource> {
        Ok(self.outbox.source().await?)
    }
}
