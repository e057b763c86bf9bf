//! outbox-sqlite against real SQLite files. Every test owns its file.

use std::time::{Duration, Instant};

use outbox_core::memory::MemoryDestination;
use outbox_core::{Message, OnDeadLetter, RelayConfig, Source, Stats};
use outbox_sqlite::{connect, AckMode, SqliteConfig, SqliteOutbox, SqliteSource};
use outbox_testkit::{
    assert_order_per_key, eventually, numbered_messages, relay_good_beside_bad, run_relay,
    SourceHarness,
};
use sqlx::SqlitePool;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

/// A fresh database file under the system temp directory.
async fn database(name: &str, config: SqliteConfig) -> (SqliteOutbox, SqlitePool) {
    let path = std::env::temp_dir().join(format!("outbox-sqlite-{name}-{}.db", Uuid::now_v7()));
    let pool = connect(path.to_str().unwrap())
        .await
        .expect("open SQLite file");
    let outbox = SqliteOutbox::new(config, pool.clone()).unwrap();
    outbox.migrate().await.expect("migrate");
    outbox.migrate().await.expect("migrate twice");
    (outbox, pool)
}

async fn commit(outbox: &SqliteOutbox, pool: &SqlitePool, messages: &[Message]) {
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_many(&mut tx, messages)
        .await
        .expect("enqueue");
    tx.commit().await.unwrap();
    outbox.notify_committed();
}

struct LiteTable {
    outbox: SqliteOutbox,
    pool: SqlitePool,
}

impl SourceHarness for LiteTable {
    type Source = SqliteSource;

    async fn relay(&self, lease: Duration) -> SqliteSource {
        let config = SqliteConfig {
            lease,
            ..self.outbox.config().clone()
        };
        SqliteOutbox::new(config, self.pool.clone())
            .unwrap()
            .source()
            .await
            .unwrap()
    }

    async fn parking_relay(&self, lease: Duration) -> SqliteSource {
        let config = SqliteConfig {
            lease,
            on_dead_letter: OnDeadLetter::Park,
            ..self.outbox.config().clone()
        };
        SqliteOutbox::new(config, self.pool.clone())
            .unwrap()
            .source()
            .await
            .unwrap()
    }

    async fn budgeted_relay(&self, lease: Duration, batch_bytes: usize) -> SqliteSource {
        let config = SqliteConfig {
            lease,
            batch_bytes,
            ..self.outbox.config().clone()
        };
        SqliteOutbox::new(config, self.pool.clone())
            .unwrap()
            .source()
            .await
            .unwrap()
    }

    async fn enqueue(&self, messages: Vec<Message>) {
        commit(&self.outbox, &self.pool, &messages).await;
    }

    async fn enqueue_malformed(&self, key: &str) -> Option<Uuid> {
        let id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO \"{}\" (id, ordering_key, destination, payload, headers, created_at, next_attempt_at) \
             VALUES (?, ?, 'events', 'x', 'not json', 0, 0)",
            self.outbox.config().table
        );
        sqlx::query(&sql)
            .bind(id)
            .bind(key)
            .execute(&self.pool)
            .await
            .unwrap();
        Some(id)
    }

    async fn dead_letters(&self) -> Vec<(Uuid, String)> {
        let dead = self.outbox.dead_letters(10_000).await.unwrap();
        dead.into_iter().map(|d| (d.id, d.error)).collect()
    }

    async fn waiting(&self) -> u64 {
        self.outbox.backlog().await.unwrap().waiting
    }
}

async fn conformance_table(scenario: &'static str) -> LiteTable {
    let (outbox, pool) = database(scenario, SqliteConfig::default()).await;
    LiteTable { outbox, pool }
}

mod conformance {
    use super::*;
    outbox_testkit::source_conformance!(conformance_table);
}

fn fast() -> RelayConfig {
    RelayConfig {
        send_timeout: Duration::from_secs(2),
        poll_interval_max: Duration::from_millis(100),
        ..RelayConfig::default()
    }
}

fn arrivals(destination: &MemoryDestination) -> Vec<(String, Uuid)> {
    destination
        .sent()
        .into_iter()
        .map(|s| (s.message.ordering_key, s.message.id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_message_never_exists_and_a_committed_one_is_delivered() {
    let (outbox, pool) = database("atomicity", SqliteConfig::default()).await;
    let lost = Message::builder("orders", "order-1").build().unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue(&mut tx, &lost).await.unwrap();
    tx.rollback().await.unwrap();
    let kept = Message::builder("orders", "order-2").build().unwrap();
    commit(&outbox, &pool, std::slice::from_ref(&kept)).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(outbox.source().await.unwrap(), destination.clone(), fast());
    assert!(destination.wait_for(1, DEADLINE).await);
    assert!(
        eventually(DEADLINE, || async {
            outbox.backlog().await.unwrap().waiting == 0
        })
        .await
    );
    relay.stop().await;
    let sent: Vec<Uuid> = destination.sent().iter().map(|s| s.message.id).collect();
    assert_eq!(sent, vec![kept.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_keep_each_key_in_order_and_lose_nothing() {
    let (outbox, pool) = database("four_relays", SqliteConfig::default()).await;
    let messages = numbered_messages("orders", 500, 40);
    for chunk in messages.chunks(1000) {
        commit(&outbox, &pool, chunk).await;
    }
    let destination = MemoryDestination::new();
    let config = RelayConfig {
        batch_size: 200,
        ..fast()
    };
    let mut relays = Vec::new();
    for _ in 0..4 {
        let source = outbox.source().await.unwrap();
        relays.push(run_relay(source, destination.clone(), config.clone()));
    }
    let started = Instant::now();
    assert!(
        destination
            .wait_for_distinct(messages.len(), Duration::from_secs(120))
            .await,
        "{} of {} arrived",
        destination.distinct_count(),
        messages.len()
    );
    let elapsed = started.elapsed();
    let per_relay: Vec<u64> = relays
        .iter()
        .map(|r| Stats::get(&r.stats.published))
        .collect();
    for relay in relays {
        relay.stop().await;
    }
    let duplicates = assert_order_per_key(&messages, &arrivals(&destination));
    println!(
        "4 relays: {} messages over 500 keys in {elapsed:?}, per relay {per_relay:?}, {duplicates} duplicates",
        messages.len()
    );
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_dead_lettered_with_the_reason() {
    let (outbox, pool) = database("malformed", SqliteConfig::default()).await;
    let good = numbered_messages("orders", 2, 2);
    commit(&outbox, &pool, &good).await;
    let bad_headers = Uuid::now_v7();
    let bad_key = Uuid::now_v7();
    let no_destination = Uuid::now_v7();
    for (id, key, destination, headers) in [
        (bad_headers, "hand".as_bytes(), "orders", "not json"),
        (bad_key, &[0xff, 0xfe][..], "orders", "{}"),
        (no_destination, "hand2".as_bytes(), "", "{}"),
    ] {
        // A key that is not UTF-8 goes in as a blob, as a careless writer could.
        sqlx::query(
            "INSERT INTO outbox_messages (id, ordering_key, destination, payload, headers, created_at, next_attempt_at) \
             VALUES (?, CASE WHEN ? THEN ? ELSE CAST(? AS TEXT) END, ?, 'x', ?, 0, 0)",
        )
        .bind(id)
        .bind(std::str::from_utf8(key).is_err())
        .bind(key)
        .bind(key)
        .bind(destination)
        .bind(headers)
        .execute(&pool)
        .await
        .unwrap();
    }
    let destination = MemoryDestination::new();
    let relay = run_relay(outbox.source().await.unwrap(), destination.clone(), fast());
    assert!(destination.wait_for(good.len(), DEADLINE).await);
    assert!(
        eventually(DEADLINE, || async {
            outbox.count_dead_letters().await.unwrap() == 3
        })
        .await
    );
    relay.stop().await;
    let letters = outbox.dead_letters(10).await.unwrap();
    let reason = |id: Uuid| {
        letters
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.error.clone())
            .unwrap_or_default()
    };
    assert!(
        reason(bad_headers).contains("headers are not JSON"),
        "{}",
        reason(bad_headers)
    );
    assert!(
        reason(bad_key).contains("ordering_key"),
        "{}",
        reason(bad_key)
    );
    assert!(
        reason(no_destination).contains("destination"),
        "{}",
        reason(no_destination)
    );
    assert!(letters
        .iter()
        .all(|d| d.message.is_none() && d.attempts == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_requeue_dead_letters_and_clean_up_delivered_rows() {
    let config = SqliteConfig {
        ack_mode: AckMode::MarkDone,
        ..SqliteConfig::default()
    };
    let (outbox, pool) = database("operator", config).await;
    let messages = numbered_messages("orders", 3, 2);
    commit(&outbox, &pool, &messages).await;
    let source = outbox.source().await.unwrap();
    let claimed = source.claim(100).await.unwrap();
    assert_eq!(claimed.len(), 6);
    let (dead, delivered) = claimed.split_at(1);
    source
        .dead_letter(
            claimed.id(),
            &[outbox_core::Failure {
                item: dead[0].clone(),
                error: "refused by the broker".into(),
                attempts: 1,
                retry_after: Duration::ZERO,
            }],
        )
        .await
        .unwrap();
    source.ack(claimed.id(), delivered).await.unwrap();
    let backlog = outbox.backlog().await.unwrap();
    assert_eq!((backlog.waiting, backlog.dead_letters), (0, 1));
    let letters = outbox.dead_letters(10).await.unwrap();
    assert_eq!(letters[0].error, "refused by the broker");
    assert_eq!(letters[0].message.as_ref().map(|m| m.id), Some(dead[0].id));
    assert_eq!(letters[0].attempts, 1);

    assert_eq!(outbox.requeue(&[dead[0].id]).await.unwrap(), 1);
    assert_eq!(outbox.count_dead_letters().await.unwrap(), 0);
    let again = source.claim(100).await.unwrap();
    assert_eq!(
        again.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![dead[0].id]
    );
    assert_eq!(again[0].attempts, 0, "attempts are reset");
    source.ack(again.id(), &again).await.unwrap();
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);

    assert_eq!(
        outbox.cleanup(Duration::from_secs(3600), 2).await.unwrap(),
        0
    );
    assert_eq!(outbox.cleanup(Duration::ZERO, 2).await.unwrap(), 6);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox_messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_walks_the_partial_indexes() {
    let (outbox, _pool) = database("plan", SqliteConfig::default()).await;
    let plan = outbox.explain_claim(1000).await.unwrap();
    println!("{plan}");
    assert!(plan.contains("outbox_messages_waiting"), "{plan}");
    assert!(plan.contains("outbox_messages_key"), "{plan}");
    assert!(
        !plan.contains("SCAN o\n") && !plan.contains("SCAN p"),
        "{plan}"
    );
}

/// Rows whose id or attempts cannot be read (SQLite keeps whatever a
/// careless writer stored) are dead-lettered by their `seq` with the
/// reason; the claim never fails on them and the rows beside them flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_whose_id_or_attempts_cannot_be_read_are_dead_lettered() {
    let (outbox, pool) = database("undecodable", SqliteConfig::default()).await;
    sqlx::query(
        "INSERT INTO outbox_messages (id, ordering_key, destination, payload, headers, created_at, next_attempt_at, attempts) \
         VALUES ('not-a-uuid', 'hand-1', 'orders', 'x', '{}', 0, 0, 0), \
                (randomblob(16), 'hand-2', 'orders', 'x', '{}', 0, 0, 'many')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let good = numbered_messages("orders", 2, 2);
    commit(&outbox, &pool, &good).await;
    let (destination, delivered, dead) = relay_good_beside_bad(
        outbox.source().await.unwrap(),
        fast(),
        good.len(),
        || async { outbox.count_dead_letters().await.unwrap() == 2 },
    )
    .await;
    assert!(
        delivered,
        "the rows beside undecodable ones were not delivered"
    );
    assert!(dead, "the undecodable rows were not dead-lettered");
    let letters = outbox.dead_letters(10).await.unwrap();
    let errors: Vec<&str> = letters.iter().map(|d| d.error.as_str()).collect();
    assert!(errors.iter().any(|e| e.contains("column id")), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("column attempts")),
        "{errors:?}"
    );
    assert_order_per_key(&good, &arrivals(&destination));
}

/// A table whose name contains the default one is created under exactly
/// that name, with its indexes, and its messages are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_named_after_the_default_one_is_migrated_as_named() {
    let config = SqliteConfig {
        table: "outbox_messages_v2".into(),
        ..SqliteConfig::default()
    };
    let (outbox, pool) = database("named", config).await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master \
         WHERE tbl_name LIKE 'outbox_messages%' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        names
            .iter()
            .all(|name| name.starts_with("outbox_messages_v2")),
        "a name is not the configured one: {names:?}"
    );
    assert!(
        names
            .iter()
            .any(|name| name.starts_with("outbox_messages_v2_"))
            && names.contains(&"outbox_messages_v2".to_string()),
        "the table or its indexes are missing: {names:?}"
    );
    assert!(
        !names.iter().any(|name| name.contains("_v2_v2")),
        "a name was rewritten twice: {names:?}"
    );
    let message = Message::builder("orders", "v2").build().unwrap();
    commit(&outbox, &pool, std::slice::from_ref(&message)).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(outbox.source().await.unwrap(), destination.clone(), fast());
    let arrived = destination.wait_for(1, DEADLINE).await;
    relay.stop().await;
    assert!(arrived, "the message was not delivered");
}
