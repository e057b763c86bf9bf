//! Chaos: a writer, three `outbox-relay` processes and a verifying consumer,
//! from PostgreSQL and from MariaDB to NATS JetStream, with faults injected
//! while messages flow:
//!
//! * `kill -9` of a relay, started again at once;
//! * `SIGSTOP` of a relay past its lease (the others take its share), then
//!   `SIGCONT`: it must neither publish out of order nor remove rows it no
//!   longer holds;
//! * every relay's database connection ended (`pg_terminate_backend`,
//!   MariaDB's `KILL`).
//!
//! Afterwards every committed message must have arrived, each key in order
//! once duplicates are dropped, and the outbox must be empty. A core NATS
//! subscriber sees every publish, duplicates included, and counts them.
//!
//! `OUTBOX_CHAOS_SECONDS` sets how long faults go on (default 15);
//! `scripts/test.sh` runs the default, see the README for the long run.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox_core::Message;
use outbox_testkit::{assert_order_per_key, eventually};
use support::*;

const RELAYS: usize = 3;
const KEYS: usize = 50;
const LEASE_MS: u64 = 2000;
const APPLICATION: &str = "outbox-relay-chaos";
/// The MariaDB user the relays connect as, so their connections can be
/// told apart from the test's.
const MYSQL_USER: &str = "outbox_chaos";

/// The outbox database under test, as the harness needs it.
trait Database {
    /// The `[source]` table body for the relays' settings file.
    fn source_settings(&self) -> String;
    /// Commits `messages` in one transaction.
    async fn commit(&self, messages: &[Message]);
    /// Messages waiting and dead letters.
    async fn backlog(&self) -> outbox_core::Backlog;
    /// Ends every connection the relays hold; returns how many.
    async fn end_relay_connections(&self) -> usize;
}

struct Postgres {
    outbox: outbox_postgres::PostgresOutbox,
    pool: sqlx::PgPool,
}

impl Database for Postgres {
    fn source_settings(&self) -> String {
        let separator = if postgres_url().contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "kind = \"postgres\"\nurl = \"{}{separator}application_name={APPLICATION}\"\n\
             schema = \"outbox_relay_test\"\ntable = \"chaos\"",
            postgres_url()
        )
    }

    async fn commit(&self, messages: &[Message]) {
        commit(&self.outbox, &self.pool, messages).await;
    }

    async fn backlog(&self) -> outbox_core::Backlog {
        self.outbox.backlog(&self.pool).await.unwrap()
    }

    async fn end_relay_connections(&self) -> usize {
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(APPLICATION)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        ended.len()
    }
}

struct Mysql {
    outbox: outbox_mysql::MysqlOutbox,
    pool: sqlx::MySqlPool,
}

impl Mysql {
    async fn open() -> Self {
        let url = mysql_url();
        let pool = sqlx::MySqlPool::connect(&url)
            .await
            .expect("MariaDB reachable");
        sqlx::raw_sql(&format!(
            "DROP TABLE IF EXISTS chaos, chaos_keys, chaos_claim; \
             CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'%' IDENTIFIED BY ''; \
             CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'localhost' IDENTIFIED BY ''; \
             GRANT ALL ON *.* TO '{MYSQL_USER}'@'%'; GRANT ALL ON *.* TO '{MYSQL_USER}'@'localhost'"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let outbox = outbox_mysql::MysqlOutbox::new(outbox_mysql::MysqlConfig {
            table: "chaos".into(),
            ..outbox_mysql::MysqlConfig::default()
        })
        .unwrap();
        outbox.migrate(&pool).await.unwrap();
        Self { outbox, pool }
    }
}

fn mysql_url() -> String {
    std::env::var("OUTBOX_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

impl Database for Mysql {
    fn source_settings(&self) -> String {
        let url = mysql_url().replacen("://root@", &format!("://{MYSQL_USER}@"), 1);
        format!("kind = \"mysql\"\nurl = \"{url}\"\ntable = \"chaos\"")
    }

    async fn commit(&self, messages: &[Message]) {
        let mut tx = self.pool.begin().await.unwrap();
        self.outbox.enqueue_many(&mut tx, messages).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn backlog(&self) -> outbox_core::Backlog {
        self.outbox.backlog(&self.pool).await.unwrap()
    }

    async fn end_relay_connections(&self) -> usize {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?")
                .bind(MYSQL_USER)
                .fetch_all(&self.pool)
                .await
                .unwrap();
        for id in &ids {
            // A connection may have ended on its own meanwhile.
            let _ = sqlx::query(&format!("KILL {id}")).execute(&self.pool).await;
        }
        ids.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relays_survive_kills_stops_and_lost_connections() {
    let (outbox, pool) = table("chaos").await;
    chaos(Postgres { outbox, pool }, "pg", 5000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_relays_survive_kills_stops_and_lost_connections() {
    chaos(Mysql::open().await, "my", 1000).await;
}

/// Runs the faults against `database` for `OUTBOX_CHAOS_SECONDS` (default
/// 15), writing `burst` messages before each, then checks the outcome.
async fn chaos(database: impl Database, name: &str, burst: usize) {
    let seconds: u64 = std::env::var("OUTBOX_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let subject = format!("relay-chaos-{name}");
    let nats_stream = stream(&format!("RELAY_CHAOS_{}", name.to_uppercase()), &subject).await;

    // Every publish, duplicates included, in arrival order.
    let publishes = Publishes::record(&subject).await;

    let config = settings_with_source(
        &database.source_settings(),
        &format!("chaos_{name}"),
        spare_port(),
        "batch_size = 100\nsend_timeout = 1000\npoll_interval_max = 200",
    );
    let env = [
        ("OUTBOX_SOURCE__LEASE_MS", LEASE_MS.to_string()),
        ("OUTBOX_HTTP__LISTEN", String::new()),
    ];
    let mut relays = RelayProcesses::start(config, &format!("chaos-{name}"), &env, RELAYS);

    // Rounds of: a burst of messages committed (100 per transaction), a
    // wait until the relays are publishing it, then a fault while they are
    // at it.
    let mut committed: Vec<Message> = Vec::new();
    let started = Instant::now();
    let mut faults: HashMap<&str, usize> = HashMap::new();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        relays.assert_running();
        let published_before = publishes.count();
        for _ in 0..burst / 100 {
            let batch: Vec<Message> = (0..100)
                .map(|_| {
                    let n = committed.len();
                    Message::builder(format!("{subject}.orders"), format!("key-{}", n % KEYS))
                        .payload(format!("{n}"))
                        .build()
                        .unwrap()
                })
                .collect();
            database.commit(&batch).await;
            committed.extend(batch);
        }
        // Strike once the relays are publishing this burst.
        eventually(Duration::from_secs(10), || async {
            publishes.count() > published_before + 100
        })
        .await;
        let victim = round % RELAYS;
        match round % 3 {
            0 => {
                relays.restart(victim);
                *faults.entry("kill -9").or_default() += 1;
            }
            1 => {
                signal(&relays.children[victim], "STOP");
                tokio::time::sleep(Duration::from_millis(LEASE_MS + 1000)).await;
                signal(&relays.children[victim], "CONT");
                *faults.entry("SIGSTOP past the lease").or_default() += 1;
            }
            _ => {
                let ended = database.end_relay_connections().await;
                *faults.entry("connections ended").or_default() += ended;
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    relays.assert_running();

    let drained = eventually(DEADLINE, || async { database.backlog().await.waiting == 0 }).await;
    let left = database.backlog().await;
    assert!(drained, "the outbox did not drain: {left:?}");
    let all_seen = eventually(Duration::from_secs(30), || async {
        publishes.has_all(&committed)
    })
    .await;
    relays.stop().await;
    assert!(all_seen, "a committed message never reached the broker");
    let arrivals = publishes.keyed(&committed);
    let duplicates = assert_order_per_key(&committed, &arrivals);
    let stored = nats_stream.clone().info().await.unwrap().state.messages;
    assert_eq!(
        stored,
        committed.len() as u64,
        "the stream holds each message once"
    );
    assert_eq!(left.dead_letters, 0);
    println!(
        "chaos {name}: {} messages over {KEYS} keys in {:?}; faults {faults:?}; {} relay starts; \
         {duplicates} duplicates published ({:.2}%), all in order per key after dropping them",
        committed.len(),
        started.elapsed(),
        relays.started,
        100.0 * duplicates as f64 / committed.len() as f64
    );
}
