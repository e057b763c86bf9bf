//! End to end: orders committed in MariaDB (or MySQL)'s outbox table (one transaction each,
//! with a business row where the source has one), relayed by two relays
//! to a Kafka-protocol broker (one key, one partition), read back: every message once, each key in order, metadata intact.

use outbox_testkit::{assert_order_per_key, numbered_messages};

mod e2e;
mod mysql_common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_kafka_in_order_with_nothing_lost() {
    let (outbox, pool) = mysql_common::mysql_outbox("e2e_to_kafka").await;
    let (destination, topic) = e2e::kafka::setup("outbox-e2e-mysql-orders").await;
    let messages = numbered_messages(&topic, 30, 20);
    mysql_common::write(&outbox, &pool, &messages).await;
    let sources = vec![
        outbox.source().await.unwrap(),
        outbox.source().await.unwrap(),
    ];
    e2e::drain(sources, destination, async || {
        outbox.backlog().await.unwrap().waiting
    })
    .await;
    let arrivals = e2e::kafka::read(&topic, &messages).await;
    assert_eq!(
        assert_order_per_key(&messages, &arrivals),
        0,
        "no failure happened, so no duplicate"
    );
}
