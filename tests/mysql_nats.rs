//! End to end: outbox messages committed in MariaDB (or MySQL), relayed by
//! two relays to a JetStream stream: every message once, each key in order.

use std::time::Duration;

use async_nats::jetstream::stream;
use outbox::mysql::{MysqlConfig, MysqlOutbox};
use outbox::nats::{NatsConfig, NatsDestination, NATS_MSG_ID};
use outbox::RelayConfig;
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages, run_relay};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_jetstream_in_order_with_nothing_lost() {
    let url = std::env::var("OUTBOX_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("MariaDB reachable at OUTBOX_MYSQL_URL");
    for table in ["e2e_to_nats", "e2e_to_nats_keys", "e2e_to_nats_claim"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let outbox = MysqlOutbox::new(MysqlConfig {
        table: "e2e_to_nats".into(),
        ..MysqlConfig::default()
    })
    .unwrap();
    outbox.migrate(&pool).await.unwrap();

    let destination = NatsDestination::connect(NatsConfig {
        url: std::env::var("OUTBOX_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        ..NatsConfig::default()
    })
    .await
    .expect("NATS reachable");
    let context = destination.jetstream().clone();
    let _ = context.delete_stream("OUTBOX_E2E_MYSQL").await;
    let mut stream = context
        .get_or_create_stream(stream::Config {
            name: "OUTBOX_E2E_MYSQL".into(),
            subjects: vec!["outbox-e2e.mysql.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let messages = numbered_messages("outbox-e2e.mysql.orders", 40, 25);
    for message in &messages {
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue(&mut tx, message).await.unwrap();
        tx.commit().await.unwrap();
    }
    outbox.notify_committed();
    let relays = [
        run_relay(
            outbox.source(pool.clone()),
            destination.clone(),
            RelayConfig::default(),
        ),
        run_relay(
            outbox.source(pool.clone()),
            destination,
            RelayConfig::default(),
        ),
    ];
    let drained = eventually(Duration::from_secs(120), || async {
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
        arrivals.push((sent.ordering_key.clone(), id));
    }
    assert_eq!(assert_order_per_key(&messages, &arrivals), 0);
}
