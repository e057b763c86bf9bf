//! End to end: business rows and outbox messages committed together in
//! PostgreSQL, relayed by two relays to RabbitMQ, read back from a bound
//! queue: every message, each key in order, properties intact.

use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use outbox::amqp::{AmqpConfig, AmqpDestination};
use outbox::RelayConfig;
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages, run_relay};
use uuid::Uuid;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_rabbitmq_in_order_with_nothing_lost() {
    let (outbox, pool) = common::postgres_outbox("to_amqp").await;
    let destination = AmqpDestination::connect(AmqpConfig {
        url: std::env::var("OUTBOX_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ..AmqpConfig::default()
    })
    .await
    .expect("RabbitMQ reachable");
    let channel = destination.channel().await.unwrap();
    let queue = "outbox-e2e.pg-orders";
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            "amq.topic".into(),
            "e2e.orders.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // Routed through the topic exchange: destination "exchange/routing-key".
    let messages = numbered_messages("amq.topic/e2e.orders.placed", 50, 20);
    common::write_orders(&outbox, &pool, &messages).await;
    let relays = [
        run_relay(
            outbox.source(pool.clone()).await.unwrap(),
            destination.clone(),
            RelayConfig::default(),
        ),
        run_relay(
            outbox.source(pool.clone()).await.unwrap(),
            destination.clone(),
            RelayConfig::default(),
        ),
    ];
    let drained = eventually(Duration::from_secs(60), || async {
        outbox.backlog(&pool).await.unwrap().waiting == 0
    })
    .await;
    for relay in relays {
        relay.stop().await;
    }
    assert!(drained, "the outbox did not drain");

    let mut arrivals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.len() < messages.len() && Instant::now() < deadline {
        let Some(got) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let properties = &got.delivery.properties;
        let id: Uuid = properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let sent = messages
            .iter()
            .find(|m| m.id == id)
            .expect("a message we wrote");
        assert_eq!(got.delivery.data, sent.payload);
        assert_eq!(
            properties.kind().as_ref().map(|k| k.as_str()),
            Some("TestEvent")
        );
        assert_eq!(properties.delivery_mode(), &Some(2));
        arrivals.push((sent.ordering_key.clone(), id));
    }
    let duplicates = assert_order_per_key(&messages, &arrivals);
    assert_eq!(duplicates, 0);
}
