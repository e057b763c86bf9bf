//! Drain throughput of the relay against the two references of issue 10, on
//! real servers: PostgreSQL -> NATS JetStream.
//!
//! `cargo bench --bench relay --features postgres,nats -- [MESSAGES] [RUNS]`
//! (defaults 200,000 messages, 3 runs; `-- 20000 1` is the smoke run of
//! scripts/test.sh). 200-byte payloads over 10,000 keys, one relay.
//!
//! * relay: `outbox::Relay` with `PostgresSource` and `NatsDestination`.
//! * ceiling: the simplest fast relay by hand: in one transaction, claim and
//!   delete 1,000 rows in one statement, publish them all with their
//!   acknowledgements in flight together, commit; repeat.
//! * naive: one message per transaction: claim one, publish, wait for the
//!   acknowledgement, delete, commit (timed on a tenth of the messages).

use std::time::{Duration, Instant};

use outbox::nats::async_nats::jetstream::{self, stream};
use outbox::nats::{NatsConfig, NatsDestination, NATS_MSG_ID};
use outbox::postgres::{PostgresConfig, PostgresOutbox};
use outbox::{CancellationToken, Message, Relay, RelayConfig, Stats};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

const KEYS: usize = 10_000;
const SUBJECT: &str = "outbox-bench.orders";

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let messages: usize = args
        .next()
        .map_or(200_000, |a| a.parse().expect("MESSAGES"));
    let runs: usize = args.next().map_or(3, |a| a.parse().expect("RUNS"));
    let pg_url = std::env::var("OUTBOX_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let nats_url =
        std::env::var("OUTBOX_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pool = PgPoolOptions::new()
        .max_connections(8)
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
