//! End to end: orders committed in MariaDB (or MySQL)'s outbox table (one transaction each,
//! with a business row where the source has one), relayed by two relays
//! to RabbitMQ (through amq.topic to a bound queue), read back: every message once, each key in order, metadata intact.

use outbox_testkit::{assert_order_per_key, numbered_messages};

mod e2e;
mod mysql_common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_rabbitmq_in_order_with_nothing_lost() {
    let (outbox, pool) = mysql_common::mysql_outbox("e2e_to_amqp").await;
    let queue = "outbox-e2e.mysql-orders";
    let destination = e2e::amqp::setup(queue, "e2e.mysql-orders").await;
    let messages = numbered_messages("amq.topic/e2e.mysql-orders.placed", 50, 20);
    mysql_common::write(&outbox, &pool, &messages).await;
    let sources = vec![
        outbox.source().await.unwrap(),
        outbox.source().await.unwrap(),
    ];
    e2e::drain(sources, destination.clone(), async || {
        outbox.backlog().await.unwrap().waiting
    })
    .await;
    let arrivals = e2e::amqp::read(&destination, queue, &messages).await;
    assert_eq!(
        assert_order_per_key(&messages, &arrivals),
        0,
        "no failure happened, so no duplicate"
    );
}
