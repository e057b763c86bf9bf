//! A destination filled until it refuses, then drained: a JetStream work
//! queue that holds at most `CAPACITY` messages and refuses new ones when
//! full. The relay must retry what is refused (no dead letters within its
//! attempts), keep each key's order, and deliver everything once a
//! consumer makes room.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages};
use uuid::Uuid;

use crate::support::*;

const CAPACITY: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_until_drained_and_nothing_is_lost() {
    let (outbox, pool) = table("chaos_full").await;
    let subject = "relay-chaos-full";
    let js = jetstream::new(async_nats::connect(nats_url()).await.expect("NATS"));
    let _ = js.delete_stream("RELAY_CHAOS_FULL").await;
    let stream = js
        .create_stream(stream::Config {
            name: "RELAY_CHAOS_FULL".into(),
            subjects: vec![format!("{subject}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            max_messages: CAPACITY as i64,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let messages = numbered_messages(&format!("{subject}.orders"), 20, 50);
    commit(&outbox, &pool, &messages).await;

    let port = spare_port();
    let config = settings(
        "chaos_full",
        port,
        "batch_size = 100\nsend_timeout = 1000\nmax_attempts = 1000\n\
         [relay.backoff]\ninitial = 100\nmax = 500",
    );
    let child = relay(&config, &["run"]).spawn().unwrap();

    // Full: the stream holds its capacity and refuses the rest.
    let refused = eventually(DEADLINE, || async {
        metric(port, "outbox_retried_total").await.unwrap_or(0.0) >= 20.0
    })
    .await;
    let held = stream.clone().info().await.unwrap().state.messages;
    let backlog = outbox.backlog(&pool).await.unwrap();
    assert!(refused, "the full stream never refused the relay");
    assert_eq!(held, CAPACITY as u64, "the stream is full");
    assert!(
        backlog.waiting >= (messages.len() - CAPACITY) as u64,
        "refused messages wait in the outbox: {backlog:?}"
    );
    assert_eq!(backlog.dead_letters, 0, "a refusal is not a dead letter");

    // Drain: a consumer takes messages off the work queue, making room.
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("drain".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut taken = consumer.messages().await.unwrap();
    let key_of: std::collections::HashMap<Uuid, String> = messages
        .iter()
        .map(|m| (m.id, m.ordering_key.clone()))
        .collect();
    let mut received: Vec<(String, Uuid)> = Vec::new();
    let mut distinct = std::collections::HashSet::new();
    let deadline = Instant::now() + DEADLINE;
    while distinct.len() < messages.len() && Instant::now() < deadline {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(5), taken.next()).await
        else {
            continue;
        };
        let id: Uuid = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Msg-Id"))
            .expect("Nats-Msg-Id")
            .as_str()
            .parse()
            .unwrap();
        received.push((key_of[&id].clone(), id));
        distinct.insert(id);
        message.ack().await.unwrap();
    }
    let drained = eventually(DEADLINE, || async {
        outbox.backlog(&pool).await.unwrap().waiting == 0
    })
    .await;
    let retried = metric(port, "outbox_retried_total").await.unwrap_or(0.0);
    sigterm(&child);
    let (code, text) = finish(child, Duration::from_secs(30)).await;
    assert!(drained, "the outbox did not drain:\n{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("maximum messages"),
        "the refusal's reason is logged:\n{text}"
    );
    let duplicates = assert_order_per_key(&messages, &received);
    assert_eq!(outbox.count_dead_letters(&pool).await.unwrap(), 0);
    println!(
        "full destination: {} messages through a stream of {CAPACITY}; {retried} refusals retried; \
         {duplicates} duplicates; in order per key",
        messages.len()
    );
}
