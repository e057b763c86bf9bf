//! outbox-sqlite against real SQLite files. Every test owns its file.

use std::time::Duration;

use outbox_core::memory::MemoryDestination;
use outbox_core::{Error, Incoming, Message, Metadata, OnDeadLetter};
use outbox_sqlite::{
    connect, Operator, Receipt, SqliteConfig, SqliteInbox, SqliteOutbox, SqliteSource,
};
use outbox_testkit::{
    arrivals, assert_order_per_key, eventually, fast_relay_config, numbered_messages,
    relay_good_beside_bad, run_relay, InboxHarness, OrderPlaced, SourceHarness, TableHarness,
    TableSetup,
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

/// A fresh database file with an outbox table set up as the scenario asks.
async fn table_with(scenario: &'static str, setup: TableSetup) -> LiteTable {
    let config = SqliteConfig {
        ack_mode: setup.ack_mode,
        on_dead_letter: setup.on_dead_letter,
        ..SqliteConfig::default()
    };
    let (outbox, pool) = database(scenario, config).await;
    LiteTable { outbox, pool }
}

impl TableHarness for LiteTable {
    fn operator(&self) -> &dyn Operator {
        &self.outbox
    }

    async fn write(&self, messages: Vec<Message>, commit: bool) {
        if commit {
            return self.enqueue(messages).await;
        }
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox.enqueue_many(&mut tx, &messages).await.unwrap();
        tx.rollback().await.unwrap();
    }

    async fn write_event(&self, event: &OrderPlaced, metadata: &Metadata) -> Message {
        let mut tx = self.pool.begin().await.unwrap();
        let message = self
            .outbox
            .enqueue_event_with(&mut tx, "orders", event, metadata)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        self.outbox.notify_committed();
        message
    }

    async fn rows(&self) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM {}", self.outbox.config().table);
        let rows: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        rows as u64
    }
}

mod tables {
    use super::*;
    outbox_testkit::table_conformance!(table_with);
}

#[derive(Clone)]
struct LiteInbox {
    inbox: SqliteInbox,
    pool: SqlitePool,
    effects: String,
}

/// A fresh database file with an inbox table and a business table.
async fn inbox_table(scenario: &'static str) -> LiteInbox {
    let (_, pool) = database(scenario, SqliteConfig::default()).await;
    let effects = "effects".to_string();
    sqlx::query("CREATE TABLE effects (consumer TEXT NOT NULL, message_id BLOB NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let inbox = SqliteInbox::new(pool.clone());
    inbox.migrate().await.unwrap();
    inbox.migrate().await.expect("migrate twice");
    LiteInbox {
        inbox,
        pool,
        effects,
    }
}

impl InboxHarness for LiteInbox {
    async fn apply_message(
        &self,
        consumer: &str,
        message: Incoming,
        in_order: bool,
        commit: bool,
    ) -> Result<Receipt, Error> {
        let id = message.id;
        let mut tx = self.pool.begin().await.unwrap();
        let receipt = if in_order {
            self.inbox
                .apply_in_order(&mut tx, consumer, &message)
                .await?
        } else {
            self.inbox.apply(&mut tx, consumer, id).await?
        };
        if receipt.is_new() {
            sqlx::query(&format!("INSERT INTO {} VALUES (?1, ?2)", self.effects))
                .bind(consumer)
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        Ok(receipt)
    }

    async fn effects(&self, consumer: &str) -> Vec<Uuid> {
        let sql = format!(
            "SELECT message_id FROM {} WHERE consumer = ?1 ORDER BY message_id",
            self.effects
        );
        sqlx::query_scalar(&sql)
            .bind(consumer)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64, Error> {
        self.inbox.prune(older_than, batch).await
    }
}

mod inbox {
    use super::*;
    outbox_testkit::inbox_conformance!(inbox_table);
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
    let relay = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );
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
        fast_relay_config(),
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
    let relay = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );
    let arrived = destination.wait_for(1, DEADLINE).await;
    relay.stop().await;
    assert!(arrived, "the message was not delivered");
}
