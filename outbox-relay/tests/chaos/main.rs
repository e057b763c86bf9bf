//! Chaos: a writer, three `outbox-relay` processes and a verifying consumer
//! on real servers, with faults injected while messages flow:
//!
//! * `kill -9` of a relay, started again at once;
//! * `SIGSTOP` of a relay past its lease (the others take its share), then
//!   `SIGCONT`: it must neither publish out of order nor remove rows it no
//!   longer holds;
//! * every relay's database connection ended (`pg_terminate_backend`,
//!   MariaDB's `KILL`);
//! * the broker restarted (a nats-server, a RabbitMQ node or a tansu of
//!   the run's own);
//! * the database restarted as after a crash (a PostgreSQL or a MariaDB of
//!   the run's own).
//!
//! The relay faults run from PostgreSQL to each broker (NATS JetStream,
//! Kafka, RabbitMQ), from MariaDB to NATS, and from a SQLite file to NATS
//! (kills and stops: a file has no connection to end nor server to
//! restart); the restarts on servers of the run's own. The tansu the tests
//! use keeps its log in memory only (tansu 0.6.0 built with SQLite storage
//! panics on the first idempotent produce after a restart), so a restart
//! loses what it acknowledged: before restarting it, the run stops the
//! relays until the verifier has read the whole log (see
//! `kafka_restart.rs`).
//!
//! Afterwards every committed message must have arrived, each key in order
//! once duplicates are dropped, and the outbox must be empty. The verifying
//! consumer (a core NATS subscriber, a Kafka consumer from the topic's
//! start, an AMQP consumer) counts duplicates. While the faults strike,
//! four consumers apply every copy it sees through the database's inbox
//! into a business table (retrying a transaction a fault ended, copies of
//! one message racing), which must hold each message once at the end.
//!
//! A full destination is in `full_destination.rs`.
//!
//! `OUTBOX_CHAOS_SECONDS` sets how long faults go on (default 15);
//! `scripts/test.sh` runs the default, see the README for the long run.

#[path = "../support/mod.rs"]
mod support;

mod brokers;
mod consumer;
mod databases;
mod full_destination;
mod kafka_restart;
mod postgres_wal;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brokers::Target;
use consumer::{amount_of, Consumers};
use databases::{Database, Mysql, Postgres, Sqlite};
use outbox_core::Message;
use outbox_testkit::{assert_order_per_key, eventually};
use postgres_wal::PostgresWal;
use support::*;

const RELAYS: usize = 3;
const KEYS: usize = 50;
const LEASE_MS: u64 = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    KillRelay,
    StopRelayPastLease,
    EndConnections,
    RestartBroker,
    RestartDatabase,
}

const RELAY_FAULTS: &[Fault] = &[
    Fault::KillRelay,
    Fault::StopRelayPastLease,
    Fault::EndConnections,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_nats_survives_kills_stops_and_lost_connections() {
    let database = Postgres::shared("chaos_pg_nats").await;
    chaos(
        &database,
        Target::nats("pg").await,
        "pg",
        5000,
        RELAY_FAULTS,
    )
    .await;
}

/// The same with lanes of keys: each claim takes a lane no other batch
/// holds, so a relay stopped or killed holds its lanes until its lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_lanes_to_nats_survives_kills_stops_and_lost_connections() {
    let database = Postgres::shared_lanes("chaos_pg_lanes", 8).await;
    let target = Target::nats("pg-lanes").await;
    chaos(&database, target, "pg-lanes", 2000, RELAY_FAULTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_nats_survives_kills_stops_and_lost_connections() {
    let database = Mysql::shared("chaos_my_nats").await;
    chaos(
        &database,
        Target::nats("my").await,
        "my",
        1000,
        RELAY_FAULTS,
    )
    .await;
}

/// Three relay processes on one SQLite file: kills and stops past the
/// lease (the lease is written into the rows there, so this is where a
/// stale relay's fencing is put to the test across processes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_nats_survives_kills_and_stops() {
    let database = Sqlite::file("chaos_lite_nats").await;
    let faults = [Fault::KillRelay, Fault::StopRelayPastLease];
    chaos(&database, Target::nats("lite").await, "lite", 1000, &faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_kafka_survives_kills_stops_and_lost_connections() {
    let database = Postgres::shared("chaos_pg_kafka").await;
    let target = Target::kafka("pg").await;
    chaos(&database, target, "pg-kafka", 2000, RELAY_FAULTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_rabbitmq_survives_kills_stops_and_lost_connections() {
    let database = Postgres::shared("chaos_pg_amqp").await;
    let target = Target::amqp("pg").await;
    chaos(&database, target, "pg-amqp", 1000, RELAY_FAULTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_nats_survives_broker_and_database_restarts() {
    let database = Postgres::own("chaos_restarts").await;
    let target = Target::own_nats("restarts").await;
    let faults = [
        Fault::RestartBroker,
        Fault::RestartDatabase,
        Fault::KillRelay,
    ];
    chaos(&database, target, "restarts", 1000, &faults).await;
}

/// The WAL outbox: one relay reads the slot, two stand by. A killed
/// reader's walsender ends with its connection; a stopped one is ended by
/// the server after the lease (its `wal_sender_timeout`), and on waking it
/// finds its ticks late and reads again; an ended connection is a new
/// session. Each time a standby may take the slot over. Every other commit
/// is rows of an outbox table (the table mode), the others messages
/// emitted into the log; the run with restarts emits messages only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wal_to_nats_survives_kills_stops_and_lost_connections() {
    // The table mode: half the commits rows of a table read from the log.
    let database = PostgresWal::shared_table("chaos_wal_nats").await;
    let target = Target::nats("wal").await;
    chaos(&database, target, "wal", 2000, RELAY_FAULTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wal_to_nats_survives_broker_and_database_restarts() {
    let database = PostgresWal::own("chaos_wal_restarts").await;
    let target = Target::own_nats("wal-restarts").await;
    let faults = [
        Fault::RestartBroker,
        Fault::RestartDatabase,
        Fault::KillRelay,
    ];
    chaos(&database, target, "wal-restarts", 1000, &faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_kafka_survives_broker_restarts() {
    let database = Postgres::shared("chaos_pg_kafka_restarts").await;
    let target = Target::own_kafka("restarts").await;
    let faults = [Fault::RestartBroker, Fault::KillRelay];
    chaos(&database, target, "kafka-restarts", 1000, &faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_to_nats_survives_database_restarts() {
    let database = Mysql::own("chaos_my_restarts").await;
    let target = Target::nats("my-restarts").await;
    let faults = [Fault::RestartDatabase, Fault::KillRelay];
    chaos(&database, target, "my-restarts", 1000, &faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_rabbitmq_survives_broker_restarts() {
    let database = Postgres::shared("chaos_pg_amqp_restarts").await;
    let target = Target::own_amqp("restarts").await;
    let faults = [Fault::RestartBroker, Fault::KillRelay];
    chaos(&database, target, "amqp-restarts", 1000, &faults).await;
}

/// Runs `faults` in turn against the relays for `OUTBOX_CHAOS_SECONDS`
/// (default 15), committing `burst` messages before each, then checks the
/// outcome.
async fn chaos(
    database: &impl Database,
    mut target: Target,
    name: &str,
    burst: usize,
    faults: &[Fault],
) {
    let seconds: u64 = std::env::var("OUTBOX_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let config = settings_with(
        &database.source_settings(),
        &target.settings,
        &format!("chaos_{name}"),
        spare_port(),
        // Retries capped at 10 s rather than the default 5 min: after a
        // broker restart a key may fail several attempts in a row (tansu
        // answered OutOfOrderSequenceNumber and timed sends out for about
        // 90 s once), and the drain below must not wait out a 2-minute
        // backoff to show that nothing was lost.
        "batch_size = 100\nsend_timeout = 1000\npoll_interval_max = 200\nbackoff = { max = 10000 }",
    );
    let env = [
        ("OUTBOX_SOURCE__LEASE_MS", LEASE_MS.to_string()),
        ("OUTBOX_HTTP__LISTEN", String::new()),
    ];
    let mut relays = RelayProcesses::start(config, &format!("chaos-{name}"), &env, RELAYS);
    database.prepare_consumer().await;
    let consumers = Consumers::default();
    let deliveries = target.publishes.record_handle();
    let mut committed: Vec<Message> = Vec::new();
    let mut struck: HashMap<Fault, usize> = HashMap::new();
    let started = Instant::now();
    let faults_and_checks = async {
        // Rounds of: a burst of messages committed (100 per transaction), a
        // wait until the relays are publishing it, then a fault while they are
        // at it.
        let mut round = 0;
        while started.elapsed() < Duration::from_secs(seconds) {
            relays.assert_running();
            // The writer keeps the relays' pace: a round starts once at most one
            // burst waits. Faults then strike while messages flow, however long
            // the run, instead of piling up a backlog that relays built for
            // debugging on a busy machine cannot drain in time.
            let caught_up = eventually(DEADLINE, || async {
                database.backlog().await.waiting <= burst as u64
            })
            .await;
            assert!(
                caught_up,
                "the relays stopped draining: {:?}",
                database.backlog().await
            );
            let published_before = target.publishes.count();
            for _ in 0..burst / 100 {
                let first = committed.len();
                let batch: Vec<Message> = (first..first + 100)
                    .map(|n| {
                        Message::builder(&target.destination, format!("key-{}", n % KEYS))
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
                target.publishes.count() > published_before + 100
            })
            .await;
            let victim = round % RELAYS;
            let fault = faults[round % faults.len()];
            match fault {
                Fault::KillRelay => relays.restart(victim),
                Fault::StopRelayPastLease => {
                    signal(&relays.children[victim], "STOP");
                    tokio::time::sleep(Duration::from_millis(LEASE_MS + 1000)).await;
                    signal(&relays.children[victim], "CONT");
                }
                Fault::EndConnections => {
                    // Counted as connections ended, beyond the one fault.
                    let ended = database.end_relay_connections().await;
                    *struck.entry(fault).or_default() += ended.saturating_sub(1);
                }
                Fault::RestartBroker => target.restart_broker(&relays).await,
                Fault::RestartDatabase => database.restart().await,
            }
            *struck.entry(fault).or_default() += 1;
            round += 1;
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        relays.assert_running();

        let drained =
            eventually(DEADLINE, || async { database.backlog().await.waiting == 0 }).await;
        let left = database.backlog().await;
        assert!(drained, "the outbox did not drain: {left:?}");
        // A subscriber reconnecting after a broker restart may miss publishes
        // the stream kept: then the stream itself is the record.
        let from_stream = matches!(target.own, Some(brokers::OwnBroker::Nats(_)));
        let all_seen = || async {
            match (&target.stream, from_stream) {
                (Some(stream), true) => {
                    stream.clone().info().await.unwrap().state.messages >= committed.len() as u64
                }
                _ => target.publishes.has_all(&committed),
            }
        };
        let mut all_seen_now = eventually(Duration::from_secs(30), all_seen).await;
        relays.stop().await;
        // The verifying AMQP consumer once stopped for good after a node
        // restart: the queue held every message the relays had confirmed, with
        // no consumer (`rabbitmqctl list_queues`). Its waits are bounded since
        // (see `Publishes::amqp_at`); should it stop again, the node closes its
        // connections so that it consumes anew, and a failure shows where it
        // stood. A message the queue lost still fails below.
        if let (false, Some(brokers::OwnBroker::Rabbit(rabbit))) = (all_seen_now, &target.own) {
            println!(
                "chaos {name}: the consumer missed messages ({}); queues before closing its \
             connection:\n{}",
                target.publishes.consumer_state(),
                rabbit.list_queues()
            );
            rabbit.close_connections();
            all_seen_now = eventually(Duration::from_secs(30), all_seen).await;
        }
        let all_seen = all_seen_now;
        if !all_seen {
            let seen: std::collections::HashSet<_> = target
                .publishes
                .arrivals()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let missing: Vec<usize> = (0..committed.len())
                .filter(|&n| !seen.contains(&committed[n].id))
                .collect();
            let queues = match &target.own {
                Some(brokers::OwnBroker::Rabbit(rabbit)) => rabbit.list_queues(),
                _ => String::new(),
            };
            panic!(
            "a committed message never reached the broker: {} of {} missing (by commit number: \
             {:?}), {} arrivals; outbox at the drain: {left:?}; {}\n{queues}",
            missing.len(),
            committed.len(),
            &missing[..missing.len().min(20)],
            target.publishes.count(),
            target.publishes.consumer_state()
        );
        }
        let arrivals = match &target.stream {
            Some(stream) if from_stream => read(stream, &committed).await,
            _ => target.publishes.keyed(&committed),
        };
        let duplicates = assert_order_per_key(&committed, &arrivals);
        consumers.finish();
        (left, arrivals, duplicates, from_stream)
    };
    let ((), (left, arrivals, duplicates, from_stream)) =
        tokio::join!(consumers.run(database, &deliveries), faults_and_checks);
    if from_stream {
        // The record after a broker restart is the stream: what the
        // subscriber missed is applied now.
        let stream_record = arrivals
            .iter()
            .map(|(_, id)| (*id, Instant::now()))
            .collect();
        let catch_up = Consumers::finishing();
        catch_up
            .run(database, &Arc::new(Mutex::new(stream_record)))
            .await;
        consumers
            .applied
            .fetch_add(catch_up.applied.into_inner(), Ordering::Relaxed);
        consumers
            .read
            .fetch_add(catch_up.read.into_inner(), Ordering::Relaxed);
    }
    let applied = consumers.applied.load(Ordering::Relaxed);
    let read = consumers.read.load(Ordering::Relaxed);
    let retried = consumers.retried.load(Ordering::Relaxed);
    assert_applied_once(database, &committed).await;
    if let Some(stream) = &target.stream {
        let stored = stream.clone().info().await.unwrap().state.messages;
        assert_eq!(
            stored,
            committed.len() as u64,
            "the stream holds each message once"
        );
    }
    assert_eq!(left.dead_letters, 0);
    let keys: HashSet<&str> = committed.iter().map(|m| m.ordering_key.as_str()).collect();
    assert_eq!(
        keys.len(),
        KEYS.min(committed.len()),
        "the writer spread its keys"
    );
    target.clean_up().await;
    database.clean_up().await;
    let copies = target.publishes.count();
    println!(
        "chaos {name}: {} messages over {KEYS} keys in {:?}; faults {struck:?}; {} relay starts; \
         {duplicates} duplicates in the verified record, {copies} copies seen by the consumer \
         ({:.2}% over one each); all in order per key after dropping duplicates; consumers \
         read {read} deliveries (during the faults, and from the stream after a broker \
         restart) and applied {applied} through the inbox ({retried} transactions tried \
         again); the business table holds each message once",
        committed.len(),
        started.elapsed(),
        relays.started,
        100.0 * (copies as f64 / committed.len() as f64 - 1.0)
    );
}

/// Every committed message applied once: the business table holds one row
/// per message and the sum of their amounts, however many copies arrived.
async fn assert_applied_once(database: &impl Database, committed: &[Message]) {
    let (rows, sum) = database.effects().await;
    let expected: i64 = committed.iter().map(|m| amount_of(m.id)).sum();
    assert_eq!(
        (rows, sum),
        (committed.len() as i64, expected),
        "the inbox must apply each of {} messages once: (rows, sum of amounts)",
        committed.len()
    );
}
