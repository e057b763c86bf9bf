//! End to end: orders committed in PostgreSQL's outbox table (one transaction each,
//! with a business row where the source has one), relayed by two relays
//! to a JetStream stream, read back: every message once, each key in order, metadata intact.

use outbox_testkit::{assert_order_per_key, numbered_messages};

mod common;
mod e2e;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_jetstream_in_order_with_nothing_lost() {
    let (outbox, pool) = common::postgres_outbox("to_nats").await;
    let (destination, mut stream) = e2e::nats::setup("OUTBOX_E2E_PG", "outbox-e2e.pg").await;
    let messages = numbered_messages("outbox-e2e.pg.orders", 50, 40);
    common::write_orders(&outbox, &pool, &messages).await;
    let sources = vec![
        outbox.source().await.unwrap(),
        outbox.source().await.unwrap(),
    ];
    e2e::drain(sources, destination, async || {
        outbox.backlog().await.unwrap().waiting
    })
    .await;
    let arrivals = e2e::nats::read(&mut stream, &messages).await;
    assert_eq!(
        assert_order_per_key(&messages, &arrivals),
        0,
        "no failure happened, so no duplicate"
    );
}
