//! The outbox in one minute, with no server: an orders service on a SQLite
//! file writes each order and its events in one transaction; a relay in the
//! same process delivers the events in order per order; one delivery fails
//! once and is retried, one message is refused for good and dead-lettered.
//!
//! `cargo run --example quickstart`
//!
//! The destination is the in-memory broker of `outbox-core`; the other
//! examples swap in PostgreSQL or MySQL and Kafka, RabbitMQ or NATS without
//! changing the relay.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox::memory::MemoryDestination;
use outbox::{Backoff, CancellationToken, Event, Message, Relay, RelayConfig};
use outbox_sqlite::{connect, SqliteConfig, SqliteOutbox};
use serde::Serialize;
use sqlx::SqlitePool;

#[derive(Serialize)]
#[serde(tag = "type")]
enum OrderEvent {
    Placed { order_id: u32, total_cents: u64 },
    Paid { order_id: u32 },
    Shipped { order_id: u32 },
}

impl Event for OrderEvent {
    fn event_type(&self) -> &str {
        match self {
            OrderEvent::Placed { .. } => "OrderPlaced",
            OrderEvent::Paid { .. } => "OrderPaid",
            OrderEvent::Shipped { .. } => "OrderShipped",
        }
    }

    fn aggregate_id(&self) -> String {
        let (OrderEvent::Placed { order_id, .. }
        | OrderEvent::Paid { order_id }
        | OrderEvent::Shipped { order_id }) = self;
        format!("order-{order_id}")
    }
}

/// One business transaction: the order's row changes and its event commit
/// together, or neither does.
async fn record(
    pool: &SqlitePool,
    outbox: &SqliteOutbox,
    event: &OrderEvent,
    message: &Message,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = pool.begin().await?;
    let (order_id, status, total) = match event {
        OrderEvent::Placed {
            order_id,
            total_cents,
        } => (*order_id, "placed", *total_cents as i64),
        OrderEvent::Paid { order_id } => (*order_id, "paid", 0),
        OrderEvent::Shipped { order_id } => (*order_id, "shipped", 0),
    };
    sqlx::query(
        "INSERT INTO orders (id, status, total_cents) VALUES (?1, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET status = ?2",
    )
    .bind(order_id)
    .bind(status)
    .bind(total)
    .execute(&mut *tx)
    .await?;
    outbox.enqueue(&mut tx, message).await?;
    tx.commit().await?;
    outbox.notify_committed();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "outbox=warn,outbox_core=warn,outbox_sqlite=warn".into()),
        )
        .init();

    let path = std::env::temp_dir().join(format!("outbox-quickstart-{}.db", std::process::id()));
    let pool = connect(path.to_str().ok_or("temp path is not UTF-8")?).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, status TEXT NOT NULL, total_cents INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let outbox = SqliteOutbox::new(SqliteConfig::default(), pool.clone())?;
    outbox.migrate().await?;
    println!("orders database: {}", path.display());

    let broker = MemoryDestination::new();
    let config = RelayConfig {
        max_attempts: 5,
        backoff: Backoff {
            initial: Duration::from_millis(200),
            ..Backoff::default()
        },
        ..RelayConfig::default()
    };
    let relay = Relay::new(outbox.source().await?, broker.clone(), config)?;
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    // Three orders, each placed, paid and shipped in its own transaction.
    let mut written = 0;
    for order_id in 1..=3u32 {
        for event in [
            OrderEvent::Placed {
                order_id,
                total_cents: 1250 * u64::from(order_id),
            },
            OrderEvent::Paid { order_id },
            OrderEvent::Shipped { order_id },
        ] {
            let message = Message::from_event("orders", &event)?;
            // The broker will refuse order 2's shipment once (a passing fault).
            if order_id == 2 && event.event_type() == "OrderShipped" {
                broker.fail_times(message.id, 1);
            }
            record(&pool, &outbox, &event, &message).await?;
            written += 1;
        }
    }
    // A message the broker refuses for good.
    let poison = Message::builder("orders", "order-99")
        .event_type("Garbage")
        .payload("not an event")
        .build()?;
    broker.fail_permanently(poison.id);
    let mut tx = pool.begin().await?;
    outbox.enqueue(&mut tx, &poison).await?;
    tx.commit().await?;
    outbox.notify_committed();
    println!("committed {} orders with {} messages", 4, written + 1);

    if !broker.wait_for(written, Duration::from_secs(10)).await {
        return Err(format!("only {} of {written} messages arrived", broker.sent_count()).into());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while outbox.count_dead_letters().await? == 0 {
        if tokio::time::Instant::now() > deadline {
            return Err("the refused message was not dead-lettered".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    running.await??;

    println!("\nwhat the broker received, in arrival order:");
    let mut per_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for sent in broker.sent() {
        let event = sent.message.event_type.clone().unwrap_or_default();
        let retried = if sent.attempt > 1 {
            format!("  (attempt {}: retried after a failure)", sent.attempt)
        } else {
            String::new()
        };
        println!("  {:<8} {event}{retried}", sent.message.ordering_key);
        per_order
            .entry(sent.message.ordering_key)
            .or_default()
            .push(event);
    }
    println!("\nper order, in the order they were written:");
    let mut in_order = true;
    for (order, events) in &per_order {
        let expected = ["OrderPlaced", "OrderPaid", "OrderShipped"];
        in_order &= events == &expected;
        println!("  {order}: {}", events.join(" -> "));
    }
    for dead in outbox.dead_letters(10).await? {
        let key = dead.message.map(|m| m.ordering_key).unwrap_or_default();
        println!(
            "\ndead-lettered {key} after {} attempt(s): {}",
            dead.attempts, dead.error
        );
    }
    let backlog = outbox.backlog().await?;
    let counts = stats.snapshot().counts;
    println!(
        "\npublished {}, retried {}, dead-lettered {}, left waiting {}",
        counts.published, counts.retried, counts.dead_lettered, backlog.waiting,
    );
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    if !in_order {
        return Err("an order's events arrived out of order".into());
    }
    println!("every order's events arrived in order; one failed delivery was retried; the refused message waits as a dead letter for an operator.");
    Ok(())
}
