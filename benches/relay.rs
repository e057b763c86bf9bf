//! Drain throughput of the relay against the two references of issue 10, on
//! real servers: PostgreSQL -> NATS JetStream.
//!
//! `cargo bench --bench relay --features postgres,nats -- [MESSAGES] [RUNS] [LATENCY_SECONDS]`
//! (defaults 200,000 messages, 3 runs, no latency runs; `-- 20000 1` is the
//! smoke run of scripts/test.sh). 200-byte payloads over 10,000 keys, one
//! relay. With `LATENCY_SECONDS`, 8 writers then commit one message per
//! transaction at 1,000 and at 5,000 msg/s for that long, and the time from
//! each commit to the message's arrival at a NATS subscriber is measured.
//!
//! * relay: `outbox::Relay` with `PostgresSource` and `NatsDestination`.
//! * ceiling: the simplest fast relay by hand: in one transaction, claim and
//!   delete 1,000 rows in one statement, publish them all with their
//!   acknowledgements in flight together, commit; repeat.
//! * naive: one message per transaction: claim one, publish, wait for the
//!   acknowledgement, delete, commit (timed on a tenth of the messages).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use outbox::nats::async_nats::jetstream::{self, stream};
use outbox::nats::{NatsConfig, NatsDestination, NATS_MSG_ID};
use outbox::postgres::{PostgresConfig, PostgresOutbox};
use outbox::{CancellationToken, Message, Relay, RelayConfig, Stats};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

const KEYS: usize = 10_000;
const SUBJECT: &str = "outbox-bench.orders";
/// Writers of the latency runs, one transaction per message each.
const WRITERS: u64 = 8;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let messages: usize = args
        .next()
        .map_or(200_000, |a| a.parse().expect("MESSAGES"));
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("RUNS"));
    let latency_seconds: u64 = args
        .next()
        .map_or(0, |a| a.parse().expect("LATENCY_SECONDS"));
    let pg_url = std::env::var("OUTBOX_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let nats_url =
        std::env::var("OUTBOX_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&pg_url)
        .await
        .expect("PostgreSQL");
    sqlx::query("CREATE SCHEMA IF NOT EXISTS outbox_bench")
        .execute(&pool)
        .await
        .ok();
    let outbox = PostgresOutbox::new(PostgresConfig {
        schema: "outbox_bench".into(),
        table: "pg_nats".into(),
        notify: false,
        ..PostgresConfig::default()
    })
    .expect("config");
    outbox.migrate(&pool).await.expect("migrate");
    let destination = NatsDestination::connect(NatsConfig {
        url: nats_url,
        ..NatsConfig::default()
    })
    .await
    .expect("NATS");
    let js = destination.jetstream().clone();

    println!("PostgreSQL -> NATS JetStream, {messages} messages of 200 bytes over {KEYS} keys, {runs} runs");
    let mut table = Vec::new();
    for (name, run) in [
        ("relay", Kind::Relay),
        ("ceiling", Kind::Ceiling),
        ("naive", Kind::Naive),
    ] {
        let count = if matches!(run, Kind::Naive) {
            (messages / 10).max(100)
        } else {
            messages
        };
        let mut rates = Vec::new();
        for _ in 0..runs {
            reset_stream(&js).await;
            fill(&outbox, &pool, count).await;
            let started = Instant::now();
            match run {
                Kind::Relay => relay(&outbox, &pool, &destination, count).await,
                Kind::Ceiling => ceiling(&pool, &js).await,
                Kind::Naive => naive(&pool, &js).await,
            }
            let rate = count as f64 / started.elapsed().as_secs_f64();
            assert_eq!(
                stored(&js).await,
                count as u64,
                "{name}: the stream does not hold every message"
            );
            rates.push(rate);
        }
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "{name:<8} {median:>10.0} msg/s  (min {:.0}, max {:.0})",
            rates[0],
            rates[rates.len() - 1]
        );
        table.push((name, median));
    }
    let relay_rate = table[0].1;
    println!(
        "relay / ceiling = {:.2}, relay / naive = {:.1}x",
        relay_rate / table[1].1,
        relay_rate / table[2].1
    );
    if latency_seconds > 0 {
        // Writers NOTIFY and the relay LISTENs, as in production.
        let notifying = PostgresOutbox::new(PostgresConfig {
            notify: true,
            ..outbox.config().clone()
        })
        .expect("config");
        for rate in [1000, 5000] {
            reset_stream(&js).await;
            let (achieved, p50, p99, max) =
                latency(&notifying, &pool, &destination, rate, latency_seconds).await;
            println!(
                "latency at {rate} msg/s ({achieved:.0} reached) for {latency_seconds} s, commit to broker: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Relay,
    Ceiling,
    Naive,
}

async fn reset_stream(js: &jetstream::Context) {
    let _ = js.delete_stream("OUTBOX_BENCH").await;
    js.get_or_create_stream(stream::Config {
        name: "OUTBOX_BENCH".into(),
        subjects: vec!["outbox-bench.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
}

async fn stored(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("OUTBOX_BENCH").await.expect("stream");
    stream.info().await.expect("info").state.messages
}

/// Writes `count` messages, interleaved over the keys, in transactions of
/// 1,000 through the outbox's own writer.
async fn fill(outbox: &PostgresOutbox, pool: &PgPool, count: usize) {
    sqlx::query("TRUNCATE outbox_bench.pg_nats")
        .execute(pool)
        .await
        .expect("truncate");
    let payload = vec![b'x'; 200];
    let mut batch = Vec::with_capacity(1000);
    for i in 0..count {
        batch.push(
            Message::builder(SUBJECT, format!("key-{}", i % KEYS))
                .payload(payload.clone())
                .build()
                .expect("message"),
        );
        if batch.len() == 1000 || i + 1 == count {
            let mut tx = pool.begin().await.expect("begin");
            outbox.enqueue_many(&mut tx, &batch).await.expect("enqueue");
            tx.commit().await.expect("commit");
            batch.clear();
        }
    }
    sqlx::query("VACUUM ANALYZE outbox_bench.pg_nats")
        .execute(pool)
        .await
        .expect("vacuum");
}

async fn relay(
    outbox: &PostgresOutbox,
    pool: &PgPool,
    destination: &NatsDestination,
    count: usize,
) {
    let config = RelayConfig {
        batch_size: 1000,
        max_concurrent_keys: 1000,
        ..RelayConfig::default()
    };
    let source = outbox.source(pool.clone()).await.expect("source");
    let relay = Relay::new(source, destination.clone(), config).expect("relay config");
    let stats = relay.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    // The relay's own counter, not a query: polling the table would load
    // the database the relay is being measured on.
    while Stats::get(&stats.published) < count as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stopping awaits the last reports: the clock stops once every row is
    // gone from the outbox.
    shutdown.cancel();
    task.await.expect("relay task").expect("relay");
    assert_eq!(
        outbox.backlog(pool).await.expect("backlog").waiting,
        0,
        "relay: rows left in the outbox"
    );
}

async fn ceiling(pool: &PgPool, js: &jetstream::Context) {
    loop {
        let mut tx = pool.begin().await.expect("begin");
        let rows = sqlx::query(
            "DELETE FROM outbox_bench.pg_nats WHERE seq IN (SELECT seq FROM outbox_bench.pg_nats \
             ORDER BY seq LIMIT 1000 FOR UPDATE SKIP LOCKED) RETURNING id, destination, payload",
        )
        .fetch_all(&mut *tx)
        .await
        .expect("claim");
        if rows.is_empty() {
            return;
        }
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            acks.push(publish(js, row).await);
        }
        for ack in acks {
            ack.await.expect("ack");
        }
        tx.commit().await.expect("commit");
    }
}

async fn naive(pool: &PgPool, js: &jetstream::Context) {
    loop {
        let mut tx = pool.begin().await.expect("begin");
        let Some(row) = sqlx::query(
            "SELECT seq, id, destination, payload FROM outbox_bench.pg_nats ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await
        .expect("claim") else {
            return;
        };
        publish(js, &row).await.await.expect("ack");
        let seq: i64 = row.get("seq");
        sqlx::query("DELETE FROM outbox_bench.pg_nats WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await
            .expect("delete");
        tx.commit().await.expect("commit");
    }
}

async fn publish(
    js: &jetstream::Context,
    row: &sqlx::postgres::PgRow,
) -> jetstream::context::PublishAckFuture {
    let id: uuid::Uuid = row.get("id");
    let subject: String = row.get("destination");
    let payload: Vec<u8> = row.get("payload");
    let mut headers = outbox::nats::async_nats::HeaderMap::new();
    headers.insert(NATS_MSG_ID, id.to_string().as_str());
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .expect("publish")
}

/// Commit-to-broker latency under steady load: a writer commits one message
/// per transaction at `rate` per second for `seconds`, the relay runs, and a
/// core NATS subscriber notes when each message arrives. Prints p50, p99 and
/// max of arrival time minus commit time.
async fn latency(
    outbox: &PostgresOutbox,
    pool: &PgPool,
    destination: &NatsDestination,
    rate: u64,
    seconds: u64,
) -> (f64, Duration, Duration, Duration) {
    sqlx::query("TRUNCATE outbox_bench.pg_nats")
        .execute(pool)
        .await
        .expect("truncate");
    let committed: Arc<Mutex<HashMap<uuid::Uuid, Instant>>> = Arc::default();
    let arrived: Arc<Mutex<Vec<(uuid::Uuid, Instant)>>> = Arc::default();
    let mut subscriber = destination
        .client()
        .subscribe(SUBJECT)
        .await
        .expect("subscribe");
    let recorder = {
        let arrived = arrived.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let at = Instant::now();
                let id = message.headers.as_ref().and_then(|h| h.get(NATS_MSG_ID));
                if let Some(id) = id.and_then(|id| id.as_str().parse().ok()) {
                    arrived.lock().unwrap().push((id, at));
                }
            }
        })
    };
    let config = RelayConfig::default();
    let source = outbox.source(pool.clone()).await.expect("source");
    let relay = Relay::new(source, destination.clone(), config).expect("relay config");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    // Writers share the pace: message i is due at i / rate seconds.
    let total = rate * seconds;
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (outbox, pool, committed) = (outbox.clone(), pool.clone(), committed.clone());
            tokio::spawn(async move {
                for i in (writer..total).step_by(WRITERS as usize) {
                    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let key = format!("key-{}", i as usize % KEYS);
                    let message = Message::builder(SUBJECT, key)
                        .payload(vec![b'x'; 200])
                        .build()
                        .expect("message");
                    let mut tx = pool.begin().await.expect("begin");
                    outbox.enqueue(&mut tx, &message).await.expect("enqueue");
                    tx.commit().await.expect("commit");
                    committed.lock().unwrap().insert(message.id, Instant::now());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.lock().unwrap().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("relay task").expect("relay");
    recorder.abort();
    let committed = committed.lock().unwrap();
    let mut latencies: Vec<Duration> = arrived
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, at)| committed.get(id).map(|c| at.saturating_duration_since(*c)))
        .collect();
    assert_eq!(
        latencies.len() as u64,
        total,
        "latency: not every message arrived"
    );
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (
        achieved,
        pick(0.5),
        pick(0.99),
        latencies[latencies.len() - 1],
    )
}
