//! An orders service on PostgreSQL publishing its events to RabbitMQ through
//! the outbox: each order step and its event commit in one transaction, a
//! relay in this process publishes them, a consumer checks they arrived in
//! order per order. See `shop/mod.rs`.
//!
//! `scripts/services.sh up`, then
//! `cargo run --example postgres_amqp --features postgres,amqp [ORDERS]`

#[path = "shop/mod.rs"]
mod shop;

#[tokio::main]
async fn main() -> shop::Result {
    shop::init_logs();
    let shop = shop::postgres::PostgresShop::open("postgres_amqp").await?;
    let broker = shop::amqp::connect("postgres_amqp").await?;
    shop::run(shop, broker).await
}
