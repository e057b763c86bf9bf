//! The shop on PostgreSQL: `shop.<name>_orders` and its outbox table
//! `shop.<name>_outbox`.

use outbox::postgres::{PostgresConfig, PostgresOutbox, PostgresSource};
use outbox::Message;
use sqlx::PgPool;

use super::{OrderEvent, Result, Shop};

/// The orders table and outbox of one example.
pub struct PostgresShop {
    pool: PgPool,
    outbox: PostgresOutbox,
    orders: String,
}

impl PostgresShop {
    /// Connects to `OUTBOX_POSTGRES_URL` and creates the tables if needed.
    pub async fn open(name: &str) -> Result<Self> {
        let url = std::env::var("OUTBOX_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let pool = PgPool::connect(&url).await.map_err(|err| {
            format!("PostgreSQL at OUTBOX_POSTGRES_URL: {err} (run scripts/services.sh up)")
        })?;
        let orders = format!("shop.{name}_orders");
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA IF NOT EXISTS shop; \
             CREATE TABLE IF NOT EXISTS {orders} (id text PRIMARY KEY, status text NOT NULL, total_cents bigint NOT NULL)"
        ))
        .execute(&pool)
        .await?;
        let outbox = PostgresOutbox::new(
            PostgresConfig {
                schema: "shop".into(),
                table: format!("{name}_outbox"),
                ..PostgresConfig::default()
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

impl Shop for PostgresShop {
    type Source = PostgresSource;

    async fn record(&self, event: &OrderEvent, message: &Message) -> Result {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {} (id, status, total_cents) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status",
            self.orders
        ))
        .bind(event.order_id())
        .bind(event.status())
        .bind(event.total_cents())
        .execute(&mut *tx)
        .await?;
        self.outbox.enqueue(&mut tx, message).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn source(&self) -> Result<PostgresSource> {
        Ok(self.outbox.source().await?)
    }
}
