//! The shop on PostgreSQL: `shop.<name>_orders` and its outbox table
//! `shop.<name>_outbox`; the consumer's `shop.<name>_history` and its inbox
//! `shop.<name>_inbox`.

use outbox::postgres::{PostgresConfig, PostgresInbox, PostgresOutbox, PostgresSource, Receipt};
use outbox::Message;
use sqlx::PgPool;

use super::{Arrival, OrderEvent, Result, Shop, CONSUMER};

/// The orders table and outbox of one example.
pub struct PostgresShop {
    pool: PgPool,
    outbox: PostgresOutbox,
    orders: String,
    inbox: PostgresInbox,
    history: String,
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
        let history = format!("shop.{name}_history");
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA IF NOT EXISTS shop; \
             CREATE TABLE IF NOT EXISTS {orders} (id text PRIMARY KEY, status text NOT NULL, total_cents bigint NOT NULL); \
             CREATE TABLE IF NOT EXISTS {history} (message_id uuid NOT NULL, order_id text NOT NULL, status text NOT NULL)"
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
        let inbox = PostgresInbox::named("shop", &format!("{name}_inbox"), pool.clone())?;
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
                "INSERT INTO {} (message_id, order_id, status) VALUES ($1, $2, $3)",
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
            "SELECT count(*) FROM {} WHERE order_id LIKE $1",
            self.history
        ))
        .bind(format!("{prefix}%"))
        .fetch_one(&self.pool)
        .await?;
        Ok(rows as u64)
    }
}
