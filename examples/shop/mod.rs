//! The orders service every `<source>_<broker>` example runs: orders are
//! placed, paid and shipped, each step one database transaction holding the
//! order row and its event; a relay in the same process publishes the events;
//! a consumer reads them back and applies each to an order history table
//! through the database's inbox, which skips the copies the broker
//! delivers, and checks that each order's events arrived in order.
//!
//! Each example picks a database module (`postgres`, `mysql`) and a broker
//! module (`kafka`, `amqp`, `nats`); this file is the part they share.

// Each example uses one database and one broker module.
#![allow(dead_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outbox::{
    CancellationToken, Destination, Event, Incoming, Message, Relay, RelayConfig, Source,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

/// What an example's `main` returns.
pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// An order's life, published to the broker as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    /// A customer placed the order.
    #[serde(rename = "OrderPlaced")]
    Placed { order_id: String, total_cents: i64 },
    /// The payment went through.
    #[serde(rename = "OrderPaid")]
    Paid { order_id: String },
    /// The parcel left the warehouse.
    #[serde(rename = "OrderShipped")]
    Shipped { order_id: String },
}

impl OrderEvent {
    /// The order this event belongs to.
    pub fn order_id(&self) -> &str {
        match self {
            OrderEvent::Placed { order_id, .. }
            | OrderEvent::Paid { order_id }
            | OrderEvent::Shipped { order_id } => order_id,
        }
    }

    /// The order's status once this event happened.
    pub fn status(&self) -> &'static str {
        match self {
            OrderEvent::Placed { .. } => "placed",
            OrderEvent::Paid { .. } => "paid",
            OrderEvent::Shipped { .. } => "shipped",
        }
    }

    /// The order total, known when it is placed.
    pub fn total_cents(&self) -> i64 {
        match self {
            OrderEvent::Placed { total_cents, .. } => *total_cents,
            _ => 0,
        }
    }
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
        self.order_id().to_string()
    }
}

/// The database side of the service.
pub trait Shop {
    /// The relay's source on this shop's outbox.
    type Source: Source<Item = Message>;

    /// Records `event` in one transaction: the order row changes and
    /// `message` (the event) is written to the outbox.
    async fn record(&self, event: &OrderEvent, message: &Message) -> Result;

    /// A relay's source.
    async fn source(&self) -> Result<Self::Source>;

    /// The consumer's side: in one transaction, records the arrival in the
    /// inbox, in order, and, if it is new, appends the event to the order
    /// history. Returns whether it was new (false: a copy, skipped); an
    /// event older than one of its order already applied is an error.
    async fn apply(&self, arrival: &Arrival) -> Result<bool>;

    /// How many history rows the orders named `prefix…` have.
    async fn history(&self, prefix: &str) -> Result<u64>;

    /// Once the relay stopped: lets go of what would outlast the example
    /// on the server (the WAL outbox's replication slot, which a service
    /// keeps but a demo must not leave behind pinning the log).
    async fn close(&self) -> Result {
        Ok(())
    }
}

/// The consumer's name in the inbox.
pub const CONSUMER: &str = "order-history";

/// One event as the consumer read it from the broker.
#[derive(Debug)]
pub struct Arrival {
    /// What the relay published with it: id, ordering key, sequence.
    pub incoming: Incoming,
    /// The event, decoded from the payload.
    pub event: OrderEvent,
}

/// A broker connection: the relay's destination, the address messages
/// carry to reach the example's topic, exchange or subject, and what a
/// consumer reads there.
pub struct Broker<D> {
    /// The relay's destination.
    pub destination: D,
    /// What goes in `Message::destination`.
    pub address: String,
    /// Events as the consumer reads them, from the moment of connecting.
    pub arrivals: UnboundedReceiver<Arrival>,
}

/// Decodes a payload, reporting bad ones on stderr.
pub fn decode(incoming: Incoming, payload: &[u8]) -> Option<Arrival> {
    match serde_json::from_slice(payload) {
        Ok(event) => Some(Arrival { incoming, event }),
        Err(err) => {
            eprintln!(
                "consumer: message {} is not an order event: {err}",
                incoming.id
            );
            None
        }
    }
}

/// Logs at `warn` unless `RUST_LOG` says otherwise.
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

/// How many orders to place: the first argument, default 50.
fn orders_wanted() -> Result<usize> {
    match std::env::args().nth(1) {
        Some(arg) => Ok(arg
            .parse()
            .map_err(|_| format!("the first argument is the number of orders, got {arg:?}"))?),
        None => Ok(50),
    }
}

/// Runs the service: a relay from `shop`'s outbox to `destination`, orders
/// written, `arrivals` read until every event came or a minute passed.
pub async fn run<S, D>(shop: S, broker: Broker<D>) -> Result
where
    S: Shop,
    D: Destination<Item = Message>,
{
    let orders = orders_wanted()?;
    let Broker {
        destination,
        address,
        mut arrivals,
    } = broker;
    let relay = Relay::new(shop.source().await?, destination, RelayConfig::default())?;
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    // Customers place orders, then pay them, then the warehouse ships them:
    // the three events of an order are written in separate transactions,
    // interleaved with other orders'.
    let run = Uuid::now_v7().simple().to_string();
    let prefix = format!("order-{}-", &run[24..]);
    let ids: Vec<String> = (0..orders).map(|n| format!("{prefix}{n}")).collect();
    let started = Instant::now();
    let mut written = 0;
    for step in 0..3 {
        for (n, order_id) in ids.iter().enumerate() {
            let order_id = order_id.clone();
            let event = match step {
                0 => OrderEvent::Placed {
                    order_id,
                    total_cents: 1000 + 25 * n as i64,
                },
                1 => OrderEvent::Paid { order_id },
                _ => OrderEvent::Shipped { order_id },
            };
            let message = Message::from_event(address.as_str(), &event)?;
            shop.record(&event, &message).await?;
            written += 1;
        }
    }
    println!(
        "placed, paid and shipped {orders} orders: {written} events committed in {:?}",
        started.elapsed()
    );

    let mut applied = 0;
    let mut duplicates = 0;
    let mut earlier = 0;
    let mut per_order: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while applied < written {
        let Ok(Some(arrival)) = tokio::time::timeout_at(deadline, arrivals.recv()).await else {
            break;
        };
        if !arrival.event.order_id().starts_with(&prefix) {
            // Left in the outbox by an earlier run that stopped early.
            earlier += 1;
            continue;
        }
        if !shop.apply(&arrival).await? {
            duplicates += 1;
            continue;
        }
        applied += 1;
        per_order
            .entry(arrival.event.order_id().to_string())
            .or_default()
            .push(arrival.event.status());
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.await??;
    shop.close().await?;

    for (order, statuses) in per_order.iter().take(3) {
        println!("  {order}: {}", statuses.join(" -> "));
    }
    let out_of_order: Vec<&String> = per_order
        .iter()
        .filter(|(_, statuses)| statuses.as_slice() != ["placed", "paid", "shipped"])
        .map(|(order, _)| order)
        .collect();
    if earlier > 0 {
        println!("  (and {earlier} events of earlier runs, ignored)");
    }
    let snapshot = stats.snapshot();
    let (counts, latency) = (snapshot.counts, snapshot.end_to_end_latency);
    println!(
        "consumer: {applied} of {written} events applied in {elapsed:?}, {duplicates} copies skipped by the inbox; relay: published {}, retried {}, mean commit-to-ack {:.1} ms",
        counts.published,
        counts.retried,
        latency.sum_seconds * 1000.0 / latency.count.max(1) as f64,
    );
    if applied < written {
        return Err(format!("only {applied} of {written} events arrived within a minute").into());
    }
    let history = shop.history(&prefix).await?;
    if history != written as u64 {
        return Err(format!("the order history holds {history} events of {written}").into());
    }
    if !out_of_order.is_empty() {
        return Err(format!("orders whose events arrived out of order: {out_of_order:?}").into());
    }
    println!("every order's events were applied once each, in order.");
    Ok(())
}
