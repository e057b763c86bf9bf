//! outbox-postgres against a real PostgreSQL (`OUTBOX_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; `scripts/services.sh up` starts
//! one). Every test owns its table in the `outbox_test` schema.

use std::time::{Duration, Instant};

use outbox_core::memory::MemoryDestination;
use outbox_core::{Error, Incoming, Message, Metadata, OnDeadLetter, RelayConfig, Source};
use outbox_postgres::{
    AckMode, Operator, PostgresConfig, PostgresInbox, PostgresOutbox, PostgresSource, Receipt,
};
use outbox_testkit::{
    arrivals, assert_order_per_key, eventually, fast_relay_config, numbered_messages,
    relay_good_beside_bad, run_relay, table_name, InboxHarness, OpenWrites, OrderPlaced,
    SourceHarness, TableHarness, TableSetup,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

fn url() -> String {
    std::env::var("OUTBOX_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

async fn pool(size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url())
        .await
        .expect("PostgreSQL reachable at OUTBOX_POSTGRES_URL (run scripts/services.sh up)")
}

/// A fresh table named after the test.
async fn table(name: &str, tweak: impl FnOnce(&mut PostgresConfig)) -> (PostgresOutbox, PgPool) {
    let pool = pool(6).await;
    let mut config = PostgresConfig {
        schema: "outbox_test".to_string(),
        table: name.to_string(),
        ..PostgresConfig::default()
    };
    tweak(&mut config);
    sqlx::query("CREATE SCHEMA IF NOT EXISTS outbox_test")
        .execute(&pool)
        .await
        .ok();
    sqlx::query(&format!(
        "DROP TABLE IF EXISTS outbox_test.{name}, outbox_test.{name}_idle"
    ))
    .execute(&pool)
    .await
    .expect("drop old table");
    let outbox = PostgresOutbox::new(config, pool.clone()).expect("valid config");
    outbox.migrate().await.expect("migrate");
    (outbox, pool)
}

async fn commit(outbox: &PostgresOutbox, pool: &PgPool, messages: &[Message]) {
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_many(&mut tx, messages)
        .await
        .expect("enqueue");
    tx.commit().await.unwrap();
}

#[derive(Clone)]
struct PgTable {
    outbox: PostgresOutbox,
    pool: PgPool,
}

impl SourceHarness for PgTable {
    type Source = PostgresSource;

    async fn relay(&self, lease: Duration) -> PostgresSource {
        let config = PostgresConfig {
            lease,
            ..self.outbox.config().clone()
        };
        let outbox = PostgresOutbox::new(config, self.pool.clone()).unwrap();
        outbox.source().await.expect("source")
    }

    async fn parking_relay(&self, lease: Duration) -> PostgresSource {
        let config = PostgresConfig {
            lease,
            on_dead_letter: OnDeadLetter::Park,
            ..self.outbox.config().clone()
        };
        let outbox = PostgresOutbox::new(config, self.pool.clone()).unwrap();
        outbox.source().await.expect("source")
    }

    async fn budgeted_relay(&self, lease: Duration, batch_bytes: usize) -> PostgresSource {
        let config = PostgresConfig {
            lease,
            batch_bytes,
            ..self.outbox.config().clone()
        };
        PostgresOutbox::new(config, self.pool.clone())
            .unwrap()
            .source()
            .await
            .expect("source")
    }

    async fn enqueue(&self, messages: Vec<Message>) {
        commit(&self.outbox, &self.pool, &messages).await;
    }

    async fn enqueue_malformed(&self, key: &str) -> Option<Uuid> {
        let id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO outbox_test.{} (id, ordering_key, destination, payload, headers) \
             VALUES ($1, $2, 'events', 'x', '[1, 2]')",
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

    fn claims_end_with_the_relay(&self) -> bool {
        true
    }

    fn claims_take_lanes(&self) -> bool {
        self.outbox.config().lanes > 1
    }
}

impl OpenWrites for PgTable {
    type Open = sqlx::Transaction<'static, sqlx::Postgres>;

    async fn begin_and_enqueue(&self, messages: Vec<Message>) -> Self::Open {
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox
            .enqueue_many(&mut tx, &messages)
            .await
            .expect("enqueue");
        tx
    }

    async fn commit(&self, open: Self::Open) {
        open.commit().await.unwrap();
    }

    async fn ids_in_order(&self, key: &str) -> Vec<Uuid> {
        let sql = format!(
            "SELECT id FROM outbox_test.{} WHERE ordering_key = $1 ORDER BY seq",
            self.outbox.config().table
        );
        sqlx::query_scalar(&sql)
            .bind(key)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    async fn writers_waiting(&self) -> usize {
        let table = format!("%\"outbox_test\".\"{}\"%", self.outbox.config().table);
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE NOT l.granted AND a.query LIKE $1",
        )
        .bind(table)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        waiting as usize
    }
}

/// Same-key writers commit in enqueue order (the per-key advisory lock), by
/// the one-message statement and by the array statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_of_a_key_waits_for_the_first_to_commit() {
    let (outbox, pool) = table("writer_lock", |_| {}).await;
    outbox_testkit::second_writer_of_a_key_waits(&PgTable { outbox, pool }).await;
}

async fn conformance_table(scenario: &'static str) -> PgTable {
    let (outbox, pool) = table(&format!("conf_{scenario}"), |_| {}).await;
    PgTable { outbox, pool }
}

mod conformance {
    use super::*;
    outbox_testkit::source_conformance!(conformance_table);
}

/// A fresh outbox table set up as the scenario asks.
async fn table_with(scenario: &'static str, setup: TableSetup) -> PgTable {
    let (outbox, pool) = table(&table_name(scenario), |c| {
        c.ack_mode = setup.ack_mode;
        c.on_dead_letter = setup.on_dead_letter;
    })
    .await;
    PgTable { outbox, pool }
}

impl TableHarness for PgTable {
    fn operator(&self) -> &dyn Operator {
        &self.outbox
    }

    async fn write(&self, messages: Vec<Message>, commit: bool) {
        let open = self.begin_and_enqueue(messages).await;
        if commit {
            open.commit().await.unwrap();
        } else {
            open.rollback().await.unwrap();
        }
    }

    async fn write_event(&self, event: &OrderPlaced, metadata: &Metadata) -> Message {
        let mut tx = self.pool.begin().await.unwrap();
        let message = self
            .outbox
            .enqueue_event_with(&mut tx, "orders", event, metadata)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        message
    }

    async fn rows(&self) -> u64 {
        let sql = format!(
            "SELECT count(*) FROM outbox_test.{}",
            self.outbox.config().table
        );
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
struct PgInbox {
    inbox: PostgresInbox,
    pool: PgPool,
    effects: String,
}

/// A fresh inbox table, and an empty business table beside it.
async fn inbox_table(scenario: &'static str) -> PgInbox {
    let pool = pool(6).await;
    let name = format!("{}_inbox", table_name(scenario));
    let effects = format!("outbox_test.{name}_effects");
    let drop =
        format!("DROP TABLE IF EXISTS outbox_test.{name}, outbox_test.{name}_keys, {effects}");
    sqlx::query(&drop).execute(&pool).await.unwrap();
    let inbox = PostgresInbox::named("outbox_test", &name, pool.clone()).unwrap();
    inbox.migrate().await.unwrap();
    inbox.migrate().await.expect("migrate twice");
    let create =
        format!("CREATE TABLE {effects} (consumer text NOT NULL, message_id uuid NOT NULL)");
    sqlx::query(&create).execute(&pool).await.unwrap();
    PgInbox {
        inbox,
        pool,
        effects,
    }
}

impl InboxHarness for PgInbox {
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
            sqlx::query(&format!("INSERT INTO {} VALUES ($1, $2)", self.effects))
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
            "SELECT message_id FROM {} WHERE consumer = $1 ORDER BY message_id",
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

/// Relays listed as waiting for a NOTIFY on `idle_notify`.
async fn idle_relays(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_test.idle_notify_idle")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Writers notify only while a relay waits for it: with no relay idle a
/// commit sends nothing (PostgreSQL commits notifying transactions one at
/// a time), with one idle it wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_notify_only_while_a_relay_waits() {
    let (outbox, pool) = table("idle_notify", |_| {}).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("outbox_test_idle_notify").await.unwrap();
    commit(&outbox, &pool, &numbered_messages("orders", 1, 1)).await;
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(heard.is_err(), "a writer notified with no relay: {heard:?}");

    let destination = MemoryDestination::new();
    let config = RelayConfig {
        poll_interval_min: Duration::from_secs(10),
        poll_interval_max: Duration::from_secs(10),
        ..fast_relay_config()
    };
    let relay = run_relay(outbox.source().await.unwrap(), destination.clone(), config);
    assert!(destination.wait_for(1, Duration::from_secs(5)).await);
    let listed = eventually(Duration::from_secs(5), || async {
        idle_relays(&pool).await == 1
    })
    .await;
    assert!(listed, "the idle relay did not list itself");
    commit(&outbox, &pool, &numbered_messages("orders", 1, 1)).await;
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(heard.is_ok(), "no notification while a relay waits");
    assert!(
        destination.wait_for(2, Duration::from_secs(5)).await,
        "the relay was not woken"
    );
    relay.stop().await;
    let unlisted = eventually(Duration::from_secs(5), || async {
        idle_relays(&pool).await == 0
    })
    .await;
    assert!(
        unlisted,
        "a stopped relay is still listed: writers would notify for nobody"
    );
}

/// Writers of a database migrated by an earlier version (no `_idle`
/// table) are told to migrate, and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_on_an_unmigrated_table_is_told_to_migrate() {
    let (outbox, pool) = table("unmigrated", |_| {}).await;
    sqlx::query("DROP TABLE outbox_test.unmigrated_idle")
        .execute(&pool)
        .await
        .unwrap();
    for messages in [
        numbered_messages("orders", 1, 1),
        numbered_messages("orders", 2, 2),
    ] {
        let mut tx = pool.begin().await.unwrap();
        let err = outbox.enqueue_many(&mut tx, &messages).await.unwrap_err();
        assert!(
            err.to_string().contains("run PostgresOutbox::migrate"),
            "{err}"
        );
    }
    outbox.migrate().await.unwrap();
    commit(&outbox, &pool, &numbered_messages("orders", 1, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_an_idle_relay_without_waiting_for_a_poll() {
    let (outbox, pool) = table("notify", |_| {}).await;
    let destination = MemoryDestination::new();
    let config = RelayConfig {
        poll_interval_min: Duration::from_secs(10),
        poll_interval_max: Duration::from_secs(10),
        ..fast_relay_config()
    };
    let relay = run_relay(outbox.source().await.unwrap(), destination.clone(), config);
    let mut latencies = Vec::new();
    for n in 1..=5 {
        // Let the relay find the outbox empty and go to sleep for its poll.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        commit(&outbox, &pool, &numbered_messages("orders", 1, 1)).await;
        assert!(
            destination.wait_for(n, Duration::from_secs(5)).await,
            "message {n} not delivered"
        );
        latencies.push(started.elapsed());
    }
    relay.stop().await;
    latencies.sort();
    println!("commit to delivery with NOTIFY: {latencies:?}");
    assert!(
        latencies[0] < Duration::from_millis(50),
        "fastest wake-up took {:?}",
        latencies[0]
    );
    assert!(
        latencies[4] < Duration::from_secs(2),
        "a wake-up waited for the poll: {latencies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_waiting_rows_are_claimed_by_index_scan_in_milliseconds() {
    let (outbox, pool) = table("million", |c| c.notify = false).await;
    sqlx::query(
        "INSERT INTO outbox_test.million (id, ordering_key, destination, payload) \
         SELECT gen_random_uuid(), 'key-' || (g % 10000), 'orders', convert_to(repeat('x', 200), 'UTF8') \
         FROM generate_series(1, 1000000) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE outbox_test.million")
        .execute(&pool)
        .await
        .unwrap();
    let plan = outbox.explain_claim(1000).await.unwrap();
    println!("{plan}");
    assert!(
        plan.contains("Index Scan using million_waiting"),
        "claim is not an index scan:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "claim scans the table:\n{plan}");

    let source = outbox.source().await.unwrap();
    let mut timings = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let claimed = source.claim(1000).await.unwrap();
        timings.push(started.elapsed());
        assert_eq!(claimed.len(), 1000);
        source.ack(claimed.id(), &claimed).await.unwrap();
    }
    timings.sort();
    println!("claim of 1000 rows with 1,000,000 waiting: {timings:?}");
    assert!(
        timings[2] < Duration::from_millis(500),
        "median claim took {:?}",
        timings[2]
    );
    sqlx::query("DROP TABLE outbox_test.million")
        .execute(&pool)
        .await
        .unwrap();
}

/// Statistics taken by (auto)vacuum while few rows waited in a table of
/// many pages, then a backlog refilling the free space (the table keeps its
/// size, so PostgreSQL's estimate stays at the few rows): the claim still
/// walks the `waiting` index in `seq` order. (It read every waiting row
/// through the `key` index and sorted them instead, in each claim: the
/// sustained run with autovacuum on fell behind the writers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_keeps_its_index_scan_when_statistics_undercount_the_backlog() {
    let (outbox, pool) = table("stale_stats", |c| c.notify = false).await;
    let insert = |rows: i32| {
        format!(
            "INSERT INTO outbox_test.stale_stats (id, ordering_key, destination, payload) \
             SELECT gen_random_uuid(), 'key-' || (g % 1000), 'orders', convert_to(repeat('x', 200), 'UTF8') \
             FROM generate_series(1, {rows}) AS g"
        )
    };
    for statement in [
        insert(60_000),
        // The last rows stay, so that vacuum cannot cut the table short.
        "DELETE FROM outbox_test.stale_stats \
         WHERE seq <= (SELECT max(seq) - 100 FROM outbox_test.stale_stats)"
            .to_string(),
        "VACUUM ANALYZE outbox_test.stale_stats".to_string(),
        insert(50_000),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    let plan = outbox.explain_claim(500).await.unwrap();
    // The `waiting` index, or (when a concurrent test's open transaction
    // kept VACUUM from removing the deleted rows, as in one CI run) the
    // primary key: either walks the rows in `seq` order and stops at the
    // limit. What must not come back is a read of every waiting row and a
    // sort, checked below.
    assert!(
        plan.contains("Index Scan using stale_stats_waiting")
            || plan.contains("Index Scan using stale_stats_pkey"),
        "the claim does not walk the rows in seq order:\n{plan}"
    );
    for step in ["Sort", "Bitmap", "Seq Scan"] {
        assert!(
            !plan.contains(step),
            "the claim's plan has a {step}:\n{plan}"
        );
    }
    let source = outbox.source().await.unwrap();
    let claimed = source.claim(500).await.unwrap();
    assert_eq!(claimed.len(), 500);
    source.ack(claimed.id(), &claimed).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_dead_lettered_with_the_reason_and_others_flow() {
    let (outbox, pool) = table("malformed", |_| {}).await;
    let good = numbered_messages("orders", 3, 2);
    commit(&outbox, &pool, &good).await;
    let bad_headers = Uuid::now_v7();
    let no_destination = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_test.malformed (id, ordering_key, destination, payload, headers) VALUES \
         ($1, 'hand-1', 'orders', 'x', '[1, 2]'), ($2, 'hand-2', '', 'x', '{}')",
    )
    .bind(bad_headers)
    .bind(no_destination)
    .execute(&pool)
    .await
    .unwrap();
    let destination = MemoryDestination::new();
    let relay = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );
    assert!(destination.wait_for(good.len(), DEADLINE).await);
    let dead = eventually(DEADLINE, || async {
        outbox.count_dead_letters().await.unwrap() == 2
    })
    .await;
    relay.stop().await;
    assert!(dead, "malformed rows were not dead-lettered");
    let letters = outbox.dead_letters(10).await.unwrap();
    let reason = |id| letters.iter().find(|d| d.id == id).unwrap().error.clone();
    assert!(
        reason(bad_headers).contains("headers must be a JSON object"),
        "{}",
        reason(bad_headers)
    );
    assert!(
        reason(no_destination).contains("destination is empty"),
        "{}",
        reason(no_destination)
    );
    assert_order_per_key(&good, &arrivals(&destination));
}

#[tokio::test]
async fn bad_configuration_names_the_setting() {
    // A pool that never connects: the settings are refused before any use.
    let pool = sqlx::PgPool::connect_lazy("postgres://127.0.0.1:1/unused").unwrap();
    let err = PostgresOutbox::new(
        PostgresConfig {
            table: "outbox; DROP TABLE users".into(),
            ..PostgresConfig::default()
        },
        pool,
    )
    .unwrap_err();
    assert_eq!(err.setting, "table");
    assert!(err.to_string().contains("`table`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_leader_only_mode_one_relay_claims_and_a_standby_takes_over() {
    let (outbox, pool) = table("leader", |c| c.leader_only = true).await;
    let first = numbered_messages("orders", 10, 10);
    commit(&outbox, &pool, &first).await;
    let destination = MemoryDestination::new();
    let leader = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );
    assert!(
        destination.wait_for(first.len(), DEADLINE).await,
        "the leader did not relay"
    );
    let standby = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );

    let second = numbered_messages("orders", 10, 10);
    commit(&outbox, &pool, &second).await;
    assert!(
        destination
            .wait_for(first.len() + second.len(), DEADLINE)
            .await
    );
    let leader_counted = eventually(DEADLINE, || async {
        leader.stats.snapshot().counts.published == (first.len() + second.len()) as u64
    })
    .await;
    assert!(leader_counted, "the leader did not publish everything");
    assert_eq!(
        standby.stats.snapshot().counts.published,
        0,
        "a standby claimed"
    );

    // The leader goes away (its source, and with it the lock's connection, is dropped).
    leader.stop().await;
    let third = numbered_messages("orders", 10, 10);
    commit(&outbox, &pool, &third).await;
    let total = first.len() + second.len() + third.len();
    assert!(
        destination.wait_for_distinct(total, DEADLINE).await,
        "the standby did not take over"
    );
    // The counter moves once the acknowledgement is recorded, just after
    // the destination saw the messages.
    let counted = eventually(DEADLINE, || async {
        standby.stats.snapshot().counts.published == third.len() as u64
    })
    .await;
    assert!(
        counted,
        "standby published {}",
        standby.stats.snapshot().counts.published
    );
    standby.stop().await;
    let all: Vec<Message> = first.into_iter().chain(second).chain(third).collect();
    assert_order_per_key(&all, &arrivals(&destination));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_utf8_is_refused_by_the_database() {
    let (outbox, pool) = table("not_utf8", |_| {}).await;
    let err = sqlx::query(
        "INSERT INTO outbox_test.not_utf8 (id, ordering_key, destination, payload) \
         VALUES ($1, convert_from('\\xff'::bytea, 'UTF8'), 'orders', 'x')",
    )
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .expect_err("PostgreSQL stored a key that is not UTF-8");
    assert!(err.to_string().contains("invalid byte sequence"), "{err}");
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
}

/// The database refuses the acknowledgement (a trigger raising on DELETE,
/// as a full disk or a revoked grant would): the published messages stay
/// in the outbox and go out again, the relay keeps running, and once the
/// database accepts again everything is acknowledged, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_on_acknowledge_redelivers_and_loses_nothing() {
    let (outbox, pool) = table("ack_error", |_| {}).await;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS outbox_test.ack_error_refusing (refusing BOOLEAN); \
         DELETE FROM outbox_test.ack_error_refusing; \
         INSERT INTO outbox_test.ack_error_refusing VALUES (true); \
         CREATE OR REPLACE FUNCTION outbox_test.ack_error_refuse() RETURNS trigger \
         LANGUAGE plpgsql AS $$ BEGIN \
           IF EXISTS (SELECT 1 FROM outbox_test.ack_error_refusing) THEN \
             RAISE EXCEPTION 'acknowledgement refused by the test'; \
           END IF; RETURN OLD; END $$; \
         CREATE TRIGGER refuse BEFORE DELETE ON outbox_test.ack_error \
           FOR EACH ROW EXECUTE FUNCTION outbox_test.ack_error_refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let messages = numbered_messages("orders", 4, 5);
    commit(&outbox, &pool, &messages).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );
    // Published, acknowledgement refused, published again.
    let again = destination.wait_for(messages.len() * 2, DEADLINE).await;
    let waiting = outbox.backlog().await.unwrap().waiting;
    sqlx::query("DELETE FROM outbox_test.ack_error_refusing")
        .execute(&pool)
        .await
        .unwrap();
    let drained = eventually(DEADLINE, || async {
        outbox.backlog().await.unwrap().waiting == 0
    })
    .await;
    relay.stop().await;
    assert!(
        again,
        "refused acknowledgements were not followed by redelivery"
    );
    assert_eq!(
        waiting,
        messages.len() as u64,
        "a row was removed unacknowledged"
    );
    assert!(
        drained,
        "the outbox did not drain once the database accepted"
    );
    let duplicates = assert_order_per_key(&messages, &arrivals(&destination));
    assert!(duplicates >= messages.len(), "{duplicates} duplicates");
    assert_eq!(outbox.count_dead_letters().await.unwrap(), 0);
}

/// PostgreSQL may switch a prepared statement to a generic plan after five
/// executions, and a generic claim planned on a nearly empty table scanned
/// the whole table once per candidate: with 1,000,000 rows then waiting,
/// one claim took 170 - 175 s from `psql` instead of about 10 ms (see
/// BENCHMARKS). The claim is planned for its parameters every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_is_never_run_on_a_generic_plan() {
    let (outbox, _) = table("custom_plans", |config| config.notify = false).await;
    // One connection, so the prepared statements below are the source's.
    let pool = pool(1).await;
    let outbox = PostgresOutbox::new(outbox.config().clone(), pool.clone()).unwrap();
    let source = outbox.source().await.unwrap();
    commit(&outbox, &pool, &numbered_messages("orders", 5, 2)).await;
    for _ in 0..12 {
        let claimed = source.claim(1000).await.unwrap();
        assert_eq!(claimed.len(), 10);
        source.release(claimed.id(), &claimed).await.unwrap();
    }
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(generic_plans), 0)::int8, coalesce(sum(custom_plans), 0)::int8 \
         FROM pg_prepared_statements WHERE statement LIKE '%FOR UPDATE OF o SKIP LOCKED%' \
           AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        custom >= 12,
        "the claim ran {custom} times on a custom plan"
    );
    assert_eq!(
        generic, 0,
        "the claim ran {generic} times on a generic plan"
    );
}

/// The same for the periodic cleanup of mark-done rows: a generic plan made
/// while few rows were done would scan the table for each batch once many
/// are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_is_never_run_on_a_generic_plan() {
    let (outbox, _) = table("cleanup_plans", |config| {
        config.notify = false;
        config.ack_mode = AckMode::MarkDone;
    })
    .await;
    // One connection, so the prepared statements below are cleanup's.
    let pool = pool(1).await;
    let outbox = PostgresOutbox::new(outbox.config().clone(), pool.clone()).unwrap();
    for _ in 0..12 {
        outbox
            .cleanup(Duration::from_secs(3600), 100)
            .await
            .unwrap();
    }
    let generic: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(generic_plans), 0)::int8 FROM pg_prepared_statements \
         WHERE statement LIKE '%done_at < now()%' \
           AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(generic, 0, "cleanup ran {generic} times on a generic plan");
}

/// A table whose name contains the default one is created under exactly
/// that name, with its indexes, and its messages are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_named_after_the_default_one_is_migrated_as_named() {
    let (outbox, pool) = table("outbox_messages_v2", |_| {}).await;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes \
         WHERE schemaname = 'outbox_test' AND tablename = 'outbox_messages_v2' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        indexes.contains(&"outbox_messages_v2_waiting".to_string()),
        "{indexes:?}"
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

/// Rows whose columns cannot be read as a message (a `created_at` of
/// `infinity`, which sqlx's time decoding panics on, or text that is not
/// UTF-8 in a `SQL_ASCII` database) are dead-lettered with the reason; the
/// relay goes on and delivers the good rows beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_cannot_be_decoded_are_dead_lettered_and_never_stop_the_relay() {
    let (outbox, pool) = table("undecodable", |_| {}).await;
    let infinite = Uuid::now_v7();
    let before_time = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_test.undecodable (id, ordering_key, destination, payload, created_at) VALUES \
         ($1, 'hand-1', 'orders', 'x', 'infinity'), ($2, 'hand-2', 'orders', 'x', '-infinity')",
    )
    .bind(infinite)
    .bind(before_time)
    .execute(&pool)
    .await
    .unwrap();
    let good = numbered_messages("orders", 3, 2);
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
        "the good rows beside undecodable ones were not delivered"
    );
    assert!(dead, "the undecodable rows were not dead-lettered");
    let letters = outbox.dead_letters(10).await.unwrap();
    for letter in &letters {
        assert!(letter.error.contains("created_at"), "{}", letter.error);
        assert!(letter.message.is_none());
    }
    assert_order_per_key(&good, &arrivals(&destination));
}

/// In a `SQL_ASCII` database PostgreSQL stores any bytes as text; a row
/// whose destination is not UTF-8 is dead-lettered, and the others flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_in_a_sql_ascii_database_is_dead_lettered() {
    let admin = pool(1).await;
    sqlx::query("DROP DATABASE IF EXISTS outbox_sql_ascii WITH (FORCE)")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE outbox_sql_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
        .execute(&admin)
        .await
        .unwrap();
    let url = format!("{}/outbox_sql_ascii", url().rsplit_once('/').unwrap().0);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let outbox = PostgresOutbox::new(PostgresConfig::default(), pool.clone()).unwrap();
    outbox.migrate().await.unwrap();
    let bad = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox_messages (id, ordering_key, destination, payload) \
         VALUES ($1, 'hand', convert_from('\\x6f72ff'::bytea, 'SQL_ASCII'), 'x')",
    )
    .bind(bad)
    .execute(&pool)
    .await
    .unwrap();
    let good = numbered_messages("orders", 2, 2);
    commit(&outbox, &pool, &good).await;
    let (_, delivered, dead) = relay_good_beside_bad(
        outbox.source().await.unwrap(),
        fast_relay_config(),
        good.len(),
        || async { outbox.count_dead_letters().await.unwrap() == 1 },
    )
    .await;
    assert!(
        delivered,
        "the good rows beside a row that is not UTF-8 were not delivered"
    );
    assert!(dead, "the row that is not UTF-8 was not dead-lettered");
    let letters = outbox.dead_letters(10).await.unwrap();
    assert_eq!(letters[0].id, bad);
    assert!(
        letters[0].error.contains("destination"),
        "{}",
        letters[0].error
    );
    pool.close().await;
}

/// The LISTEN connection is read all the time, not only when a relay is
/// idle: notifications a busy relay never waited for do not pile up in
/// PostgreSQL's notification queue (when that queue is full PostgreSQL
/// fails the application's commits), and they wake an idle relay once,
/// not once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_drained_while_the_relay_is_busy_and_wake_it_once() {
    let (outbox, pool) = table("listen_drained", |_| {}).await;
    let source = outbox.source().await.unwrap();
    // Two empty claims list the relay as waiting (see `idle.rs`): only
    // then does `wait_for_work` wait for a notification.
    for _ in 0..2 {
        assert!(source.claim(10).await.unwrap().is_empty());
    }
    // 40 MB of notifications in one commit: more than the LISTEN socket's
    // buffers hold, so what is not read stays in the server's queue.
    sqlx::query(
        "SELECT pg_notify('outbox_test_listen_drained', n::text || repeat('x', 7900)) \
         FROM generate_series(1, 5000) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();
    let usage = || async {
        sqlx::query_scalar::<_, f64>("SELECT pg_notification_queue_usage()")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let drained = eventually(Duration::from_secs(20), || async { usage().await == 0.0 }).await;
    assert!(
        drained,
        "the notification queue stayed {} full while the relay was busy",
        usage().await
    );
    tokio::time::timeout(Duration::from_secs(5), source.wait_for_work())
        .await
        .expect("the notifications woke nothing");
    // An empty server queue means the notifications left for the client's
    // socket, not that the reader has read them all: one that it reads after
    // a wake-up was taken stores one more. They coalesce, so wake-ups come
    // no faster than the relay takes them, never one per notification. On
    // a quiet machine the reader is done in a few; on a loaded 2-core CI
    // run it took 189 wake-ups (within 10 s) to read what the socket held, hence
    // the bound of one wake-up per ten notifications.
    let mut wakes = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::timeout(Duration::from_millis(300), source.wait_for_work())
        .await
        .is_ok()
    {
        wakes += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "5,000 notifications kept waking the relay: {wakes} wake-ups so far"
        );
    }
    println!("5,000 notifications woke the relay {wakes} times");
    assert!(
        wakes <= 500,
        "5,000 notifications woke the relay {wakes} times: they did not coalesce"
    );
}

/// Services starting together, each migrating its own outbox table and the
/// same inbox into a schema that does not exist yet: every migration
/// succeeds. (`CREATE SCHEMA IF NOT EXISTS` and `CREATE TABLE IF NOT EXISTS`
/// race in PostgreSQL: the loser fails with a unique violation.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_racing_into_a_new_schema_all_succeed() {
    let pool = pool(16).await;
    for round in 0..5 {
        let schema = format!("outbox_race_{round}");
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
        let mut migrations = Vec::new();
        for n in 0..6 {
            let config = PostgresConfig {
                schema: schema.clone(),
                table: format!("outbox_{n}"),
                ..PostgresConfig::default()
            };
            let outbox = PostgresOutbox::new(config, pool.clone()).unwrap();
            migrations.push(tokio::spawn(async move { outbox.migrate().await }));
            let inbox = PostgresInbox::named(&schema, "inbox", pool.clone()).unwrap();
            migrations.push(tokio::spawn(async move { inbox.migrate().await }));
        }
        for migration in migrations {
            let result = migration.await.unwrap();
            assert!(
                result.is_ok(),
                "round {round}: {:?}",
                result.unwrap_err().report()
            );
        }
    }
}

async fn lanes_table(scenario: &'static str) -> PgTable {
    let (outbox, pool) = table(&format!("lane_{scenario}"), |c| c.lanes = 4).await;
    PgTable { outbox, pool }
}

/// The source's scenarios again, with four lanes of keys.
mod lanes_conformance {
    use super::*;
    outbox_testkit::source_conformance!(lanes_table);
}

/// The lanes of the claimed messages' keys, as the lane index computes them.
async fn lanes_of(pool: &PgPool, messages: &[Message], lanes: u16) -> Vec<i32> {
    let keys: Vec<&str> = messages.iter().map(|m| m.ordering_key.as_str()).collect();
    sqlx::query_scalar(&format!(
        "SELECT DISTINCT (hashtext(k) & 2147483647) % {lanes} FROM unnest($1::text[]) AS k ORDER BY 1"
    ))
    .bind(keys)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// With lanes, claims open at once each take the rows of a lane of their
/// own (no claim steps over another's rows) while a lane fills their batch;
/// a claim when every lane with work is held, and one that its lane leaves
/// under half full, takes the rows of the other lanes no batch holds; one
/// relay alone delivers every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_at_once_take_different_lanes_and_one_relay_delivers_them_all() {
    let (outbox, pool) = table("lanes_apart", |c| {
        c.lanes = 4;
        c.notify = false;
    })
    .await;
    // About 100 keys, of one message each, per lane.
    let messages = numbered_messages("orders", 400, 1);
    commit(&outbox, &pool, &messages).await;
    let first = outbox.source().await.unwrap();
    let second = outbox.source().await.unwrap();
    let mut claims = Vec::new();
    let mut seen = Vec::new();
    for source in [&first, &second, &first, &second] {
        let claim = source.claim(50).await.unwrap();
        assert_eq!(claim.len(), 50);
        let lanes = lanes_of(&pool, &claim, 4).await;
        assert_eq!(lanes.len(), 1, "a claim took the rows of lanes {lanes:?}");
        assert!(
            !seen.contains(&lanes[0]),
            "two open claims took lane {}",
            lanes[0]
        );
        seen.push(lanes[0]);
        claims.push((source, claim));
    }
    // Every lane held: the rows no batch holds, from any lane.
    let fifth = first.claim(50).await.unwrap();
    assert_eq!(fifth.len(), 50, "the rows no batch holds were not claimed");
    assert!(lanes_of(&pool, &fifth, 4).await.len() > 1);
    claims.push((&first, fifth));
    let mut delivered: Vec<Uuid> = Vec::new();
    for (source, claim) in claims {
        delivered.extend(claim.iter().map(|m| m.id));
        source.ack(claim.id(), &claim).await.unwrap();
    }
    // One relay alone: a lane, then the rest.
    loop {
        let claim = first.claim(1000).await.unwrap();
        if claim.is_empty() {
            break;
        }
        delivered.extend(claim.iter().map(|m| m.id));
        first.ack(claim.id(), &claim).await.unwrap();
    }
    delivered.sort_unstable();
    let mut written: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    written.sort_unstable();
    assert_eq!(delivered, written, "every message, each once");
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
}

/// A claim that gives rows back (here: past its byte budget) rolls back to
/// its savepoint and keeps its lane: the lane's lock is taken before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_gives_rows_back_keeps_its_lane() {
    let (outbox, pool) = table("lanes_kept", |c| {
        c.lanes = 2;
        c.notify = false;
        c.batch_bytes = 1024;
    })
    .await;
    let messages: Vec<Message> = (0..200)
        .map(|key| {
            Message::builder("orders", format!("key-{key}"))
                .payload(vec![b'x'; 600])
                .build()
                .unwrap()
        })
        .collect();
    commit(&outbox, &pool, &messages).await;
    let first = outbox.source().await.unwrap();
    let held = first.claim(50).await.unwrap();
    assert_eq!(held.len(), 1, "the budget holds one row of 600 bytes");
    let second = outbox.source().await.unwrap();
    let next = second.claim(50).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_ne!(
        lanes_of(&pool, &held, 2).await,
        lanes_of(&pool, &next, 2).await,
        "the second claim took the lane the first gave rows back in"
    );
}

/// A relay configured with a lane count the table was not migrated for
/// stops at its start and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_lanes_the_table_was_not_migrated_for_is_refused_at_start() {
    let (outbox, pool) = table("lanes_unmigrated", |c| c.lanes = 4).await;
    let config = PostgresConfig {
        lanes: 8,
        ..outbox.config().clone()
    };
    let err = PostgresOutbox::new(config, pool)
        .unwrap()
        .source()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lanes = 8") && err.contains("lanes_unmigrated_l8") && err.contains("migrate"),
        "{err}"
    );
}

/// A claim of one lane walks that lane's part of the lane index in `seq`
/// order and stops at the limit: no other index, no sort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lanes_the_claim_walks_its_lane_in_the_lane_index() {
    let (outbox, pool) = table("lanes_plan", |c| {
        c.lanes = 16;
        c.notify = false;
    })
    .await;
    sqlx::query(
        "INSERT INTO outbox_test.lanes_plan (id, ordering_key, destination, payload) \
         SELECT gen_random_uuid(), 'key-' || (g % 1000), 'orders', convert_to(repeat('x', 200), 'UTF8') \
         FROM generate_series(1, 50000) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE outbox_test.lanes_plan")
        .execute(&pool)
        .await
        .unwrap();
    let plan = outbox.explain_claim(500).await.unwrap();
    assert!(
        plan.contains("Index Scan using lanes_plan_l16"),
        "the claim does not walk the lane index:\n{plan}"
    );
    for step in ["Sort", "Bitmap", "Seq Scan"] {
        assert!(
            !plan.contains(step),
            "the claim's plan has a {step}:\n{plan}"
        );
    }
    let source = outbox.source().await.unwrap();
    let claim = source.claim(500).await.unwrap();
    assert_eq!(claim.len(), 500);
    assert_eq!(lanes_of(&pool, &claim, 16).await.len(), 1);
    source.ack(claim.id(), &claim).await.unwrap();
}
