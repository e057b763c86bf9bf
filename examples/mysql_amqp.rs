//! An orders service on MySQL or MariaDB publishing its events to RabbitMQ through
//! the outbox: each order step and its event commit in one transaction, a
//! relay in this process publishes them, a consumer checks they arrived in
//! order per order. See `shop/mod.rs`.
//!
//! `scripts/services.sh up`, then
//! `cargo run --example mysql_amqp --features mysql,amqp [ORDERS]`

#[path = "shop/mod.rs"]
mod shop;

#[tokio::main]
async fn main() -> shop::Result {
    shop::init_logs();
    let shop = shop::mysql::MysqlShop::open("mysql_amqp").await?;
    let broker = shop::amqp::connect("mysql_amqp").await?;
    shop::run(shop, broker).await
}
