//! The WAL outbox against a real PostgreSQL with `wal_level = logical`
//! (`OUTBOX_POSTGRES_WAL_URL`, default
//! `postgres://postgres@127.0.0.1:5433/test`; `scripts/services.sh up`
//! starts one). Every test owns its slot, publication, prefix and failures
//! table, named after it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_core::memory::MemoryDestination;
use outbox_core::{Message, OnDeadLetter, Source};
use outbox_postgres::{WalConfig, WalMonitor, WalOutbox, WalSource};
use outbox_testkit::{
    arrivals, assert_order_per_key, eventually, fast_relay_config, numbered_messages, run_relay,
    SourceHarness,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("OUTBOX_POSTGRES_WAL_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".to_string())
}

async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(6)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url())
        .await
        .expect("PostgreSQL with wal_level = logical at OUTBOX_POSTGRES_WAL_URL (run scripts/services.sh up)")
}

#[derive(Clone)]
struct Wal {
    outbox: WalOutbox,
    pool: PgPool,
    monitors: Arc<Mutex<Vec<WalMonitor>>>,
}

/// A fresh WAL outbox named after `scenario`: its old slot, publication and
/// failures table dropped first.
async fn wal(scenario: &str) -> Wal {
    wal_of(&format!("wal_{scenario}"), false).await
}

/// The same in the table mode: writers insert rows into a table of the
/// scenario's own, which the relay reads from the log.
async fn wal_table(scenario: &str) -> Wal {
    wal_of(&format!("walt_{scenario}"), true).await
}

async fn wal_of(name: &str, table: bool) -> Wal {
    let name: String = name.chars().take(55).collect();
    let pool = pool().await;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS outbox_test")
        .execute(&pool)
        .await
        .ok();
    let slot_gone = eventually(DEADLINE, || async {
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(&name)
        .execute(&pool)
        .await
        .is_ok()
    })
    .await;
    assert!(slot_gone, "the slot {name} stayed active");
    for drop in [
        format!("DROP PUBLICATION IF EXISTS {name}"),
        format!("DROP TABLE IF EXISTS outbox_test.{name}"),
        format!("DROP TABLE IF EXISTS outbox_test.{name}_rows"),
    ] {
        sqlx::query(&drop).execute(&pool).await.unwrap();
    }
    let config = WalConfig {
        url: url(),
        prefix: name.clone(),
        slot: name.clone(),
        publication: name.clone(),
        schema: "outbox_test".into(),
        table: table.then(|| format!("{name}_rows")),
        failures_table: name,
        ..WalConfig::default()
    };
    let outbox = WalOutbox::new(config, pool.clone()).expect("valid config");
    outbox.migrate().await.expect("migrate");
    outbox.migrate().await.expect("migrate twice");
    Wal {
        outbox,
        pool,
        monitors: Arc::default(),
    }
}

impl Wal {
    async fn source(&self, tweak: impl FnOnce(&mut WalConfig)) -> WalSource {
        let mut config = self.outbox.config().clone();
        tweak(&mut config);
        let source = WalOutbox::new(config, self.pool.clone())
            .unwrap()
            .source()
            .await
            .expect("source");
        self.monitors.lock().unwrap().push(source.monitor());
        source
    }

    /// Runs a relay on `source` until `count` distinct messages arrived
    /// (failing past the deadline), stops it, and returns where they
    /// arrived.
    async fn deliver(&self, source: WalSource, count: usize) -> MemoryDestination {
        let destination = MemoryDestination::new();
        let relay = run_relay(source, destination.clone(), fast_relay_config());
        assert!(
            destination.wait_for_distinct(count, DEADLINE).await,
            "only {} of {count} arrived",
            destination.sent_count()
        );
        relay.stop().await;
        destination
    }

    /// Asserts that the slot gets confirmed to the log's end.
    async fn assert_confirmed_to_the_end(&self) {
        assert!(
            eventually(DEADLINE, || async {
                self.outbox.unread().await.ok() == Some(0)
            })
            .await,
            "the slot was not confirmed to the end: {:?} unread",
            self.outbox.unread().await
        );
    }

    /// Rows in the table mode's table.
    async fn rows_left(&self) -> i64 {
        let table = self.outbox.config().table.as_ref().expect("the table mode");
        sqlx::query_scalar(&format!("SELECT count(*) FROM outbox_test.{table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Writes `messages` in a transaction that rolls back.
    async fn roll_back(&self, messages: &[Message]) {
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox.enqueue_many(&mut tx, messages).await.unwrap();
        tx.rollback().await.unwrap();
    }

    async fn commit(&self, messages: &[Message]) {
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox
            .enqueue_many(&mut tx, messages)
            .await
            .expect("enqueue");
        tx.commit().await.unwrap();
    }
}

impl SourceHarness for Wal {
    type Source = WalSource;

    async fn relay(&self, lease: Duration) -> WalSource {
        self.source(|c| c.lease = lease).await
    }

    async fn parking_relay(&self, lease: Duration) -> WalSource {
        self.source(|c| {
            c.lease = lease;
            c.on_dead_letter = OnDeadLetter::Park;
        })
        .await
    }

    async fn budgeted_relay(&self, lease: Duration, batch_bytes: usize) -> WalSource {
        self.source(|c| {
            c.lease = lease;
            c.batch_bytes = batch_bytes;
        })
        .await
    }

    async fn enqueue(&self, messages: Vec<Message>) {
        self.commit(&messages).await;
    }

    /// An envelope without a destination, as a careless writer in another
    /// language could emit; in the table mode, a row without one.
    async fn enqueue_malformed(&self, key: &str) -> Option<Uuid> {
        let id = Uuid::now_v7();
        if let Some(table) = &self.outbox.config().table {
            sqlx::query(&format!(
                "INSERT INTO outbox_test.{table} (id, ordering_key, destination, payload) \
                 VALUES ($1, $2, '', '')"
            ))
            .bind(id)
            .bind(key)
            .execute(&self.pool)
            .await
            .unwrap();
            return Some(id);
        }
        let head = serde_json::json!({"v": 1, "id": id, "key": key});
        sqlx::query("SELECT pg_logical_emit_message(true, $1, convert_to($2, 'UTF8'))")
            .bind(&self.outbox.config().prefix)
            .bind(format!("{head}\n"))
            .execute(&self.pool)
            .await
            .unwrap();
        Some(id)
    }

    async fn dead_letters(&self) -> Vec<(Uuid, String)> {
        let dead = self.outbox.dead_letters(10_000).await.unwrap();
        dead.into_iter().map(|d| (d.id, d.error)).collect()
    }

    /// What the reading relay holds plus what waits in the failures table;
    /// with no relay reading, what the slot would hand out.
    async fn waiting(&self) -> u64 {
        let monitors = self.monitors.lock().unwrap().clone();
        for monitor in monitors {
            if let Some(held) = monitor.held().await {
                return held as u64 + self.outbox.backlog().await.unwrap().waiting;
            }
        }
        let unread = eventually(DEADLINE, || async { self.outbox.unread().await.is_ok() }).await;
        assert!(unread, "the slot stayed active with no relay reading");
        self.outbox.unread().await.unwrap() + self.outbox.backlog().await.unwrap().waiting
    }

    /// A dropped source lets go of the slot, and the next reader reads
    /// again from the slot's confirmed position.
    fn claims_end_with_the_relay(&self) -> bool {
        true
    }
}

/// The shared scenarios for a source with one reader at a time: the
/// three that need two relays claiming at once are left out; here the
/// second stands by (`a_standby_takes_over_when_the_reader_goes`).
mod conformance {
    use super::*;
    outbox_testkit::source_conformance!(@one_reader wal);
}

/// The same scenarios in the table mode.
mod table_conformance {
    use super::*;
    outbox_testkit::source_conformance!(@one_reader wal_table);
}

/// A rolled-back transaction never delivers; one transaction with messages
/// for 50 keys delivers all of them, in order per key; and once delivered,
/// the slot is confirmed to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_committed_messages_arrive_in_order_and_the_slot_is_confirmed() {
    let wal = wal("atomicity").await;
    let rolled_back = numbered_messages("events", 5, 2);
    wal.roll_back(&rolled_back).await;
    let messages = numbered_messages("events", 50, 4);
    wal.commit(&messages).await;

    let arrived = arrivals(&wal.deliver(wal.source(|_| {}).await, messages.len()).await);
    assert_order_per_key(&messages, &arrived);
    assert_none_of(&rolled_back, &arrived);
    wal.assert_confirmed_to_the_end().await;
}

/// Fails if a message of `rolled_back` arrived.
fn assert_none_of(rolled_back: &[Message], arrived: &[(String, Uuid)]) {
    assert!(
        arrived
            .iter()
            .all(|(_, id)| rolled_back.iter().all(|m| m.id != *id)),
        "a rolled-back message was delivered"
    );
}

/// One relay reads the slot; another stands by, claims nothing, and takes
/// over when the first goes, delivering what the first left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_reader_goes() {
    let wal = wal("standby").await;
    let first = wal.source(|_| {}).await;
    assert!(
        eventually(DEADLINE, || async { first.is_reading() }).await,
        "the first relay never read the slot"
    );
    let standby = wal.source(|_| {}).await;
    let messages = numbered_messages("events", 4, 5);
    wal.commit(&messages).await;
    let mut claimed = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while claimed.len() < 10 && Instant::now() < deadline {
        let claim = first.claim(10 - claimed.len()).await.unwrap();
        first.ack(claim.id(), &claim).await.unwrap();
        claimed.extend(claim.into_items());
    }
    assert_eq!(claimed.len(), 10, "the reader's claims");
    assert!(
        standby.claim(100).await.unwrap().is_empty(),
        "a standby claimed while another relay read the slot"
    );
    drop(first);

    let destination = MemoryDestination::new();
    let relay = run_relay(standby, destination.clone(), fast_relay_config());
    let rest = messages.len() - claimed.len();
    assert!(
        destination.wait_for_distinct(rest, DEADLINE).await,
        "the standby delivered {} of the {rest} left",
        destination.sent_count()
    );
    relay.stop().await;
    let mut all: Vec<(String, Uuid)> = claimed
        .iter()
        .map(|m| (m.ordering_key.clone(), m.id))
        .collect();
    all.extend(arrivals(&destination));
    assert_order_per_key(&messages, &all);
}

/// A server without `wal_level = logical` is refused at migration, saying
/// what to change; a source without its slot says to migrate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_missing_on_the_server_is_named() {
    let table_url = std::env::var("OUTBOX_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let replica = PgPoolOptions::new().connect(&table_url).await.unwrap();
    let level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&replica)
        .await
        .unwrap();
    if level != "logical" {
        let config = WalConfig {
            url: table_url.clone(),
            slot: "wal_not_logical".into(),
            publication: "wal_not_logical".into(),
            failures_table: "wal_not_logical".into(),
            schema: "outbox_test".into(),
            ..WalConfig::default()
        };
        let err = WalOutbox::new(config, replica)
            .unwrap()
            .migrate()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("wal_level = logical"), "{err}");
    }
    let config = WalConfig {
        url: url(),
        slot: "wal_never_migrated".into(),
        ..WalConfig::default()
    };
    let err = WalOutbox::new(config, pool().await)
        .unwrap()
        .source()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("WalOutbox::migrate"), "{err}");
}

/// Envelopes that cannot be read (a head without a destination, bytes that
/// are not an envelope, a later version) are dead-lettered with the reason
/// while the relay goes on delivering the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_envelope_is_dead_lettered_with_its_reason() {
    let wal = wal("malformed").await;
    let prefix = wal.outbox.config().prefix.clone();
    let without_destination = wal.enqueue_malformed("bad").await.unwrap();
    let later_version = Uuid::now_v7();
    let mut tx = wal.pool.begin().await.unwrap();
    for bytes in [
        b"not an envelope".to_vec(),
        format!("{{\"v\":2,\"id\":\"{later_version}\",\"key\":\"k\",\"destination\":\"d\"}}\n")
            .into_bytes(),
    ] {
        sqlx::query("SELECT pg_logical_emit_message(true, $1, $2)")
            .bind(&prefix)
            .bind(bytes)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let messages = numbered_messages("events", 3, 3);
    wal.commit(&messages).await;

    let destination = MemoryDestination::new();
    let relay = run_relay(
        wal.source(|_| {}).await,
        destination.clone(),
        fast_relay_config(),
    );
    assert!(
        destination
            .wait_for_distinct(messages.len(), DEADLINE)
            .await
    );
    let dead = eventually(DEADLINE, || async { wal.dead_letters().await.len() == 3 }).await;
    relay.stop().await;
    let letters = wal.dead_letters().await;
    assert!(dead, "dead letters: {letters:?}");
    let reason = |id: Uuid| {
        letters
            .iter()
            .find(|(d, _)| *d == id)
            .map(|(_, e)| e.clone())
    };
    assert!(
        reason(without_destination).unwrap().contains("destination"),
        "{letters:?}"
    );
    assert!(
        reason(later_version).unwrap().contains("version 2"),
        "{letters:?}"
    );
    assert!(
        letters.iter().any(|(_, e)| e.contains("no newline")),
        "{letters:?}"
    );
}

/// A backlog larger than `max_held`: the reader pauses with that many
/// messages held and reads on as they are settled; everything arrives, in
/// order per key, and the slot is confirmed to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_what_is_held_flows_through() {
    let wal = wal("max_held").await;
    let messages = numbered_messages("events", 5, 60);
    wal.commit(&messages[..150]).await;
    wal.commit(&messages[150..]).await;
    let source = wal.source(|c| c.max_held = 10).await;
    let arrived = arrivals(&wal.deliver(source, messages.len()).await);
    assert_order_per_key(&messages, &arrived);
    wal.assert_confirmed_to_the_end().await;
}

/// An idle outbox never pins the log: with nothing held, the reader
/// confirms the positions the server's keep-alives carry, so the slot moves
/// on past writes that are not the outbox's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_outbox_never_pins_the_log() {
    let wal = wal("idle").await;
    let source = wal.source(|_| {}).await;
    assert!(eventually(DEADLINE, || async { source.is_reading() }).await);
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS outbox_test.wal_idle_writes (n int); \
         INSERT INTO outbox_test.wal_idle_writes SELECT generate_series(1, 1000)",
    )
    .execute(&wal.pool)
    .await
    .unwrap();
    let written: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
        .fetch_one(&wal.pool)
        .await
        .unwrap();
    let confirmed = || async {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(&wal.outbox.config().slot)
        .fetch_one(&wal.pool)
        .await
        .unwrap();
        at.unwrap_or(0)
    };
    assert!(
        eventually(DEADLINE, || async { confirmed().await >= written }).await,
        "the slot stayed at {} behind the log's {written}",
        confirmed().await
    );
    drop(source);
}

/// A key that becomes parked while the reader holds some of its messages
/// (an operator requeued a dead letter of it, or a relay that lost the slot
/// without knowing yet wrote a failure) keeps its order: what the reader
/// held goes out before what it reads afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_parked_from_elsewhere_keeps_the_order_of_what_was_held() {
    let wal = wal("parked_elsewhere").await;
    let source = wal.source(|_| {}).await;
    let claim_of = |expected: Uuid| {
        let source = &source;
        async move {
            let deadline = Instant::now() + DEADLINE;
            loop {
                let claim = source.claim(10).await.unwrap();
                if claim.iter().any(|m| m.id == expected) {
                    return claim;
                }
                let items = claim.to_vec();
                source.release(claim.id(), &items).await.unwrap();
                assert!(Instant::now() < deadline, "{expected} was never claimed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let [first, held, read_after] = [0, 1, 2].map(|n| {
        Message::builder("events", "key")
            .payload(format!("{n}"))
            .build()
            .unwrap()
    });
    wal.commit(std::slice::from_ref(&first)).await;
    let claim = claim_of(first.id).await;
    let failure = outbox_core::Failure {
        item: first.clone(),
        error: "refused".into(),
        attempts: 1,
        retry_after: Duration::ZERO,
    };
    source.dead_letter(claim.id(), &[failure]).await.unwrap();

    wal.commit(std::slice::from_ref(&held)).await;
    let monitor = source.monitor();
    assert!(
        eventually(DEADLINE, || async { monitor.held().await == Some(1) }).await,
        "the reader never held the second message"
    );
    assert_eq!(wal.outbox.requeue(&[first.id]).await.unwrap(), 1);
    // Once the source has seen the requeue, its claims start with it.
    let mut delivered = Vec::new();
    let claim = claim_of(first.id).await;
    delivered.extend(claim.iter().map(|m| m.id));
    wal.commit(std::slice::from_ref(&read_after)).await;
    assert!(
        eventually(DEADLINE, || async { wal.waiting().await == 3 }).await,
        "the reader never read the third message"
    );
    let items = claim.to_vec();
    source.ack(claim.id(), &items).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while delivered.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {delivered:?} were delivered"
        );
        let claim = source.claim(10).await.unwrap();
        if claim.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        delivered.extend(claim.iter().map(|m| m.id));
        let items = claim.to_vec();
        source.ack(claim.id(), &items).await.unwrap();
    }
    assert_eq!(
        delivered,
        vec![first.id, held.id, read_after.id],
        "(first, held, read after): delivered out of order"
    );
}

/// The source's backlog says how far the slot is behind the log, and a
/// relay whose slot is further behind than `max_lag_bytes` reports
/// unhealthy, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_lag_is_reported_and_past_its_limit_the_relay_is_unhealthy() {
    let wal = wal("lag").await;
    let reader = wal.source(|c| c.max_lag_bytes = Some(1)).await;
    let messages = numbered_messages("events", 3, 1);
    wal.commit(&messages).await;
    let monitor = reader.monitor();
    assert!(
        eventually(DEADLINE, || async { monitor.held().await == Some(3) }).await,
        "the reader never held the messages"
    );
    let lag = reader.backlog().await.unwrap().unwrap().log_lag.unwrap();
    assert!(lag.bytes > 0, "{lag:?}");
    assert!(
        lag.age.is_some(),
        "the reader knows its oldest transaction: {lag:?}"
    );
    assert!(lag.is_over_limit(), "{lag:?}");

    // A standby relay of the same slot reads the same lag from the server.
    let standby = wal.source(|c| c.max_lag_bytes = Some(1)).await;
    let relay = run_relay(standby, MemoryDestination::new(), fast_relay_config());
    assert!(
        eventually(DEADLINE, || async { !relay.stats.health().healthy }).await,
        "healthy with the slot behind its limit: {:?}",
        relay.stats.health()
    );
    let health = relay.stats.health();
    assert!(health.reason.contains("max_lag_bytes"), "{}", health.reason);
    relay.stop().await;

    let claim = reader.claim(10).await.unwrap();
    assert_eq!(claim.len(), 3);
    let items = claim.to_vec();
    reader.ack(claim.id(), &items).await.unwrap();
    assert!(
        eventually(DEADLINE, || async {
            let lag = reader.backlog().await.unwrap().unwrap().log_lag.unwrap();
            lag.age == Some(Duration::ZERO)
        })
        .await,
        "delivered transactions still count as unconfirmed"
    );
    let operator = wal.outbox.backlog().await.unwrap().log_lag.unwrap();
    assert_eq!(operator.age, None, "an operator's view reads nothing");
    assert_eq!(operator.max_bytes, Some(1 << 30));
}

/// The table mode reads the rows of any writer: this crate's WAL writer,
/// the table-based outbox's writers on the same table, and a plain
/// `INSERT`. A rolled-back transaction never delivers; a transaction with
/// 50 keys delivers them all in order per key; a row that is not a message
/// is dead-lettered with the reason; the table ends empty and the slot
/// confirmed to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_mode_reads_every_writers_rows_and_leaves_the_table_empty() {
    let wal = wal_table("any_writer").await;
    let table = wal.outbox.config().table.clone().unwrap();
    // The table-based outbox's own table, with its columns and indexes.
    sqlx::query(&format!("DROP TABLE outbox_test.{table}"))
        .execute(&wal.pool)
        .await
        .unwrap();
    let table_outbox = outbox_postgres::PostgresOutbox::new(
        outbox_postgres::PostgresConfig {
            schema: "outbox_test".into(),
            table: table.clone(),
            ..Default::default()
        },
        wal.pool.clone(),
    )
    .unwrap();
    table_outbox.migrate().await.unwrap();
    wal.outbox
        .migrate()
        .await
        .expect("migrate onto an existing table");

    let rolled_back = numbered_messages("events", 5, 2);
    wal.roll_back(&rolled_back).await;
    let mut messages = numbered_messages("events", 50, 6);
    // Incompressible and larger than a page: stored out of line (TOAST),
    // and still whole in the log's insert record.
    let big: Vec<u8> = (0..20_000)
        .flat_map(|_| *Uuid::new_v4().as_bytes())
        .collect();
    messages[0].payload = big.clone();
    wal.commit(&messages[..100]).await;
    let mut tx = wal.pool.begin().await.unwrap();
    table_outbox
        .enqueue_many(&mut tx, &messages[100..200])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for message in &messages[200..] {
        sqlx::query(&format!(
            "INSERT INTO outbox_test.{table} (id, ordering_key, destination, payload) \
             VALUES ($1, $2, $3, $4)"
        ))
        .bind(message.id)
        .bind(&message.ordering_key)
        .bind(&message.destination)
        .bind(&message.payload)
        .execute(&wal.pool)
        .await
        .unwrap();
    }
    let malformed = wal.enqueue_malformed("bad").await.unwrap();

    let destination = wal.deliver(wal.source(|_| {}).await, messages.len()).await;
    let arrived = arrivals(&destination);
    let sent = destination.sent();
    let whole = sent
        .iter()
        .find(|s| s.message.id == messages[0].id)
        .unwrap();
    assert!(
        whole.message.payload == big,
        "the large payload arrived cut or changed"
    );
    assert_order_per_key(&messages, &arrived);
    assert_none_of(&rolled_back, &arrived);
    let dead = eventually(DEADLINE, || async { wal.dead_letters().await.len() == 1 }).await;
    let letters = wal.dead_letters().await;
    assert!(dead, "dead letters: {letters:?}");
    assert_eq!(letters[0].0, malformed);
    assert!(letters[0].1.contains("destination"), "{letters:?}");
    assert_eq!(wal.rows_left().await, 0, "rows read from the log stayed");
    wal.assert_confirmed_to_the_end().await;
}

/// The table mode deletes rows in the background, and the slot is never
/// confirmed past a row still in the table: with deletes refused, the
/// messages are delivered and the slot stays below them; once deletes
/// work again, the next relay reads them again, sends them again (at
/// least once) and deletes them, and the slot reaches the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_never_confirmed_past_a_row_still_in_the_table() {
    let wal = wal_table("undeleted").await;
    let table = wal.outbox.config().table.clone().unwrap();
    sqlx::raw_sql(&format!(
        "CREATE OR REPLACE FUNCTION outbox_test.{table}_refuse() RETURNS trigger \
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'deletes refused'; END $$; \
         CREATE TRIGGER refuse BEFORE DELETE ON outbox_test.{table} \
             FOR EACH ROW EXECUTE FUNCTION outbox_test.{table}_refuse()"
    ))
    .execute(&wal.pool)
    .await
    .unwrap();
    let messages = numbered_messages("events", 4, 5);
    for message in &messages {
        wal.commit(std::slice::from_ref(message)).await;
    }

    wal.deliver(wal.source(|_| {}).await, messages.len()).await;
    let unread = eventually(DEADLINE, || async { wal.outbox.unread().await.is_ok() }).await;
    assert!(unread, "the slot stayed active");
    assert_eq!(
        wal.outbox.unread().await.unwrap(),
        messages.len() as u64,
        "the slot was confirmed past rows still in the table"
    );

    sqlx::query(&format!("DROP TRIGGER refuse ON outbox_test.{table}"))
        .execute(&wal.pool)
        .await
        .unwrap();
    let arrived = arrivals(&wal.deliver(wal.source(|_| {}).await, messages.len()).await);
    assert_order_per_key(&messages, &arrived);
    assert_eq!(wal.rows_left().await, 0, "rows stayed in the table");
    wal.assert_confirmed_to_the_end().await;
}

/// The reader runs on a thread of its own: an application whose runtime
/// is busy (here blocked outright, longer than half a lease) does not make
/// it drop what it holds and take the slot again, as its ticks would
/// otherwise arrive late. The walsender that serves it stays the same.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_application_runtime_does_not_cost_the_reader_its_slot() {
    let wal = wal("busy_runtime").await;
    let lease = Duration::from_secs(4);
    let source = wal.relay(lease).await;
    let monitor = source.monitor();
    assert!(eventually(DEADLINE, || async { monitor.is_caught_up() }).await);
    let walsender = || async {
        sqlx::query_scalar::<_, Option<i32>>(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&wal.outbox.config().slot)
        .fetch_one(&wal.pool)
        .await
        .unwrap()
    };
    let before = walsender().await;
    assert!(before.is_some(), "the reader holds the slot");

    // Blocks this runtime's only thread: none of its tasks runs meanwhile.
    std::thread::sleep(lease * 3 / 4);

    // Once the reader holds a message written after the block, any late
    // tick it had has been handled.
    wal.commit(&numbered_messages("events", 1, 1)).await;
    assert!(
        eventually(DEADLINE, || async { monitor.held().await == Some(1) }).await,
        "the message written after the block was not read"
    );
    assert_eq!(
        walsender().await,
        before,
        "the reader connected again after the application's runtime was busy"
    );
    drop(source);
}
