//! outbox-mysql against a real MariaDB or MySQL (`OUTBOX_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`). Every test owns its table.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::memory::MemoryDestination;
use outbox_core::{Error, Incoming, Message, Metadata, OnDeadLetter, Source};
use outbox_mysql::{MysqlConfig, MysqlInbox, MysqlOutbox, MysqlSource, Operator, Receipt};
use outbox_testkit::{
    arrivals, assert_order_per_key, eventually, fast_relay_config, numbered_messages,
    relay_good_beside_bad, run_relay, table_name, InboxHarness, OpenWrites, OrderPlaced,
    SourceHarness, TableHarness, TableSetup,
};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlPool};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(60);

async fn table(name: &str) -> (MysqlOutbox, MySqlPool) {
    let url = std::env::var("OUTBOX_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let pool = MySqlPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .expect("MariaDB reachable at OUTBOX_MYSQL_URL (run scripts/services.sh up)");
    for suffix in ["", "_keys"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS `{name}{suffix}`"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let outbox = MysqlOutbox::new(
        MysqlConfig {
            table: name.into(),
            ..MysqlConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.expect("migrate");
    (outbox, pool)
}

async fn commit(outbox: &MysqlOutbox, pool: &MySqlPool, messages: &[Message]) {
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_many(&mut tx, messages)
        .await
        .expect("enqueue");
    tx.commit().await.unwrap();
    outbox.notify_committed();
}

#[derive(Clone)]
struct MyTable {
    outbox: MysqlOutbox,
    pool: MySqlPool,
}

impl SourceHarness for MyTable {
    type Source = MysqlSource;

    async fn relay(&self, lease: Duration) -> MysqlSource {
        let config = MysqlConfig {
            lease,
            ..self.outbox.config().clone()
        };
        MysqlOutbox::new(config, self.pool.clone())
            .unwrap()
            .source()
            .await
            .unwrap()
    }

    async fn parking_relay(&self, lease: Duration) -> MysqlSource {
        let config = MysqlConfig {
            lease,
            on_dead_letter: OnDeadLetter::Park,
            ..self.outbox.config().clone()
        };
        MysqlOutbox::new(config, self.pool.clone())
            .unwrap()
            .source()
            .await
            .unwrap()
    }

    async fn budgeted_relay(&self, lease: Duration, batch_bytes: usize) -> MysqlSource {
        let config = MysqlConfig {
            lease,
            batch_bytes,
            ..self.outbox.config().clone()
        };
        MysqlOutbox::new(config, self.pool.clone())
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
            "INSERT INTO `{}` (id, ordering_key, destination, payload, headers, created_at, next_attempt_at) \
             VALUES (?, ?, 'events', 'x', 'not json', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
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
}

impl OpenWrites for MyTable {
    type Open = sqlx::Transaction<'static, sqlx::MySql>;

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
            "SELECT id FROM `{}` WHERE ordering_key = ? ORDER BY seq",
            self.outbox.config().table
        );
        sqlx::query_scalar(&sql)
            .bind(key)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Writers in the middle of locking a key's row, by a statement on the
    /// keys table or by an insert whose trigger does (the process list then
    /// shows the trigger's statement): only a blocked one stays there
    /// (MariaDB 10.11's `INNODB_TRX` did not list one blocked in a
    /// prepared statement).
    async fn writers_waiting(&self) -> usize {
        let keys = format!("%{}_keys%", self.outbox.config().table);
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.PROCESSLIST \
             WHERE id <> CONNECTION_ID() AND info LIKE ?",
        )
        .bind(keys)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        waiting as usize
    }
}

/// Same-key writers commit in enqueue order (a second writer waits on the
/// key's row in the keys table), with one message or several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_of_a_key_waits_for_the_first_to_commit() {
    let (outbox, pool) = table("writer_lock").await;
    outbox_testkit::second_writer_of_a_key_waits(&MyTable { outbox, pool }).await;
}

/// A table migrated before the key-lock trigger (or on a server that
/// refused it): writers lock their keys themselves, and same-key writers
/// still commit in enqueue order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_trigger_writers_lock_their_keys_themselves() {
    let (_, pool) = table("no_trigger_writers").await;
    sqlx::query("DROP TRIGGER no_trigger_writers_keylock")
        .execute(&pool)
        .await
        .unwrap();
    let config = MysqlConfig {
        table: "no_trigger_writers".into(),
        ..MysqlConfig::default()
    };
    let outbox = MysqlOutbox::new(config, pool.clone()).unwrap();
    outbox_testkit::second_writer_of_a_key_waits(&MyTable { outbox, pool }).await;
}

/// A user without the TRIGGER privilege (or a server with binary logging
/// and no SUPER) migrates all the same: the server refuses the key-lock
/// trigger, `migrate` says so and goes on, and writers lock their keys
/// themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_without_the_trigger_privilege_leaves_writers_locking_keys() {
    let (_, root) = table("no_trigger_privilege").await;
    sqlx::query("DROP TABLE no_trigger_privilege, no_trigger_privilege_keys")
        .execute(&root)
        .await
        .unwrap();
    let database: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&root)
        .await
        .unwrap();
    for statement in [
        "CREATE USER IF NOT EXISTS 'outbox_no_trigger'@'%' IDENTIFIED BY 'no-trigger'".to_string(),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER \
             ON `{database}`.* TO 'outbox_no_trigger'@'%'"
        ),
    ] {
        sqlx::query(&statement).execute(&root).await.unwrap();
    }
    let url = std::env::var("OUTBOX_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let options = sqlx::mysql::MySqlConnectOptions::from_str(&url)
        .unwrap()
        .username("outbox_no_trigger")
        .password("no-trigger");
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let config = MysqlConfig {
        table: "no_trigger_privilege".into(),
        ..MysqlConfig::default()
    };
    let outbox = MysqlOutbox::new(config, pool.clone()).unwrap();
    outbox
        .migrate()
        .await
        .expect("migrate goes on without the trigger");
    let triggers: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TRIGGERS \
         WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'no_trigger_privilege'",
    )
    .fetch_one(&root)
    .await
    .unwrap();
    assert_eq!(triggers, 0);
    outbox_testkit::second_writer_of_a_key_waits(&MyTable { outbox, pool }).await;
}

/// A writer that inserts rows with plain SQL, knowing nothing of the keys
/// table (another service, another language), keeps a key's order too: the
/// schema's trigger locks the key on its insert, so it waits for an open
/// transaction holding the key and takes its `seq` after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sql_writer_waits_for_the_key_like_the_outbox_writer() {
    let (outbox, pool) = table("plain_sql_writer").await;
    let harness = MyTable {
        outbox,
        pool: pool.clone(),
    };
    let first = message_of("contested");
    let open = harness.begin_and_enqueue(vec![first.clone()]).await;
    let second = Uuid::now_v7();
    let writer = tokio::spawn({
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO plain_sql_writer (id, ordering_key, destination, payload, headers, \
                 created_at, next_attempt_at) \
                 VALUES (?, 'contested', 'events', 'x', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
            )
            .bind(second)
            .execute(&pool)
            .await
            .unwrap();
        }
    });
    let pending = &writer;
    let harness_ref = &harness;
    assert!(
        eventually(DEADLINE, || async move {
            pending.is_finished() || harness_ref.writers_waiting().await == 1
        })
        .await
            && !writer.is_finished(),
        "the plain SQL writer did not wait for the key's open transaction"
    );
    harness.commit(open).await;
    tokio::time::timeout(DEADLINE, writer)
        .await
        .expect("the plain SQL writer went on after the first committed")
        .unwrap();
    assert_eq!(
        harness.ids_in_order("contested").await,
        vec![first.id, second]
    );
}

async fn conformance_table(scenario: &'static str) -> MyTable {
    let (outbox, pool) = table(&format!("conf_{scenario}")).await;
    MyTable { outbox, pool }
}

mod conformance {
    use super::*;
    outbox_testkit::source_conformance!(conformance_table);
}

/// A fresh outbox table set up as the scenario asks.
async fn table_with(scenario: &'static str, setup: TableSetup) -> MyTable {
    let (outbox, pool) = table(&table_name(scenario)).await;
    let config = MysqlConfig {
        ack_mode: setup.ack_mode,
        on_dead_letter: setup.on_dead_letter,
        ..outbox.config().clone()
    };
    let outbox = MysqlOutbox::new(config, pool.clone()).unwrap();
    MyTable { outbox, pool }
}

impl TableHarness for MyTable {
    fn operator(&self) -> &dyn Operator {
        &self.outbox
    }

    async fn write(&self, messages: Vec<Message>, commit: bool) {
        let open = self.begin_and_enqueue(messages).await;
        if commit {
            open.commit().await.unwrap();
            self.outbox.notify_committed();
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
        self.outbox.notify_committed();
        message
    }

    async fn rows(&self) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM `{}`", self.outbox.config().table);
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
struct MyInbox {
    inbox: MysqlInbox,
    pool: MySqlPool,
    effects: String,
}

/// A fresh inbox table, and an empty business table beside it.
async fn inbox_table(scenario: &'static str) -> MyInbox {
    let (_, pool) = table(&table_name(scenario)).await;
    let name = format!("{}_inbox", table_name(scenario));
    let effects = format!("`{name}_effects`");
    for statement in [
        format!("DROP TABLE IF EXISTS `{name}`, `{name}_keys`, {effects}"),
        format!(
            "CREATE TABLE {effects} (consumer VARCHAR(255) NOT NULL, message_id BINARY(16) NOT NULL) \
             ENGINE = InnoDB"
        ),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    let inbox = MysqlInbox::named(&name, pool.clone()).unwrap();
    inbox.migrate().await.unwrap();
    inbox.migrate().await.expect("migrate twice");
    MyInbox {
        inbox,
        pool,
        effects,
    }
}

impl InboxHarness for MyInbox {
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
            sqlx::query(&format!("INSERT INTO {} VALUES (?, ?)", self.effects))
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
            "SELECT message_id FROM {} WHERE consumer = ? ORDER BY message_id",
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
    let (outbox, pool) = table("malformed").await;
    let good = numbered_messages("orders", 2, 2);
    commit(&outbox, &pool, &good).await;
    let bad = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO malformed (id, ordering_key, destination, payload, headers, created_at, next_attempt_at) \
         VALUES (?, 'hand', 'orders', 'x', 'not json', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .bind(bad)
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
    assert!(
        eventually(DEADLINE, || async {
            outbox.count_dead_letters().await.unwrap() == 1
        })
        .await
    );
    relay.stop().await;
    let letters = outbox.dead_letters(10).await.unwrap();
    assert_eq!(letters[0].id, bad);
    assert!(
        letters[0].error.contains("headers are not JSON"),
        "{}",
        letters[0].error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_waiting_rows_are_claimed_by_index_range_scan() {
    let (outbox, pool) = table("million").await;
    sqlx::query(
        "INSERT INTO million (id, ordering_key, destination, payload, headers, created_at, next_attempt_at) \
         SELECT UNHEX(REPLACE(UUID(), '-', '')), CONCAT('key-', seq % 10000), 'orders', REPEAT('x', 200), '{}', \
                UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) \
         FROM seq_1_to_1000000",
    )
    .execute(&pool)
    .await
    .expect("fill (MariaDB's sequence engine)");
    sqlx::query("ANALYZE TABLE million")
        .execute(&pool)
        .await
        .unwrap();
    let plan = outbox.explain_claim(1000).await.unwrap();
    println!("{plan}");
    let outer = plan.lines().next().unwrap();
    assert!(
        outer.contains("type=range") || outer.contains("type=ref"),
        "claim is not an index scan:\n{plan}"
    );
    assert!(
        outer.contains("million_waiting"),
        "claim does not use the waiting index:\n{plan}"
    );
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
        timings[2] < Duration::from_secs(1),
        "median claim took {:?}",
        timings[2]
    );
    sqlx::query("DROP TABLE million")
        .execute(&pool)
        .await
        .unwrap();
}

/// Many rows waiting for their retry before a claim's candidates: the
/// look-back finds them, so the keys behind them stay behind and the others
/// are claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_behind_many_retrying_rows_leaves_only_their_keys_behind() {
    let (outbox, pool) = table("behind_retries").await;
    let message = |key: String| Message::builder("orders", key).build().unwrap();
    let heads: Vec<Message> = (0..200).map(|k| message(format!("key-{k}"))).collect();
    commit(&outbox, &pool, &heads).await;
    sqlx::query(
        "UPDATE behind_retries SET attempts = 1, \
         next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR",
    )
    .execute(&pool)
    .await
    .unwrap();
    let later: Vec<Message> = (0..5)
        .flat_map(|k| [message(format!("key-{k}")), message(format!("free-{k}"))])
        .collect();
    commit(&outbox, &pool, &later).await;

    let source = outbox.source().await.unwrap();
    let claimed = source.claim(10).await.unwrap();
    source.release(claimed.id(), &claimed).await.unwrap();

    let mut keys: Vec<&str> = claimed.iter().map(|m| m.ordering_key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["free-0", "free-1", "free-2", "free-3", "free-4"]);
}

/// A table as the first migration left it (the `waiting` index without the
/// key, the `key` index without `attempts`, the keys table in the server's
/// collation) is upgraded in place by `migrate`, run twice as relay starts
/// do, and keeps its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_upgrades_a_table_of_the_first_schema_in_place() {
    let (outbox, pool) = table("upgraded").await;
    sqlx::query(
        "ALTER TABLE upgraded DROP INDEX upgraded_waiting, DROP INDEX upgraded_key, \
         ADD INDEX upgraded_waiting (done_at, dead_at, seq), \
         ADD INDEX upgraded_key (ordering_key, seq)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE upgraded_keys MODIFY ordering_key VARCHAR(255) NOT NULL")
        .execute(&pool)
        .await
        .unwrap();
    let key_type = || {
        sqlx::query_scalar::<_, String>(
            "SELECT CAST(data_type AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = 'upgraded_keys' \
               AND column_name = 'ordering_key'",
        )
        .fetch_one(&pool)
    };
    assert_eq!(key_type().await.unwrap(), "varchar");
    let columns = |index: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT column_name FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND table_name = 'upgraded' \
                   AND index_name = ? ORDER BY seq_in_index",
            )
            .bind(index)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        columns("upgraded_waiting").await,
        ["done_at", "dead_at", "seq"]
    );
    assert_eq!(columns("upgraded_key").await, ["ordering_key", "seq"]);
    let messages = numbered_messages("orders", 5, 4);
    commit(&outbox, &pool, &messages).await;

    outbox.migrate().await.expect("upgrade");
    outbox.migrate().await.expect("migrate again");

    assert_eq!(
        columns("upgraded_waiting").await,
        ["done_at", "dead_at", "seq", "ordering_key"]
    );
    assert_eq!(
        columns("upgraded_key").await,
        ["ordering_key", "attempts", "seq"]
    );
    assert_eq!(key_type().await.unwrap(), "varbinary");
    let destination = MemoryDestination::new();
    let relay = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );
    assert!(destination.wait_for(messages.len(), DEADLINE).await);
    relay.stop().await;
    assert_order_per_key(&messages, &arrivals(&destination));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_leader_only_mode_one_relay_claims_and_a_standby_takes_over() {
    let (outbox, pool) = table("leader").await;
    let outbox = MysqlOutbox::new(
        MysqlConfig {
            leader_only: true,
            ..outbox.config().clone()
        },
        pool.clone(),
    )
    .unwrap();
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

    leader.stop().await;
    let third = numbered_messages("orders", 10, 10);
    commit(&outbox, &pool, &third).await;
    let counted = eventually(DEADLINE, || async {
        standby.stats.snapshot().counts.published == third.len() as u64
    })
    .await;
    let published = standby.stats.snapshot().counts.published;
    standby.stop().await;
    assert!(counted, "the standby did not take over: {published}");
    let all: Vec<Message> = first.into_iter().chain(second).chain(third).collect();
    assert_order_per_key(&all, &arrivals(&destination));
}

/// Relays starting together on one table migrate one after the other: a
/// `migrate` waits while another holds the table's migration lock, and
/// goes on once it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_waits_for_a_migration_of_the_same_table() {
    let (outbox, pool) = table("migrate_waits").await;
    let mut holder = pool.acquire().await.unwrap();
    let lock = "CONCAT('outbox-migrate-', SHA1(CONCAT(DATABASE(), '.', ?)))";
    // Waits a little: the server may still be releasing the lock of the
    // migration `table` just ran, whose connection was closed.
    let taken: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({lock}, 10)"))
        .bind("migrate_waits")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    assert_eq!(taken, Some(1));

    let migrating = tokio::spawn({
        let outbox = outbox.clone();
        async move { outbox.migrate().await }
    });
    let waiting = eventually(DEADLINE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.processlist \
             WHERE state = 'User lock' AND info LIKE '%outbox-migrate-%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting > 0
    })
    .await;
    assert!(waiting, "migrate did not wait for the lock");
    assert!(
        !migrating.is_finished(),
        "migrate went on while the lock was held"
    );

    sqlx::query(&format!("DO RELEASE_LOCK({lock})"))
        .bind("migrate_waits")
        .execute(&mut *holder)
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, migrating)
        .await
        .expect("migrate goes on once the lock is released")
        .unwrap()
        .expect("migrate");
}

/// `GET_LOCK` names are global to the server, not to a database: two
/// applications whose databases share a server, each with a table of the
/// default name, must each get a leader of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_of_tables_of_one_name_in_two_databases_both_claim() {
    let (here, here_pool) = table("leader_two_databases").await;
    let database = "outbox_test_elsewhere";
    sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute(&here_pool)
        .await
        .unwrap();
    let url = std::env::var("OUTBOX_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let (server, _) = url.rsplit_once('/').expect("a URL with a database");
    let there_pool = MySqlPool::connect(&format!("{server}/{database}"))
        .await
        .unwrap();
    let leader_only = |outbox: &MysqlOutbox, pool: &MySqlPool| {
        MysqlOutbox::new(
            MysqlConfig {
                leader_only: true,
                ..outbox.config().clone()
            },
            pool.clone(),
        )
        .unwrap()
    };
    let there = leader_only(&here, &there_pool);
    let here = leader_only(&here, &here_pool);
    for suffix in ["", "_keys"] {
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS `leader_two_databases{suffix}`"
        ))
        .execute(&there_pool)
        .await
        .unwrap();
    }
    there.migrate().await.unwrap();

    let (here_destination, there_destination) =
        (MemoryDestination::new(), MemoryDestination::new());
    let relays = [
        run_relay(
            here.source().await.unwrap(),
            here_destination.clone(),
            fast_relay_config(),
        ),
        run_relay(
            there.source().await.unwrap(),
            there_destination.clone(),
            fast_relay_config(),
        ),
    ];
    let messages = numbered_messages("orders", 5, 4);
    commit(&here, &here_pool, &messages).await;
    commit(&there, &there_pool, &messages).await;
    let here_done = here_destination.wait_for(messages.len(), DEADLINE).await;
    let there_done = there_destination.wait_for(messages.len(), DEADLINE).await;
    for relay in relays {
        relay.stop().await;
    }
    assert!(
        here_done && there_done,
        "a leader stood by for the other database's table: {} and {} of {} arrived",
        here_destination.sent_count(),
        there_destination.sent_count(),
        messages.len()
    );
    sqlx::query(&format!("DROP DATABASE {database}"))
        .execute(&here_pool)
        .await
        .unwrap();
}

/// Writers committing one message per transaction while two relays claim:
/// no writer transaction may fail (claims once took gap locks that InnoDB
/// turned into writer deadlocks), everything arrives in order, and no batch
/// is lost to a deadlock between two batches' reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_committing_during_claims_never_fail() {
    let (outbox, pool) = table("busy_writers").await;
    let destination = MemoryDestination::new();
    let mut relays = Vec::new();
    for _ in 0..2 {
        relays.push(run_relay(
            outbox.source().await.unwrap(),
            destination.clone(),
            fast_relay_config(),
        ));
    }
    let messages = numbered_messages("orders", 50, 12);
    // Three writers, each with its own keys, so each key's enqueue order is
    // the order numbered_messages gave it.
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let chunk: Vec<Message> = messages
                .iter()
                .filter(|m| m.ordering_key[4..].parse::<usize>().unwrap() % 3 == writer)
                .cloned()
                .collect();
            let (outbox, pool) = (outbox.clone(), pool.clone());
            tokio::spawn(async move {
                for message in chunk {
                    let mut tx = pool.begin().await?;
                    outbox.enqueue(&mut tx, &message).await?;
                    tx.commit().await?;
                    outbox.notify_committed();
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .collect();
    for writer in writers {
        writer
            .await
            .unwrap()
            .expect("a writer's transaction failed");
    }
    assert!(
        destination
            .wait_for_distinct(messages.len(), DEADLINE)
            .await,
        "{} of {} arrived",
        destination.distinct_count(),
        messages.len()
    );
    let errors: Vec<Option<String>> = relays
        .iter()
        .map(|relay| relay.stats.health().last_error)
        .collect();
    for relay in relays {
        relay.stop().await;
    }
    let duplicates = assert_order_per_key(&messages, &arrivals(&destination));
    // Reports look their rows up by primary key, so two batches'
    // acknowledgements never wait on each other's rows: no deadlock rolls
    // a batch back to be published twice.
    assert_eq!(
        duplicates, 0,
        "batches were published twice; the relays' last errors: {errors:?}"
    );
}

/// A text field longer than its `VARCHAR(255)` column is refused by the
/// writer, naming it, before anything is written: a server whose
/// `sql_mode` is not strict (set here for the session) would otherwise cut
/// it short without a word, and publish to a truncated destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_longer_than_its_column_is_refused_before_anything_is_written() {
    let (outbox, pool) = table("too_long").await;
    let long = "x".repeat(256);
    let unfit = [
        ("ordering key", Message::builder("orders", long.clone())),
        ("destination", Message::builder(long.clone(), "k")),
        (
            "partition key",
            Message::builder("orders", "k").partition_key(long.clone()),
        ),
        (
            "event type",
            Message::builder("orders", "k").event_type(long.clone()),
        ),
    ];
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET SESSION sql_mode = ''")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (what, builder) in unfit {
        let fit = Message::builder("orders", "k").build().unwrap();
        let mut tx = conn.begin().await.unwrap();
        let err = outbox
            .enqueue_many(&mut tx, &[fit, builder.build().unwrap()])
            .await
            .unwrap_err();
        tx.commit().await.unwrap();
        assert!(!err.is_temporary(), "{what}: {}", err.report());
        assert!(
            err.report()
                .contains(&format!("the {what} is 256 characters long")),
            "{}",
            err.report()
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM too_long")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing of a refused batch is written");
}

/// A key that is not UTF-8 never reaches the relay: with the default
/// strict SQL mode MariaDB and MySQL refuse it, and a server that stores
/// it anyway converts it to the connection's character set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_utf8_is_refused_or_converted_by_the_database() {
    let (outbox, pool) = table("not_utf8").await;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO not_utf8 (id, ordering_key, destination, payload, headers, created_at, next_attempt_at) \
         VALUES (?, X'FF', 'orders', 'x', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .bind(id)
    .execute(&pool)
    .await;
    match inserted {
        Err(err) => assert!(err.to_string().contains("Incorrect string value"), "{err}"),
        Ok(_) => {
            let destination = MemoryDestination::new();
            let relay = run_relay(
                outbox.source().await.unwrap(),
                destination.clone(),
                fast_relay_config(),
            );
            let delivered = destination.wait_for(1, DEADLINE).await;
            relay.stop().await;
            assert!(delivered, "the converted row was not delivered");
            let key = &destination.sent()[0].message.ordering_key;
            assert!(!key.is_empty(), "key {key:?}");
        }
    }
}

/// The database refuses the acknowledgement (a trigger raising on DELETE):
/// the published messages stay in the outbox and go out again once their
/// lease ends, the relay keeps running, and once the database accepts
/// again everything is acknowledged, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_on_acknowledge_redelivers_and_loses_nothing() {
    let (_, pool) = table("ack_error").await;
    let outbox = MysqlOutbox::new(
        MysqlConfig {
            table: "ack_error".into(),
            lease: Duration::from_secs(3),
            ..MysqlConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS ack_error_refusing (refusing BOOLEAN); \
         DELETE FROM ack_error_refusing; INSERT INTO ack_error_refusing VALUES (true)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Text protocol: a trigger cannot be a prepared statement.
    sqlx::raw_sql(
        "CREATE TRIGGER ack_error_refuse BEFORE DELETE ON ack_error FOR EACH ROW BEGIN \
           IF (SELECT COUNT(*) FROM ack_error_refusing) > 0 THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'acknowledgement refused by the test'; \
           END IF; END",
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
    // Published, acknowledgement refused, published again after the lease.
    let again = destination.wait_for(messages.len() * 2, DEADLINE).await;
    let waiting = outbox.backlog().await.unwrap().waiting;
    sqlx::query("DELETE FROM ack_error_refusing")
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

fn message_of(key: &str) -> Message {
    Message::builder("orders", key).build().unwrap()
}

/// Writers lock their keys in byte order, which is how the relay compares
/// keys too. Under the server's case-insensitive collation `a` and `A` were
/// one lock, so two writers could take two such locks in opposite orders:
/// one holding `A` and then asking for `b`, the other asking for `B` and
/// `a` in one call, deadlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_keys_that_differ_only_in_case_never_deadlock() {
    let (outbox, pool) = table("keys_in_byte_order").await;
    let mut first = pool.begin().await.unwrap();
    outbox.enqueue(&mut first, &message_of("A")).await.unwrap();

    let second = tokio::spawn({
        let (outbox, pool) = (outbox.clone(), pool.clone());
        async move {
            let mut tx = pool.begin().await.map_err(|err| err.to_string())?;
            let messages = [message_of("a"), message_of("B")];
            let written = outbox.enqueue_many(&mut tx, &messages).await;
            written.map_err(|err| err.report())?;
            tx.commit().await.map_err(|err| err.to_string())
        }
    });
    // Go on once the second writer is done or waits for a lock.
    let waiting_or_done = eventually(DEADLINE, || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.innodb_trx \
             WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE '%keys_in_byte_order_keys%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting > 0 || second.is_finished()
    })
    .await;
    assert!(waiting_or_done);

    let first_result = match outbox.enqueue(&mut first, &message_of("b")).await {
        Ok(()) => first.commit().await.map_err(|err| err.to_string()),
        Err(err) => Err(err.report()),
    };
    let second_result = second.await.unwrap();
    assert!(
        first_result.is_ok() && second_result.is_ok(),
        "first writer: {first_result:?}; second writer: {second_result:?}"
    );
    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keys_in_byte_order")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(written, 4);
}

/// A new message is claimable by the database's clock, whatever the
/// application host's clock says: every connection of this pool sees the
/// database's time an hour behind the host's (`SET timestamp`), as when
/// the application host runs ahead of the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_messages_are_due_by_the_database_clock() {
    let (outbox, _) = table("database_clock").await;
    let url = std::env::var("OUTBOX_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let behind = chrono::Utc::now().timestamp() - 3600;
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                sqlx::query(&format!("SET timestamp = {behind}"))
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect(&url)
        .await
        .unwrap();
    // The relay's connections too run an hour behind.
    let outbox = MysqlOutbox::new(outbox.config().clone(), pool.clone()).unwrap();
    let message = Message::builder("orders", "clock").build().unwrap();
    commit(&outbox, &pool, std::slice::from_ref(&message)).await;
    let destination = MemoryDestination::new();
    let relay = run_relay(
        outbox.source().await.unwrap(),
        destination.clone(),
        fast_relay_config(),
    );
    let arrived = destination.wait_for(1, Duration::from_secs(10)).await;
    relay.stop().await;
    assert!(
        arrived,
        "a new message was hidden until the database's clock reached the host's"
    );
}

/// A row whose `created_at` is MySQL's zero date (accepted under a
/// `sql_mode` without `NO_ZERO_DATE`) cannot be read as a time: it is
/// dead-lettered with the reason, and the rows beside it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_cannot_be_decoded_is_dead_lettered_and_others_flow() {
    let (outbox, pool) = table("undecodable").await;
    let bad = Uuid::now_v7();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET SESSION sql_mode = ''")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO undecodable (id, ordering_key, destination, payload, headers, created_at, next_attempt_at) \
         VALUES (?, 'hand', 'orders', 'x', '{}', '0000-00-00 00:00:00', UTC_TIMESTAMP(6))",
    )
    .bind(bad)
    .execute(&mut *conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
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
        "the rows beside one that cannot be decoded were not delivered"
    );
    assert!(dead, "the row that cannot be decoded was not dead-lettered");
    let letters = outbox.dead_letters(10).await.unwrap();
    assert_eq!(letters[0].id, bad);
    assert!(
        letters[0].error.contains("created_at"),
        "{}",
        letters[0].error
    );
}

/// MySQL takes at most 65,535 placeholders a statement: one `enqueue_many`
/// of 10,000 messages (8 placeholders each), and a `requeue` of 70,000 ids,
/// go through in statements that fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_more_rows_than_a_statement_takes_go_through() {
    let (outbox, pool) = table("many_rows").await;
    let messages = numbered_messages("orders", 1000, 10);
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_many(&mut tx, &messages)
        .await
        .expect("10,000 messages in one call");
    tx.commit().await.unwrap();
    assert_eq!(outbox.backlog().await.unwrap().waiting, 10_000);
    let ids: Vec<Uuid> = (0..70_000).map(|_| Uuid::now_v7()).collect();
    assert_eq!(outbox.requeue(&ids).await.expect("70,000 ids"), 0);
}

/// In a database whose default character set is latin1, every text column
/// of the outbox is utf8mb4 (the key compared byte for byte), so keys,
/// destinations and headers outside latin1 come back intact; a table made
/// there in latin1 before is converted by `migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_outside_latin1_survives_a_latin1_database() {
    use outbox_core::Source;
    let url = std::env::var("OUTBOX_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sqlx::query("DROP DATABASE IF EXISTS outbox_latin1")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE outbox_latin1 CHARACTER SET latin1 COLLATE latin1_swedish_ci")
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let pool = MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&format!("{base}/outbox_latin1"))
        .await
        .unwrap();
    let outbox = MysqlOutbox::new(MysqlConfig::default(), pool.clone()).unwrap();
    outbox.migrate().await.unwrap();
    // As a table made before the migration that pins utf8mb4 would be.
    sqlx::query("ALTER TABLE outbox_messages CONVERT TO CHARACTER SET latin1")
        .execute(&pool)
        .await
        .unwrap();
    outbox.migrate().await.unwrap();
    let latin1: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = 'outbox_latin1' \
         AND character_set_name IS NOT NULL AND character_set_name <> 'utf8mb4'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(latin1, 0, "text columns left outside utf8mb4");
    let message = Message::builder("заказы.created", "ключ-€")
        .header("note", "über 🚀")
        .build()
        .unwrap();
    commit(&outbox, &pool, std::slice::from_ref(&message)).await;
    let claimed = outbox.source().await.unwrap().claim(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].ordering_key, message.ordering_key);
    assert_eq!(claimed[0].destination, message.destination);
    assert_eq!(claimed[0].headers["note"], message.headers["note"]);
}

async fn keys_in(pool: &MySqlPool, name: &str) -> Vec<String> {
    sqlx::query_scalar::<_, Vec<u8>>(&format!(
        "SELECT ordering_key FROM `{name}_keys` ORDER BY ordering_key"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|key| String::from_utf8(key).unwrap())
    .collect()
}

/// `<table>_keys` keeps one row per key ever written unless pruned: the
/// keys of delivered messages go, a key with a waiting message stays (its
/// row is recreated on the next write anyway), and a key a writer holds in
/// an open transaction is never taken from under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_delivered_messages_are_pruned_and_held_keys_stay() {
    let (outbox, pool) = table("prune_keys").await;
    let keys = ["done-1", "done-2", "done-3", "held", "waiting"];
    let messages: Vec<Message> = keys
        .iter()
        .map(|key| Message::builder("orders", *key).build().unwrap())
        .collect();
    commit(&outbox, &pool, &messages).await;
    sqlx::query("DELETE FROM prune_keys WHERE ordering_key <> 'waiting'")
        .execute(&pool)
        .await
        .unwrap();
    let mut writer = pool.begin().await.unwrap();
    outbox
        .enqueue(
            &mut writer,
            &Message::builder("orders", "held").build().unwrap(),
        )
        .await
        .unwrap();
    // Through the trait every database's handle shares, as outbox-relay
    // calls it.
    let operator: &dyn outbox_mysql::Operator = &outbox;
    let pruned = operator.prune(2).await.expect("prune");
    assert_eq!(keys_in(&pool, "prune_keys").await, ["held", "waiting"]);
    assert_eq!(pruned, 3);
    writer
        .commit()
        .await
        .expect("the writer keeps its key and commits");
    assert_eq!(outbox.prune_keys(2).await.unwrap(), 0);
    assert_eq!(keys_in(&pool, "prune_keys").await, ["held", "waiting"]);
}

/// Writers of a few keys go on committing, in order, while keys are pruned
/// again and again: pruning never fails a writer's transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_never_fail_while_keys_are_pruned() {
    let (outbox, pool) = table("prune_busy").await;
    let stop = Arc::new(AtomicBool::new(false));
    let pruner = tokio::spawn({
        let (outbox, pool, stop) = (outbox.clone(), pool.clone(), stop.clone());
        async move {
            let mut pruned = 0;
            while !stop.load(Ordering::Relaxed) {
                pruned += outbox.prune_keys(100).await.expect("prune");
                sqlx::query("DELETE FROM prune_busy ORDER BY seq LIMIT 50")
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pruned
        }
    });
    let mut writers = Vec::new();
    for w in 0..4 {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..150 {
                let message = Message::builder("orders", format!("key-{}", (n + w) % 3))
                    .build()
                    .unwrap();
                let mut tx = pool.begin().await.unwrap();
                outbox.enqueue(&mut tx, &message).await.expect("enqueue");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for writer in writers {
        writer
            .await
            .expect("a writer failed while keys were pruned");
    }
    stop.store(true, Ordering::Relaxed);
    let pruned = pruner.await.unwrap();
    assert!(pruned > 0, "nothing was pruned while writers wrote");
}

/// A table whose name contains the default one is created under exactly
/// that name, with its key table and indexes, and its messages are
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_named_after_the_default_one_is_migrated_as_named() {
    let (outbox, pool) = table("outbox_messages_v2").await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name LIKE 'outbox\\_messages\\_v2%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tables, ["outbox_messages_v2", "outbox_messages_v2_keys"]);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT CAST(index_name AS CHAR) FROM information_schema.statistics \
         WHERE table_schema = DATABASE() AND table_name = 'outbox_messages_v2' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        indexes.contains(&"outbox_messages_v2_waiting".to_string())
            && !indexes.iter().any(|index| index.contains("_v2_v2")),
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
