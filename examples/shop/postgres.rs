//! The shop on PostgreSQL: `shop.<name>_orders` and its outbox table
//! `shop.<name>_outbox` (or, feature `postgres-wal`, its events written
//! into the write-ahead log, or into `shop.<name>_events` read from the
//! log); the consumer's `shop.<name>_history` and its
//! inbox `shop.<name>_inbox`.

use outbox::postgres::{PostgresConfig, PostgresInbox, PostgresOutbox, Receipt};
#[cfg(feature = "postgres-wal")]
use outbox::postgres::{WalConfig, WalOutbox};
use outbox::{BoxSource, Message, Source};
use sqlx::PgPool;

use super::{Arrival, OrderEvent, Result, Shop, CONSUMER};

/// The orders table and outbox of one example.
pub struct PostgresShop {
    pool: PgPool,
    outbox: Outbox,
    orders: String,
    inbox: PostgresInbox,
    history: String,
}

/// Where the shop's events are written.
enum Outbox {
    /// The outbox table.
    Table(PostgresOutbox),
    /// The write-ahead log.
    #[cfg(feature = "postgres-wal")]
    Wal(WalOutbox),
}

impl PostgresShop {
    /// Connects to `OUTBOX_POSTGRES_URL` and creates the tables if needed.
    pub async fn open(name: &str) -> Result<Self> {
        let url = std::env::var("OUTBOX_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let pool = connect("OUTBOX_POSTGRES_URL", &url).await?;
        let outbox = PostgresOutbox::new(
            PostgresConfig {
                schema: "shop".into(),
                table: format!("{name}_outbox"),
                ..PostgresConfig::default()
            },
            pool.clone(),
        )?;
        outbox.migrate().await?;
        Self::with_outbox(name, pool, Outbox::Table(outbox)).await
    }

    /// Connects to `OUTBOX_POSTGRES_WAL_URL` (a server with `wal_level =
    /// logical`) and writes the events into the write-ahead log: the relay
    /// reads them through the slot `<name>`, made afresh for each run and
    /// dropped at its end (see [`Shop::close`]). With `table`, the table
    /// mode: the events are rows of `shop.<name>_events`, which the relay
    /// reads from the log and deletes.
    #[cfg(feature = "postgres-wal")]
    pub async fn open_wal(name: &str, table: bool) -> Result<Self> {
        let url = std::env::var("OUTBOX_POSTGRES_WAL_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".into());
        let pool = connect("OUTBOX_POSTGRES_WAL_URL", &url).await?;
        // A slot an earlier run left (stopped before its end) may have been
        // invalidated by the server since, past max_slot_wal_keep_size.
        drop_slot(&pool, name).await?;
        let outbox = WalOutbox::new(
            WalConfig {
                url,
                prefix: name.into(),
                slot: name.into(),
                publication: name.into(),
                schema: "shop".into(),
                table: table.then(|| format!("{name}_events")),
                failures_table: format!("{name}_failures"),
                ..WalConfig::default()
            },
            pool.clone(),
        )?;
        outbox.migrate().await?;
        Self::with_outbox(name, pool, Outbox::Wal(outbox)).await
    }

    async fn with_outbox(name: &str, pool: PgPool, outbox: Outbox) -> Result<Self> {
        let orders = format!("shop.{name}_orders");
        let history = format!("shop.{name}_history");
        sqlx::raw_sql(&format!(
            "CREATE SCHEMA IF NOT EXISTS shop; \
             CREATE TABLE IF NOT EXISTS {orders} (id text PRIMARY KEY, status text NOT NULL, total_cents bigint NOT NULL); \
             CREATE TABLE IF NOT EXISTS {history} (message_id uuid NOT NULL, order_id text NOT NULL, status text NOT NULL)"
        ))
        .execute(&pool)
        .await?;
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

/// Drops the replication slot `slot` if it exists, waiting (at most ten
/// seconds) for a relay that just stopped to let go of it.
#[cfg(feature = "postgres-wal")]
async fn drop_slot(pool: &PgPool, slot: &str) -> Result {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(slot)
        .execute(pool)
        .await;
        match dropped {
            Ok(_) => return Ok(()),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(err) => return Err(format!("dropping the slot {slot}: {err}").into()),
        }
    }
}

/// A pool on `url`, read from the environment's `variable`.
async fn connect(variable: &str, url: &str) -> Result<PgPool> {
    PgPool::connect(url).await.map_err(|err| {
        format!("PostgreSQL at {variable}: {err} (run scripts/services.sh up)").into()
    })
}

impl Shop for PostgresShop {
    type Source = BoxSource<Message>;

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
        match &self.outbox {
            Outbox::Table(outbox) => outbox.enqueue(&mut tx, message).await?,
            #[cfg(feature = "postgres-wal")]
            Outbox::Wal(outbox) => outbox.enqueue(&mut tx, message).await?,
        }
        tx.commit().await?;
        Ok(())
    }

    async fn source(&self) -> Result<BoxSource<Message>> {
        Ok(match &self.outbox {
            Outbox::Table(outbox) => outbox.source().await?.boxed(),
            #[cfg(feature = "postgres-wal")]
            Outbox::Wal(outbox) => outbox.source().await?.boxed(),
        })
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

    async fn close(&self) -> Result {
        match &self.outbox {
            Outbox::Table(_) => Ok(()),
            #[cfg(feature = "postgres-wal")]
            Outbox::Wal(outbox) => drop_slot(&self.pool, &outbox.config().slot).await,
        }
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
