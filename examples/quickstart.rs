//! The outbox in one minute, with no server: orders are placed, each order's
//! events go through the relay in order, one delivery fails once and is
//! retried, one message is refused for good and dead-lettered.
//!
//! `cargo run --example quickstart`
//!
//! The source and destination here are the in-memory pair of `outbox-core`;
//! the other examples swap in PostgreSQL or MySQL and Kafka, RabbitMQ or NATS
//! without changing the relay.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox::memory::{MemoryDestination, MemorySource};
use outbox::{Backoff, CancellationToken, Event, Message, Relay, RelayConfig, Stats};
use serde::Serialize;

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "outbox=warn,outbox_core=warn".into()),
        )
        .init();

    // The outbox table. With a database this is the table your business
    // transaction writes to.
    let outbox = MemorySource::new(Duration::from_secs(30));
    let broker = MemoryDestination::new();

    // Three orders, each with three events, written as each order's
    // transaction would commit them.
    let mut written = Vec::new();
    for order_id in 1..=3 {
        for event in [
            OrderEvent::Placed {
                order_id,
                total_cents: 1250 * u64::from(order_id),
            },
            OrderEvent::Paid { order_id },
            OrderEvent::Shipped { order_id },
        ] {
            written.push(Message::from_event("orders", &event)?);
        }
    }
    // The broker will refuse order 2's shipment once (a passing fault) ...
    let flaky = written[5].id;
    broker.fail_times(flaky, 1);
    // ... and refuse a malformed message for good.
    let poison = Message::builder("orders", "order-99")
        .event_type("Garbage")
        .payload("not an event")
        .build()?;
    broker.fail_permanently(poison.id);
    written.push(poison.clone());
    outbox.enqueue(written.clone());
    println!(
        "wrote {} messages for 4 orders into the outbox",
        written.len()
    );

    let config = RelayConfig {
        max_attempts: 5,
        backoff: Backoff {
            initial: Duration::from_millis(200),
            ..Backoff::default()
        },
        ..RelayConfig::default()
    };
    let relay = Relay::new(outbox.clone(), broker.clone(), config)?;
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    let delivered = written.len() - 1;
    if !broker.wait_for(delivered, Duration::from_secs(10)).await {
        return Err(format!(
            "only {} of {delivered} messages arrived",
            broker.sent_count()
        )
        .into());
    }
    while outbox.dead_letters().is_empty() {
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
    for dead in outbox.dead_letters() {
        println!(
            "\ndead-lettered {} ({}): {}",
            dead.message.ordering_key,
            dead.message.event_type.unwrap_or_default(),
            dead.error
        );
    }
    println!(
        "\npublished {}, retried {}, dead-lettered {}, left waiting {}",
        Stats::get(&stats.published),
        Stats::get(&stats.retried),
        Stats::get(&stats.dead_lettered),
        outbox.waiting(),
    );
    if !in_order {
        return Err("an order's events arrived out of order".into());
    }
    println!("every order's events arrived in order; one failed delivery was retried; the refused message waits as a dead letter for an operator.");
    Ok(())
}
