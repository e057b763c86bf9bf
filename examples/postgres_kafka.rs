//! An orders service on PostgreSQL publishing its events to Kafka through
//! the outbox: each order step and its event commit in one transaction, a
//! relay in this process publishes them, a consumer checks they arrived in
//! order per order. See `shop/mod.rs`.
//!
//! `scripts/services.sh up`, then
//! `cargo run --example postgres_kafka --features postgres,kafka [ORDERS]`

#[path = "shop/mod.rs"]
mod shop;

#[tokio::main]
async fn main() -> shop::Result {
    shop::init_logs();
    let shop = shop::postgres::PostgresShop::open("postgres_kafka").await?;
    let broker = shop::kafka::connect("postgres_kafka").await?;
    shop::run(shop, broker).await
}
