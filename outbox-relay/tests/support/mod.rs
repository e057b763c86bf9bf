//! What the process tests share: a PostgreSQL table and a JetStream stream
//! of a test's own, a settings file, and the `outbox-relay` binary run as a
//! child process.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use outbox_core::Message;
use outbox_postgres::{PostgresConfig, PostgresOutbox};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

pub mod autovacuum;
pub mod certificates;
pub mod servers;

pub const DEADLINE: Duration = Duration::from_secs(120);

/// The bench's PostgreSQL with `wal_level = logical`, for the WAL outbox.
pub fn postgres_wal_url() -> String {
    std::env::var("OUTBOX_POSTGRES_WAL_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".into())
}

pub fn postgres_url() -> String {
    std::env::var("OUTBOX_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("OUTBOX_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn amqp_url() -> String {
    std::env::var("OUTBOX_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Installs ring as the process's rustls provider, as `outbox-relay`'s
/// `main` does: with the replication client's TLS this build holds two
/// providers, and a client that asks rustls for its default (async-nats's)
/// would panic.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn nats_url() -> String {
    std::env::var("OUTBOX_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A fresh outbox table `outbox_relay_test.<table>`.
pub async fn table(table: &str) -> (PostgresOutbox, PgPool) {
    let pool = PgPool::connect(&postgres_url())
        .await
        .expect("PostgreSQL reachable");
    // The migration below creates the schema: a `CREATE SCHEMA IF NOT
    // EXISTS` here raced the other tests' on a fresh server and failed one.
    sqlx::raw_sql(&format!("DROP TABLE IF EXISTS outbox_relay_test.{table}"))
        .execute(&pool)
        .await
        .unwrap();
    let outbox = PostgresOutbox::new(
        PostgresConfig {
            schema: "outbox_relay_test".into(),
            table: table.into(),
            ..PostgresConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.unwrap();
    (outbox, pool)
}

/// A channel on the shared RabbitMQ, with the queue `queue` declared
/// (not durable, kept when unused).
pub async fn amqp_queue(queue: &str) -> outbox_amqp::lapin::Channel {
    use outbox_amqp::lapin::options::QueueDeclareOptions;
    use outbox_amqp::lapin::types::FieldTable;
    let amqp = outbox_amqp::AmqpDestination::connect(outbox_amqp::AmqpConfig {
        url: amqp_url(),
        ..outbox_amqp::AmqpConfig::default()
    })
    .await
    .expect("RabbitMQ reachable");
    let channel = amqp.channel().await.unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
}

pub fn mysql_url() -> String {
    std::env::var("OUTBOX_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A fresh MariaDB outbox table `<table>` (and its `<table>_keys`).
pub async fn mysql_table(table: &str) -> (outbox_mysql::MysqlOutbox, sqlx::MySqlPool) {
    let pool = sqlx::MySqlPool::connect(&mysql_url())
        .await
        .expect("MariaDB reachable");
    for name in [table.to_string(), format!("{table}_keys")] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let outbox = outbox_mysql::MysqlOutbox::new(
        outbox_mysql::MysqlConfig {
            table: table.into(),
            ..Default::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.unwrap();
    (outbox, pool)
}

pub async fn commit(outbox: &PostgresOutbox, pool: &PgPool, messages: &[Message]) {
    for chunk in messages.chunks(1000) {
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue_many(&mut tx, chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// A fresh stream `name` on `<subject>.>`.
pub async fn stream(name: &str, subject: &str) -> stream::Stream {
    stream_at(&nats_url(), name, subject).await
}

/// A fresh stream `name` on `<subject>.>` on the NATS server at `url`.
/// A client of the NATS server at `url`; `nats://TOKEN@host` presents
/// TOKEN as a token, as NATS URLs mean it (async-nats would send it as a
/// user name).
pub async fn connect_nats(url: &str) -> async_nats::Client {
    let token = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo)
        .filter(|userinfo| !userinfo.contains(':'));
    let connected = match token {
        Some(token) => {
            let bare = url.replacen(&format!("{token}@"), "", 1);
            async_nats::ConnectOptions::with_token(token.to_string())
                .connect(bare)
                .await
        }
        None => async_nats::connect(url).await,
    };
    connected.expect("NATS reachable")
}

pub async fn stream_at(url: &str, name: &str, subject: &str) -> stream::Stream {
    let client = connect_nats(url).await;
    let context = jetstream::new(client);
    let _ = context.delete_stream(name).await;
    context
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await
        .unwrap()
}

/// The (key, id) of every message in the stream, in stream order.
pub async fn read(stream: &stream::Stream, messages: &[Message]) -> Vec<(String, Uuid)> {
    let count = stream.clone().info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut stored = consumer.messages().await.unwrap().take(count);
    let mut arrivals = Vec::with_capacity(count);
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), stored.next())
        .await
        .unwrap()
    {
        let message = message.unwrap();
        let id: Uuid = message
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let sent = messages
            .iter()
            .find(|m| m.id == id)
            .expect("a message we wrote");
        arrivals.push((sent.ordering_key.clone(), id));
    }
    arrivals
}

/// A port nobody listens on now.
pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A settings file for the PostgreSQL table and NATS, with `extra` lines
/// appended to `[relay]`.
pub fn settings(table: &str, port: u16, extra: &str) -> PathBuf {
    settings_with_source(&postgres_source(table), table, port, extra)
}

/// The `[source]` table body for `outbox_relay_test.<table>`.
pub fn postgres_source(table: &str) -> String {
    format!(
        "kind = \"postgres\"\nurl = \"{}\"\nschema = \"outbox_relay_test\"\ntable = \"{table}\"",
        postgres_url()
    )
}

/// A settings file with this `[source]` table body, NATS, and `extra`
/// lines appended to `[relay]`.
pub fn settings_with_source(source: &str, table: &str, port: u16, extra: &str) -> PathBuf {
    let nats = format!("kind = \"nats\"\nurl = \"{}\"", nats_url());
    settings_with(source, &nats, table, port, extra)
}

/// A settings file with these `[source]` and `[destination]` table
/// bodies, and `extra` lines appended to `[relay]`.
pub fn settings_with(
    source: &str,
    destination: &str,
    table: &str,
    port: u16,
    extra: &str,
) -> PathBuf {
    let text = format!(
        r#"
[source]
{source}

[destination]
{destination}

[http]
listen = "127.0.0.1:{port}"

[log]
level = "info"

[relay]
shutdown_timeout = 10000
{extra}
"#
    );
    let path = std::env::temp_dir().join(format!("outbox-relay-{table}-{}.toml", Uuid::now_v7()));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn relay(config: &PathBuf, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The value of a metric, summed over its labelled series.
pub async fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, text) = get(port, "/metrics").await?;
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            rest.parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

pub fn sigterm(child: &Child) {
    signal(child, "TERM");
}

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to the child.
pub fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Waits for the process to end, returning its exit code and output.
pub async fn finish(child: Child, within: Duration) -> (i32, String) {
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .expect("outbox-relay did not stop in time")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

/// `outbox-relay run` processes on one settings file, each logging to a
/// file of its own, with `env` set.
pub struct RelayProcesses {
    config: PathBuf,
    name: String,
    env: Vec<(String, String)>,
    /// The running processes.
    pub children: Vec<Child>,
    /// How many were started, restarts included.
    pub started: usize,
}

impl RelayProcesses {
    /// Starts `count` relays.
    pub fn start(config: PathBuf, name: &str, env: &[(&str, String)], count: usize) -> Self {
        let mut relays = Self {
            config,
            name: name.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            children: Vec::new(),
            started: 0,
        };
        for _ in 0..count {
            let child = relays.spawn();
            relays.children.push(child);
        }
        relays
    }

    fn log_path(&self, n: usize) -> PathBuf {
        std::env::temp_dir().join(format!("outbox-{}-relay-{n}.log", self.name))
    }

    fn spawn(&mut self) -> Child {
        self.started += 1;
        let log = std::fs::File::create(self.log_path(self.started)).unwrap();
        let mut command = relay(&self.config, &["run"]);
        command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        command.spawn().unwrap()
    }

    /// How many lines of every relay's log so far contain `text`.
    pub fn count_in_logs(&self, text: &str) -> usize {
        (1..=self.started)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .map(|log| log.lines().filter(|line| line.contains(text)).count())
            .sum()
    }

    /// Fails the test, with every relay's log, if a relay has exited.
    pub fn assert_running(&mut self) {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let logs: Vec<String> = (1..=self.started)
                    .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
                    .collect();
                panic!("a relay exited ({status}):\n{}", logs.join("\n"));
            }
        }
    }

    /// `kill -9` relay `index` and start another in its place.
    pub fn restart(&mut self, index: usize) {
        signal(&self.children[index], "KILL");
        self.children[index] = self.spawn();
    }

    /// SIGTERM to every relay; each must exit 0 within 30 s.
    pub async fn stop(&mut self) {
        for child in &self.children {
            sigterm(child);
        }
        for child in std::mem::take(&mut self.children) {
            let (code, text) = finish(child, Duration::from_secs(30)).await;
            assert_eq!(code, 0, "a relay did not stop cleanly: {text}");
        }
    }
}

/// Every message the broker delivers to a verifying consumer, duplicates
/// included, with its arrival time: a core NATS subscriber (which sees
/// every publish), a group-less Kafka consumer reading a topic from its
/// start, or an AMQP consumer of a queue.
pub struct Publishes {
    seen: Arc<Mutex<Vec<(Uuid, Instant)>>>,
    /// Kafka: per partition, the offset after the last record read.
    next_offsets: Arc<Mutex<std::collections::HashMap<i32, i64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    /// What the AMQP consumer is waiting for, for a failing test to show.
    phase: Arc<Mutex<&'static str>>,
}

impl Publishes {
    /// Subscribes to `<subject>.>` on the shared NATS server now.
    pub async fn record(subject: &str) -> Self {
        Self::record_at(&nats_url(), subject).await
    }

    /// Subscribes to `<subject>.>` on the NATS server at `url` now.
    pub async fn record_at(url: &str, subject: &str) -> Self {
        let client = connect_nats(url).await;
        let mut subscriber = client.subscribe(format!("{subject}.>")).await.unwrap();
        let seen: Arc<Mutex<Vec<(Uuid, Instant)>>> = Default::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let _client = client;
                while let Some(message) = subscriber.next().await {
                    let at = Instant::now();
                    let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
                    if let Some(id) = id.and_then(|id| id.as_str().parse().ok()) {
                        seen.lock().unwrap().push((id, at));
                    }
                }
            })
        };
        let stop = Arc::default();
        Self {
            seen,
            stop,
            task,
            phase: Arc::default(),
            next_offsets: Arc::default(),
        }
    }

    /// Reads every partition of `topic` from its start, until dropped.
    pub fn kafka(topic: &str, partitions: i32) -> Self {
        Self::kafka_at(&kafka_brokers(), &[], topic, partitions)
    }

    /// The same from the brokers at `brokers`, with the consumer
    /// `properties` (TLS, for one) added.
    pub fn kafka_at(
        brokers: &str,
        properties: &[(&str, &str)],
        topic: &str,
        partitions: i32,
    ) -> Self {
        let seen: Arc<Mutex<Vec<(Uuid, Instant)>>> = Default::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let next_offsets = Arc::default();
        let reading = (&seen, &next_offsets, &stop);
        let task = read_kafka(brokers, properties, topic, partitions, reading);
        Self {
            seen,
            stop,
            task,
            phase: Arc::default(),
            next_offsets,
        }
    }

    /// Stops reading and waits until the reader is gone. librdkafka's
    /// consumer crashed the test process (SIGSEGV) when it went on polling
    /// a tansu that restarted empty.
    pub async fn stop_reading(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        (&mut self.task).await.ok();
    }

    /// Reads the topic again, every partition from its start, adding to
    /// what arrived before: for a broker that restarted with an empty log.
    pub fn read_kafka_again(&mut self, brokers: &str, topic: &str, partitions: i32) {
        self.stop = Arc::default();
        self.next_offsets.lock().unwrap().clear();
        let reading = (&self.seen, &self.next_offsets, &self.stop);
        self.task = read_kafka(brokers, &[], topic, partitions, reading);
    }

    /// Kafka: whether the reader got past `offsets[p]` in each partition
    /// `p` (to the record before it, in a partition it is not 0).
    pub fn read_up_to(&self, offsets: &[i64]) -> bool {
        let next = self.next_offsets.lock().unwrap();
        offsets.iter().enumerate().all(|(partition, &offset)| {
            offset == 0 || next.get(&(partition as i32)).is_some_and(|&n| n >= offset)
        })
    }

    /// Takes messages off `stream` through a durable pull consumer,
    /// acknowledging each (on a work queue that removes it).
    pub async fn pull(stream: &stream::Stream) -> Self {
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("verifier".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut taken = consumer.messages().await.unwrap();
        let seen: Arc<Mutex<Vec<(Uuid, Instant)>>> = Default::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = taken.next().await {
                    let at = Instant::now();
                    let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
                    if let Some(id) = id.and_then(|id| id.as_str().parse().ok()) {
                        seen.lock().unwrap().push((id, at));
                    }
                    message.ack().await.unwrap();
                }
            })
        };
        let stop = Arc::default();
        Self {
            seen,
            stop,
            task,
            phase: Arc::default(),
            next_offsets: Arc::default(),
        }
    }

    /// Consumes `queue` (which must exist) on the shared RabbitMQ.
    pub async fn amqp(queue: &str) -> Self {
        Self::amqp_at(&amqp_url(), queue).await
    }

    /// Consumes `queue` (which must exist) on the RabbitMQ at `url`,
    /// acknowledging each delivery once recorded, and consuming again after
    /// the connection is lost (unacknowledged deliveries come back then,
    /// so none is missed).
    pub async fn amqp_at(url: &str, queue: &str) -> Self {
        use outbox_amqp::lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
        use outbox_amqp::lapin::types::FieldTable;
        use outbox_amqp::lapin::{Connection, ConnectionProperties};
        let seen: Arc<Mutex<Vec<(Uuid, Instant)>>> = Default::default();
        let phase: Arc<Mutex<&'static str>> = Arc::default();
        let (connected_tx, connected) = tokio::sync::oneshot::channel();
        let task = {
            let (seen, url, queue) = (seen.clone(), url.to_string(), queue.to_string());
            let phase = phase.clone();
            tokio::spawn(async move {
                let mut connected_tx = Some(connected_tx);
                let set = |now| *phase.lock().unwrap() = now;
                loop {
                    set("connecting");
                    // Bounded: a connection opened while the node stops
                    // or boots may never finish its handshake.
                    let consumed = async {
                        let connection =
                            Connection::connect(&url, ConnectionProperties::default()).await?;
                        let channel = connection.create_channel().await?;
                        // A stalled consumer then holds back at most this.
                        channel.basic_qos(200, BasicQosOptions::default()).await?;
                        let consumer = channel
                            .basic_consume(
                                queue.as_str().into(),
                                "outbox-verifier".into(),
                                BasicConsumeOptions::default(),
                                FieldTable::default(),
                            )
                            .await?;
                        Ok::<_, outbox_amqp::lapin::Error>((connection, channel, consumer))
                    };
                    let consumed = tokio::time::timeout(Duration::from_secs(5), consumed).await;
                    let Ok(Ok((connection, _channel, mut consumer))) = consumed else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                    set("consuming");
                    // A consumer whose node restarted does not always see
                    // its stream end (seen in CI: every delivery after a
                    // restart missed), so one idle for a second consumes
                    // anew. Deliveries not yet acknowledged come back.
                    while let Ok(Some(Ok(delivery))) =
                        tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
                    {
                        let at = Instant::now();
                        let id = delivery.properties.message_id().as_ref();
                        if let Some(id) = id.and_then(|id| id.as_str().parse().ok()) {
                            seen.lock().unwrap().push((id, at));
                        }
                        // Bounded too: an acknowledgement written as
                        // the connection ends may never be answered.
                        set("acknowledging");
                        let ack = delivery.ack(BasicAckOptions::default());
                        if !matches!(
                            tokio::time::timeout(Duration::from_secs(2), ack).await,
                            Ok(Ok(_))
                        ) {
                            break;
                        }
                        set("consuming");
                    }
                    set("closing");
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        connection.close(200, "outbox-verifier consumes anew".into()),
                    )
                    .await;
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(30), connected)
            .await
            .expect("RabbitMQ reachable")
            .unwrap();
        let stop = Arc::default();
        Self {
            seen,
            stop,
            task,
            phase,
            next_offsets: Arc::default(),
        }
    }

    /// What the consumer is doing, and whether its task ended: for a
    /// failing test's message.
    pub fn consumer_state(&self) -> String {
        format!(
            "consumer: {}, task ended: {}",
            self.phase.lock().unwrap(),
            self.task.is_finished()
        )
    }

    /// Every publish so far: id and arrival, in arrival order.
    pub fn arrivals(&self) -> Vec<(Uuid, Instant)> {
        self.seen.lock().unwrap().clone()
    }

    /// The record itself, growing as publishes arrive, for a consumer that
    /// follows it.
    pub fn record_handle(&self) -> Arc<Mutex<Vec<(Uuid, Instant)>>> {
        self.seen.clone()
    }

    /// How many publishes arrived so far, duplicates included.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Whether every one of `messages` has arrived at least once.
    pub fn has_all(&self, messages: &[Message]) -> bool {
        let seen = self.seen.lock().unwrap();
        let ids: std::collections::HashSet<&Uuid> = seen.iter().map(|(id, _)| id).collect();
        messages.iter().all(|m| ids.contains(&m.id))
    }

    /// (key, id) of every publish, for `assert_order_per_key`.
    pub fn keyed(&self, messages: &[Message]) -> Vec<(String, Uuid)> {
        let key_of: std::collections::HashMap<Uuid, &str> = messages
            .iter()
            .map(|m| (m.id, m.ordering_key.as_str()))
            .collect();
        self.arrivals()
            .iter()
            .map(|(id, _)| {
                (
                    key_of.get(id).expect("only messages we wrote").to_string(),
                    *id,
                )
            })
            .collect()
    }
}

/// What a Kafka reader fills in: the arrivals, the next offset of each
/// partition, and the flag that stops it.
type Reading<'a> = (
    &'a Arc<Mutex<Vec<(Uuid, Instant)>>>,
    &'a Arc<Mutex<std::collections::HashMap<i32, i64>>>,
    &'a Arc<AtomicBool>,
);

/// A group-less consumer of every partition of `topic` from its start,
/// noting each record's message id until told to stop, then taking what
/// it already fetched.
fn read_kafka(
    brokers: &str,
    properties: &[(&str, &str)],
    topic: &str,
    partitions: i32,
    (seen, next_offsets, stop): Reading<'_>,
) -> tokio::task::JoinHandle<()> {
    use outbox_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    use outbox_kafka::rdkafka::message::{Headers, Message as _};
    use outbox_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("outbox-verifier-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        // Should the reader's offset fall out of the log's range, it reads
        // the log again rather than skip to its end.
        .set("auto.offset.reset", "earliest");
    for (name, value) in properties {
        config.set(*name, *value);
    }
    let consumer: BaseConsumer = config.create().expect("Kafka consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).expect("assign");
    let (seen, next_offsets, stop) = (seen.clone(), next_offsets.clone(), stop.clone());
    tokio::task::spawn_blocking(move || loop {
        let stopping = stop.load(Ordering::Relaxed);
        let record = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(record)) => record,
            None if stopping => return,
            _ => continue,
        };
        let at = Instant::now();
        let id = record.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == outbox_core::HEADER_MESSAGE_ID)
                .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
        });
        if let Some(id) = id {
            seen.lock().unwrap().push((id, at));
        }
        next_offsets
            .lock()
            .unwrap()
            .insert(record.partition(), record.offset() + 1);
    })
}

impl Drop for Publishes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}
