//! The orders service of the `<source>_<broker>` examples, with its database
//! and broker picked at run time from their names: one relay type,
//! `Relay<BoxSource<Message>, BoxDestination<Message>>`, whatever the pair,
//! as a service that reads its backends from configuration would build it.
//! See `shop/mod.rs`.
//!
//! `scripts/services.sh up`, then
//! `cargo run --example any_pair --all-features -- [ORDERS] [postgres|postgres_wal|postgres_wal_table|mysql] [kafka|amqp|nats]`
//! (`postgres_wal`: the events go through PostgreSQL's write-ahead log, on
//! the server at `OUTBOX_POSTGRES_WAL_URL`; `postgres_wal_table`: they are
//! rows of an outbox table that the relay reads from that log).

#[path = "shop/mod.rs"]
mod shop;

use outbox::{BoxDestination, BoxSource, Destination, Message, Source};
use shop::{Arrival, Broker, OrderEvent, Result, Shop};

/// The shop on whichever database was named.
enum AnyShop {
    Postgres(shop::postgres::PostgresShop),
    Mysql(shop::mysql::MysqlShop),
}

impl Shop for AnyShop {
    type Source = BoxSource<Message>;

    async fn record(&self, event: &OrderEvent, message: &Message) -> Result {
        match self {
            AnyShop::Postgres(shop) => shop.record(event, message).await,
            AnyShop::Mysql(shop) => shop.record(event, message).await,
        }
    }

    async fn apply(&self, arrival: &Arrival) -> Result<bool> {
        match self {
            AnyShop::Postgres(shop) => shop.apply(arrival).await,
            AnyShop::Mysql(shop) => shop.apply(arrival).await,
        }
    }

    async fn history(&self, prefix: &str) -> Result<u64> {
        match self {
            AnyShop::Postgres(shop) => shop.history(prefix).await,
            AnyShop::Mysql(shop) => shop.history(prefix).await,
        }
    }

    async fn close(&self) -> Result {
        match self {
            AnyShop::Postgres(shop) => shop.close().await,
            AnyShop::Mysql(shop) => shop.close().await,
        }
    }

    async fn source(&self) -> Result<BoxSource<Message>> {
        Ok(match self {
            AnyShop::Postgres(shop) => shop.source().await?,
            AnyShop::Mysql(shop) => shop.source().await?.boxed(),
        })
    }
}

/// `broker` with its destination behind [`BoxDestination`].
fn boxed<D: Destination<Item = Message>>(broker: Broker<D>) -> Broker<BoxDestination<Message>> {
    Broker {
        destination: broker.destination.boxed(),
        address: broker.address,
        arrivals: broker.arrivals,
    }
}

#[tokio::main]
async fn main() -> Result {
    shop::init_logs();
    let mut names = std::env::args().skip(2);
    let database = names.next().unwrap_or_else(|| "postgres".into());
    let broker = names.next().unwrap_or_else(|| "nats".into());
    let name = format!("any_{database}_{broker}");
    println!("{database} -> {broker}, chosen at run time");
    let shop = match database.as_str() {
        "postgres" => AnyShop::Postgres(shop::postgres::PostgresShop::open(&name).await?),
        "postgres_wal" => {
            AnyShop::Postgres(shop::postgres::PostgresShop::open_wal(&name, false).await?)
        }
        "postgres_wal_table" => {
            AnyShop::Postgres(shop::postgres::PostgresShop::open_wal(&name, true).await?)
        }
        "mysql" => AnyShop::Mysql(shop::mysql::MysqlShop::open(&name).await?),
        other => {
            return Err(format!(
                "no database {other:?}: postgres, postgres_wal, postgres_wal_table or mysql"
            )
            .into())
        }
    };
    let broker = match broker.as_str() {
        "kafka" => boxed(shop::kafka::connect(&name).await?),
        "amqp" => boxed(shop::amqp::connect(&name).await?),
        "nats" => boxed(shop::nats::connect(&name).await?),
        other => return Err(format!("no broker {other:?}: kafka, amqp or nats").into()),
    };
    shop::run(shop, broker).await
}
