//! End to end: business rows and outbox messages committed together in
//! PostgreSQL, relayed by two relays to a JetStream stream, read back by a
//! consumer: every message once, each key in order, headers intact.

use std::time::Duration;

use async_nats::jetstream::stream;
use outbox::nats::{NatsConfig, NatsDestination, NATS_MSG_ID};
use outbox::{RelayConfig, HEADER_EVENT_TYPE};
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages, run_relay};
use uuid::Uuid;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_jetstream_in_order_with_nothing_lost() {
    let nats_url =
        std::env::var("OUTBOX_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let (outbox, pool) = common::postgres_outbox("to_nats").await;

    let destination = NatsDestination::connect(NatsConfig {
        url: nats_url.clone(),
        ..NatsConfig::default()
    })
    .await
    .expect("NATS reachable");
    let context = destination.jetstream().clone();
    let _ = context.delete_stream("OUTBOX_E2E_PG").await;
    let mut stream = context
        .get_or_create_stream(stream::Config {
            name: "OUTBOX_E2E_PG".into(),
            subjects: vec!["outbox-e2e.pg.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    // Each business row and its event commit in one transaction.
    let messages = numbered_messages("outbox-e2e.pg.orders", 50, 40);
    common::write_orders(&outbox, &pool, &messages).await;

    let config = RelayConfig {
        batch_size: 100,
        ..RelayConfig::default()
    };
    let relays = [
        run_relay(
            outbox.source(pool.clone()).await.unwrap(),
            destination.clone(),
            config.clone(),
        ),
        run_relay(
            outbox.source(pool.clone()).await.unwrap(),
            destination,
            config,
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

    let last = stream.info().await.unwrap().state.last_sequence;
    let mut arrivals = Vec::new();
    for seq in 1..=last {
        let stored = stream.get_raw_message(seq).await.unwrap();
        let id: Uuid = stored
            .headers
            .get(NATS_MSG_ID)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let sent = messages
            .iter()
            .find(|m| m.id == id)
            .expect("a message we wrote");
        assert_eq!(stored.payload.as_ref(), sent.payload.as_slice());
        assert_eq!(
            stored.headers.get(HEADER_EVENT_TYPE).unwrap().as_str(),
            "TestEvent"
        );
        assert_eq!(
            stored.headers.get("seq").unwrap().as_str(),
            sent.headers["seq"]
        );
        arrivals.push((sent.ordering_key.clone(), id));
    }
    let duplicates = assert_order_per_key(&messages, &arrivals);
    assert_eq!(
        duplicates, 0,
        "no failure happened, so the stream holds no duplicate"
    );
}
