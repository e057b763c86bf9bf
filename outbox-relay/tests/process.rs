//! The `outbox-relay` binary as a process, against the real PostgreSQL and
//! NATS JetStream that `scripts/services.sh up` starts. Each test owns its
//! table, stream and port.

mod support;

use std::time::Duration;

use outbox_core::{Failure, Source};
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_non_zero_naming_the_setting() {
    let config = settings("bad_config", spare_port(), "batch_size = 0");
    let (code, text) = finish(relay(&config, &["run"]).spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("relay.batch_size"), "{text}");

    let config = settings("bad_config", spare_port(), "");
    let mut command = relay(&config, &["check"]);
    command.env("OUTBOX_DESTINATION__MODE", "fastest");
    let (code, text) = finish(command.spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("destination.mode"), "{text}");

    // A setting of another kind of broker, refused by name.
    let mut command = relay(&config, &["check"]);
    command.env("OUTBOX_DESTINATION__BROKERS", "127.0.0.1:9092");
    let (code, text) = finish(command.spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("destination.brokers"), "{text}");

    for command in ["check", "run"] {
        let mut command = relay(&config, &[command]);
        command.env("OUTBOX_SOURCE__TABLE", "orders; drop table users");
        let (code, text) = finish(command.spawn().unwrap(), DEADLINE).await;
        assert_eq!(code, 2, "{text}");
        assert!(text.contains("source.table"), "{text}");
    }

    let mut command = relay(&config, &["check"]);
    command.env("OUTBOX_DESTINATION__CLOUD_EVENTS__MODE", "binary");
    command.env("OUTBOX_DESTINATION__CLOUD_EVENTS__SOURCE", " ");
    let (code, text) = finish(command.spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("destination.cloud_events.source"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_counts_in_metrics_and_loses_nothing_on_sigterm() {
    let (outbox, pool) = table("relay_process").await;
    let nats_stream = stream("RELAY_PROCESS", "relay-process").await;
    let messages = numbered_messages("relay-process.orders", 200, 150);
    commit(&outbox, &pool, &messages).await;
    let total = messages.len() as u64;

    // First run: SIGTERM once part of the backlog went out.
    let port = spare_port();
    let config = settings("relay_process", port, "batch_size = 200");
    let child = relay(&config, &["run"]).spawn().unwrap();
    let started = eventually(DEADLINE, || async {
        metric(port, "outbox_published_total").await.unwrap_or(0.0) >= 2000.0
    })
    .await;
    assert!(started, "the relay did not publish");
    let (status, body) = get(port, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    sigterm(&child);
    let (code, text) = finish(child, Duration::from_secs(20)).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("stopping"), "{text}");

    let backlog = outbox.backlog().await.unwrap();
    let stored = nats_stream.clone().info().await.unwrap().state.messages;
    println!(
        "after SIGTERM: {stored} in the stream, {} waiting",
        backlog.waiting
    );
    assert!(
        backlog.waiting > 0,
        "the SIGTERM came too late to test anything"
    );
    assert_eq!(
        stored + backlog.waiting,
        total,
        "a message was lost or acknowledged twice"
    );

    // Second run drains the rest; its metrics count exactly that.
    let port = spare_port();
    let config = settings("relay_process", port, "batch_size = 200");
    let child = relay(&config, &["run"]).spawn().unwrap();
    let drained = eventually(DEADLINE, || async {
        outbox.backlog().await.unwrap().waiting == 0
    })
    .await;
    assert!(drained, "the second run did not drain the outbox");
    let counted = eventually(Duration::from_secs(10), || async {
        metric(port, "outbox_published_total").await == Some(backlog.waiting as f64)
    })
    .await;
    let (_, text) = get(port, "/metrics").await.unwrap();
    assert!(
        counted,
        "published_total is not {}:\n{text}",
        backlog.waiting
    );
    assert!(
        text.contains("outbox_end_to_end_latency_seconds_count"),
        "{text}"
    );
    sigterm(&child);
    let (code, output) = finish(child, Duration::from_secs(20)).await;
    assert_eq!(code, 0, "{output}");

    let arrivals = read(&nats_stream, &messages).await;
    assert_eq!(arrivals.len() as u64, total);
    assert_order_per_key(&messages, &arrivals);
}

/// `outbox-relay drain`: delivers what waits, in order per key, prints what
/// became of it and exits; a second drain finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delivers_what_waits_and_exits() {
    let (outbox, pool) = table("relay_drain").await;
    let nats_stream = stream("RELAY_DRAIN", "relay-drain").await;
    let messages = numbered_messages("relay-drain.orders", 10, 5);
    commit(&outbox, &pool, &messages).await;
    let config = settings("relay_drain", spare_port(), "");
    for published in [50, 0] {
        let (code, text) = finish(relay(&config, &["drain"]).spawn().unwrap(), DEADLINE).await;
        assert_eq!(code, 0, "{text}");
        assert!(
            text.contains(&format!(
                "published {published}\nretried 0\ndead_lettered 0\n"
            )),
            "{text}"
        );
    }
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
    let arrivals = read(&nats_stream, &messages).await;
    assert_eq!(arrivals.len(), messages.len());
    assert_order_per_key(&messages, &arrivals);
}

/// `[destination.cloud_events]` alone makes the binary publish CloudEvents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_events_are_published_by_settings_alone() {
    let (outbox, pool) = table("relay_cloud_events").await;
    let nats_stream = stream("RELAY_CLOUD_EVENTS", "relay-cloud-events").await;
    let messages = numbered_messages("relay-cloud-events.orders", 3, 2);
    commit(&outbox, &pool, &messages).await;
    let destination = format!(
        "kind = \"nats\"\nurl = \"{}\"\n[destination.cloud_events]\nmode = \"structured\"\n\
         source = \"/shop/orders\"",
        nats_url()
    );
    let source = postgres_source("relay_cloud_events");
    let config = settings_with(
        &source,
        &destination,
        "relay_cloud_events",
        spare_port(),
        "",
    );
    let (code, text) = finish(relay(&config, &["drain"]).spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 0, "{text}");
    for seq in 1..=messages.len() as u64 {
        let stored = nats_stream.get_raw_message(seq).await.unwrap();
        let event: serde_json::Value = serde_json::from_slice(&stored.payload).unwrap();
        let sent = messages
            .iter()
            .find(|m| event["id"] == m.id.to_string())
            .unwrap_or_else(|| panic!("not a message sent: {event}"));
        assert_eq!(event["source"], "/shop/orders");
        assert_eq!(event["type"], "TestEvent");
        assert_eq!(event["subject"], sent.ordering_key);
        assert_eq!(
            stored.headers.get("content-type").map(|v| v.as_str()),
            Some(outbox_core::CLOUD_EVENTS_JSON)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_counted_and_requeued() {
    let (outbox, pool) = table("relay_dead").await;
    let messages = numbered_messages("relay-dead.orders", 2, 1);
    commit(&outbox, &pool, &messages).await;
    let source = outbox.source().await.unwrap();
    let claimed = source.claim(10).await.unwrap();
    let poison = claimed[0].clone();
    source
        .dead_letter(
            claimed.id(),
            &[Failure {
                item: poison.clone(),
                error: "broker refused: too large".into(),
                attempts: 3,
                retry_after: Duration::ZERO,
            }],
        )
        .await
        .unwrap();
    source.release(claimed.id(), &claimed[1..]).await.unwrap();

    let config = settings("relay_dead", spare_port(), "");
    let output = |args: &'static [&'static str]| {
        let config = config.clone();
        async move {
            let (code, text) = finish(relay(&config, args).spawn().unwrap(), DEADLINE).await;
            assert_eq!(code, 0, "{args:?}: {text}");
            text
        }
    };
    assert_eq!(output(&["dead-letters", "count"]).await.trim(), "1");
    let listed = output(&["dead-letters", "list"]).await;
    assert!(listed.contains(&poison.id.to_string()), "{listed}");
    assert!(listed.contains("broker refused: too large"), "{listed}");
    assert!(listed.contains(&poison.ordering_key), "{listed}");
    let backlog = output(&["backlog"]).await;
    assert!(
        backlog.contains("waiting 1\n") && backlog.contains("dead_letters 1"),
        "{backlog}"
    );
    let waiting = output(&["waiting", "--limit", "5"]).await;
    assert_eq!(waiting.lines().count(), 1, "{waiting}");
    assert!(
        waiting.starts_with(&claimed[1].id.to_string())
            && waiting.contains(&claimed[1].ordering_key),
        "{waiting}"
    );
    let requeued = finish(
        relay(
            &config,
            &["dead-letters", "requeue", &poison.id.to_string()],
        )
        .spawn()
        .unwrap(),
        DEADLINE,
    )
    .await;
    assert_eq!(requeued.0, 0, "{}", requeued.1);
    assert!(requeued.1.contains("requeued 1"), "{}", requeued.1);
    assert_eq!(output(&["dead-letters", "count"]).await.trim(), "0");
    assert_eq!(outbox.backlog().await.unwrap().waiting, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_output() {
    let (outbox, pool) = table("relay_secret").await;
    let _stream = stream("RELAY_SECRET", "relay-secret").await;
    let messages = numbered_messages("relay-secret.orders", 5, 2);
    commit(&outbox, &pool, &messages).await;
    let port = spare_port();
    let config = settings("relay_secret", port, "");
    // PostgreSQL here trusts loopback, so any password connects.
    let url = postgres_url().replacen("://postgres@", "://postgres:Sup3rS3cret-pw@", 1);
    assert!(
        url.contains("Sup3rS3cret-pw"),
        "OUTBOX_POSTGRES_URL has an unexpected shape: {url}"
    );
    // nats-server here has no authorization, so any user connects.
    let nats = nats_url().replacen("://", "://outbox:Sup3rS3cret-nats@", 1);
    for args in [&["check"][..], &["run"][..]] {
        let mut command = relay(&config, args);
        command
            .env("OUTBOX_SOURCE__URL", &url)
            .env("OUTBOX_DESTINATION__URL", &nats)
            .env("OUTBOX_LOG__LEVEL", "trace");
        let child = command.spawn().unwrap();
        if args == ["run"] {
            let drained = eventually(DEADLINE, || async {
                outbox.backlog().await.unwrap().waiting == 0
            })
            .await;
            assert!(
                drained,
                "the relay did not drain with the password in its URL"
            );
            sigterm(&child);
        }
        let (code, text) = finish(child, DEADLINE).await;
        assert_eq!(code, 0, "{text}");
        for secret in ["Sup3rS3cret-pw", "Sup3rS3cret-nats"] {
            assert!(
                !text.contains(secret),
                "the password {secret} was printed:\n{text}"
            );
        }
        assert!(
            text.contains("***@"),
            "the URL is not shown redacted:\n{text}"
        );
    }
}

/// The same at `trace` for a MySQL source and a RabbitMQ destination, each
/// with a user of its own whose password is in its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_and_rabbitmq_credentials_never_reach_the_output() {
    const MYSQL_SECRET: &str = "Sup3rS3cret-my";
    const AMQP_SECRET: &str = "Sup3rS3cret-amqp";
    let (outbox, pool) = mysql_table("relay_secret_my").await;
    let root = mysql_url();
    for host in ["%", "localhost"] {
        for statement in [
            format!("CREATE USER IF NOT EXISTS 'outbox_secret'@'{host}'"),
            format!("ALTER USER 'outbox_secret'@'{host}' IDENTIFIED BY '{MYSQL_SECRET}'"),
            format!("GRANT ALL ON *.* TO 'outbox_secret'@'{host}'"),
        ] {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
    }
    let queue = format!("relay_secret_{}", uuid::Uuid::now_v7().simple());
    let _channel = amqp_queue(&queue).await;
    rabbitmqctl(&["add_user", "outbox_secret", AMQP_SECRET]);
    rabbitmqctl(&["change_password", "outbox_secret", AMQP_SECRET]);
    rabbitmqctl(&[
        "set_permissions",
        "-p",
        "/",
        "outbox_secret",
        ".*",
        ".*",
        ".*",
    ]);
    let messages = numbered_messages(&queue, 5, 2);
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_many(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();

    let mysql = root.replacen("://root@", &format!("://outbox_secret:{MYSQL_SECRET}@"), 1);
    let rabbitmq = amqp_url().replacen(
        "://guest:guest@",
        &format!("://outbox_secret:{AMQP_SECRET}@"),
        1,
    );
    assert!(
        mysql.contains(MYSQL_SECRET) && rabbitmq.contains(AMQP_SECRET),
        "OUTBOX_MYSQL_URL or OUTBOX_AMQP_URL has an unexpected shape"
    );
    let config = settings_with(
        &format!("kind = \"mysql\"\nurl = \"{mysql}\"\ntable = \"relay_secret_my\""),
        &format!("kind = \"amqp\"\nurl = \"{rabbitmq}\""),
        "relay_secret_my",
        spare_port(),
        "",
    );
    // To a file: `trace` fills a pipe nobody reads until the end, and the
    // relay would stop on its next log line.
    let log =
        std::env::temp_dir().join(format!("outbox-relay-secret-{}.log", uuid::Uuid::now_v7()));
    let file = std::fs::File::create(&log).unwrap();
    let mut command = relay(&config, &["run"]);
    command
        .env("OUTBOX_LOG__LEVEL", "trace")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let child = command.spawn().unwrap();
    let drained = eventually(DEADLINE, || async {
        outbox.backlog().await.unwrap().waiting == 0
    })
    .await;
    sigterm(&child);
    let (code, _) = finish(child, DEADLINE).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(drained, "the relay did not drain:\n{text}");
    assert_eq!(code, 0, "{text}");
    for secret in [MYSQL_SECRET, AMQP_SECRET] {
        // As text, and as a list of its bytes (how a client's `Debug` of a
        // frame shows it).
        let bytes: Vec<String> = secret.bytes().map(|b| b.to_string()).collect();
        for shown in [secret.to_string(), bytes.join(", ")] {
            if let Some(at) = text.find(&shown) {
                let line = text[..at].rsplit('\n').next().unwrap_or_default();
                panic!("the password {secret} was printed as {shown:?}, in: {line}");
            }
        }
    }
    assert!(
        text.contains("***@"),
        "the URL is not shown redacted:\n{text}"
    );
}

/// Runs `rabbitmqctl` on the node the tests use; "already exists" is fine.
fn rabbitmqctl(args: &[&str]) {
    let mut command = std::process::Command::new("rabbitmqctl");
    if let Ok(node) = std::env::var("OUTBOX_RABBITMQ_NODE") {
        if !node.is_empty() {
            command.args(["-n", &node]);
        }
    }
    let output = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || text.contains("already exists"),
        "rabbitmqctl {args:?} failed: {text}"
    );
}

/// The binary with the other destination kinds, from a SQLite file (no
/// database server): every message acknowledged by the broker, counted in
/// `/metrics`, the outbox emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_from_sqlite_to_kafka_and_rabbitmq() {
    let kafka_topic = format!("relay-sqlite-{}", uuid::Uuid::now_v7().simple());
    let kafka = outbox_kafka::KafkaDestination::new(outbox_kafka::KafkaConfig {
        brokers: kafka_brokers(),
        ..outbox_kafka::KafkaConfig::default()
    })
    .unwrap();
    kafka
        .create_topics(&[&kafka_topic], 1, 1)
        .await
        .expect("Kafka-protocol broker reachable");
    let kafka_settings = format!(
        "kind = \"kafka\"\nbrokers = \"{}\"\n[destination.properties]\n\"linger.ms\" = 1",
        kafka_brokers()
    );

    let queue = format!("relay_sqlite_{}", uuid::Uuid::now_v7().simple());
    let channel = amqp_queue(&queue).await;
    let amqp_settings = format!("kind = \"amqp\"\nurl = \"{}\"", amqp_url());

    for (destination, address) in [
        (kafka_settings, kafka_topic.clone()),
        (amqp_settings, queue.clone()),
    ] {
        let path = std::env::temp_dir().join(format!("outbox-relay-{}.db", uuid::Uuid::now_v7()));
        let pool = outbox_sqlite::connect(path.to_str().unwrap())
            .await
            .unwrap();
        let outbox =
            outbox_sqlite::SqliteOutbox::new(outbox_sqlite::SqliteConfig::default(), pool.clone())
                .unwrap();
        outbox.migrate().await.unwrap();
        let messages = numbered_messages(&address, 10, 10);
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue_many(&mut tx, &messages).await.unwrap();
        tx.commit().await.unwrap();

        let port = spare_port();
        let source = format!("kind = \"sqlite\"\nurl = \"{}\"", path.display());
        let config = settings_with_source(&source, "sqlite", port, "poll_interval_max = 100")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&config).unwrap();
        let nats = format!("kind = \"nats\"\nurl = \"{}\"", nats_url());
        std::fs::write(&config, text.replace(&nats, &destination)).unwrap();
        let child = relay(&config.into(), &["run"]).spawn().unwrap();
        let drained = eventually(DEADLINE, || async {
            outbox.backlog().await.unwrap().waiting == 0
        })
        .await;
        // The counter moves after the rows are settled, so it is awaited too.
        let expected = Some(messages.len() as f64);
        let counted = eventually(DEADLINE, || async {
            metric(port, "outbox_published_total").await == expected
        })
        .await;
        let published = metric(port, "outbox_published_total").await;
        sigterm(&child);
        let (code, text) = finish(child, Duration::from_secs(30)).await;
        assert!(drained, "{address}: the outbox did not drain:\n{text}");
        assert_eq!(code, 0, "{text}");
        assert!(
            counted,
            "{address}: published_total is {published:?}:\n{text}"
        );
        assert_eq!(outbox.count_dead_letters().await.unwrap(), 0, "{text}");
    }
    use outbox_amqp::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use outbox_amqp::lapin::types::FieldTable;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let stored = channel
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    assert_eq!(stored, 100, "the queue holds every message once");
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// In leader-only mode a leader stopped with SIGSTOP keeps its socket open,
/// so without a server-side bound it held the leader lock for good
/// (PostgreSQL) or for `wait_timeout`, 8 hours by default (MySQL), and the
/// standby delivered nothing. The server ends the leader's idle connection
/// after the lease; the standby delivers within a few leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_postgres_leader_loses_leadership_within_a_few_leases() {
    let (outbox, pool) = table("relay_leader").await;
    let source = format!(
        "{}\nleader_only = true\nlease_ms = 2000",
        postgres_source("relay_leader")
    );
    stopped_leader_hands_over(&source, "relay_leader", |messages| {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        async move { commit(&outbox, &pool, &messages).await }
    })
    .await;
}

/// The same with MariaDB's `GET_LOCK`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_mysql_leader_loses_leadership_within_a_few_leases() {
    let (outbox, pool) = mysql_table("relay_leader").await;
    let url = mysql_url();
    let source = format!(
        "kind = \"mysql\"\nurl = \"{url}\"\ntable = \"relay_leader\"\nleader_only = true\nlease_ms = 2000"
    );
    stopped_leader_hands_over(&source, "relay_leader_my", |messages| {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            outbox.enqueue_many(&mut tx, &messages).await.unwrap();
            tx.commit().await.unwrap();
        }
    })
    .await;
}

async fn stopped_leader_hands_over<F, Fut>(source: &str, name: &str, commit: F)
where
    F: Fn(Vec<outbox_core::Message>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let subject = name.replace('_', "-");
    let _stream = stream(&name.to_uppercase(), &subject).await;
    commit(numbered_messages(&format!("{subject}.orders"), 5, 2)).await;
    let relay_settings = "send_timeout = 1000\npoll_interval_max = 200";
    let (leader_port, standby_port) = (spare_port(), spare_port());
    let leader_config = settings_with_source(source, name, leader_port, relay_settings);
    let standby_config = settings_with_source(source, name, standby_port, relay_settings);
    let leader = relay(&leader_config, &["run"]).spawn().unwrap();
    let led = eventually(DEADLINE, || async {
        metric(leader_port, "outbox_published_total")
            .await
            .unwrap_or(0.0)
            >= 10.0
    })
    .await;
    assert!(led, "the first relay did not take the lead and deliver");
    let standby = relay(&standby_config, &["run"]).spawn().unwrap();
    let standing_by = eventually(DEADLINE, || async {
        get(standby_port, "/healthz").await.is_some()
    })
    .await;
    assert!(standing_by, "the standby did not start");
    signal(&leader, "STOP");
    let stopped = std::time::Instant::now();
    commit(numbered_messages(&format!("{subject}.orders"), 5, 2)).await;
    let taken_over = eventually(Duration::from_secs(20), || async {
        metric(standby_port, "outbox_published_total")
            .await
            .unwrap_or(0.0)
            >= 10.0
    })
    .await;
    let took = stopped.elapsed();
    signal(&leader, "CONT");
    sigterm(&leader);
    sigterm(&standby);
    let _ = finish(leader, DEADLINE).await;
    let _ = finish(standby, DEADLINE).await;
    assert!(
        taken_over,
        "the standby delivered nothing in 20 s while the leader was stopped"
    );
    println!("{name}: the standby delivered {took:?} after the leader stopped (lease 2 s)");
}

/// The standalone relay authenticates to NATS with a token of its
/// settings (`destination.token`), not only one inside the URL: a
/// nats-server of the test's own that lets in only that token receives
/// every message, and the token never reaches the output, at trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_authenticates_to_nats_with_a_token_of_its_settings() {
    use support::servers::OwnNats;
    let token = "T0ken-Sup3rS3cret";
    let nats = OwnNats::start_with_token(token).await;
    let authenticated = nats.url().replacen("://", &format!("://{token}@"), 1);
    let _stream = stream_at(&authenticated, "RELAY_TOKEN", "relay-token").await;
    let publishes = Publishes::record_at(&authenticated, "relay-token").await;
    let (outbox, pool) = table("relay_token").await;
    let messages = numbered_messages("relay-token.orders", 5, 2);
    commit(&outbox, &pool, &messages).await;
    let destination = format!(
        "kind = \"nats\"\nurl = \"{}\"\ntoken = \"{token}\"",
        nats.url()
    );
    let config = settings_with(
        &postgres_source("relay_token"),
        &destination,
        "relay_token",
        spare_port(),
        "",
    );
    let mut command = relay(&config, &["run"]);
    command.env("OUTBOX_LOG__LEVEL", "trace");
    let child = command.spawn().unwrap();
    let arrived = eventually(DEADLINE, || async { publishes.has_all(&messages) }).await;
    sigterm(&child);
    let (code, text) = finish(child, DEADLINE).await;
    assert!(
        arrived,
        "nothing reached the server that takes the token:\n{text}"
    );
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains(token), "the token was printed:\n{text}");
}

/// A relay started before its broker is up comes up by itself: it stays
/// running, `/healthz` answers 503 saying what it waits for, and once the
/// broker starts it delivers and turns healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_before_its_broker_comes_up_by_itself() {
    use support::servers::OwnNats;
    let (outbox, pool) = table("relay_early").await;
    let messages = numbered_messages("relay-early.orders", 5, 2);
    commit(&outbox, &pool, &messages).await;
    // The stream is made first; the server is then down for 6 s, and the
    // relay starts in that window.
    let mut nats = OwnNats::start().await;
    let url = nats.url();
    let stream = stream_at(&url, "RELAY_EARLY", "relay-early").await;
    let broker_down = tokio::spawn(async move {
        nats.restart(Duration::from_secs(6)).await;
        nats
    });
    let address = url.trim_start_matches("nats://").to_string();
    let down = eventually(DEADLINE, || async {
        tokio::net::TcpStream::connect(&address).await.is_err()
    })
    .await;
    assert!(down, "the broker did not stop");
    let http_port = spare_port();
    let destination = format!("kind = \"nats\"\nurl = \"{url}\"");
    let config = settings_with(
        &postgres_source("relay_early"),
        &destination,
        "relay_early",
        http_port,
        "",
    );
    let mut child = relay(&config, &["run"]).spawn().unwrap();
    let waiting = eventually(Duration::from_secs(5), || async {
        matches!(get(http_port, "/healthz").await, Some((503, body)) if body.contains("broker"))
    })
    .await;
    let exited = child.try_wait().unwrap();
    let _nats = broker_down.await.unwrap();
    let delivered = eventually(DEADLINE, || async {
        outbox.backlog().await.unwrap().waiting == 0
    })
    .await;
    let healthy = eventually(DEADLINE, || async {
        matches!(get(http_port, "/healthz").await, Some((200, _)))
    })
    .await;
    sigterm(&child);
    let (code, text) = finish(child, DEADLINE).await;
    assert!(
        exited.is_none(),
        "the relay exited while its broker was down:\n{text}"
    );
    assert!(
        waiting,
        "/healthz did not say the relay waits for its broker:\n{text}"
    );
    assert!(
        delivered,
        "nothing was delivered once the broker came up:\n{text}"
    );
    assert!(healthy, "/healthz never turned healthy:\n{text}");
    assert_eq!(code, 0, "{text}");
    assert_order_per_key(&messages, &read(&stream, &messages).await);
    assert_eq!(outbox.count_dead_letters().await.unwrap(), 0);
}

/// The WAL outbox by settings alone (`kind = "postgres_wal"`): `migrate`
/// creates the slot, `drain` delivers what the writers emitted (a
/// malformed envelope among them, dead-lettered with its reason), a second
/// drain finds nothing, `backlog` shows the slot's lag, and `dead-letters
/// list` shows the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_outbox_is_relayed_by_settings_alone() {
    let name = "relay_wal";
    let url = postgres_wal_url();
    let pool = fresh_wal(name).await;
    let source = format!(
        "kind = \"postgres_wal\"\nurl = \"{url}\"\nprefix = \"{name}\"\nslot = \"{name}\"\n\
         publication = \"{name}\"\nfailures_table = \"{name}\"\nmax_lag_bytes = 1073741824"
    );
    let config = settings_with_source(&source, name, spare_port(), "");
    let (code, text) = finish(relay(&config, &["migrate"]).spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 0, "{text}");

    let nats_stream = stream("RELAY_WAL", "relay-wal").await;
    let messages = numbered_messages("relay-wal.orders", 10, 5);
    let outbox = outbox_postgres::WalOutbox::new(
        outbox_postgres::WalConfig {
            url: url.clone(),
            prefix: name.into(),
            slot: name.into(),
            publication: name.into(),
            failures_table: name.into(),
            ..Default::default()
        },
        pool.clone(),
    )
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_many(&mut tx, &messages).await.unwrap();
    sqlx::query("SELECT pg_logical_emit_message(true, $1, 'no envelope'::bytea)")
        .bind(name)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    for published in [50, 0] {
        let (code, text) = finish(relay(&config, &["drain"]).spawn().unwrap(), DEADLINE).await;
        assert_eq!(code, 0, "{text}");
        assert!(text.contains(&format!("published {published}\n")), "{text}");
    }
    let arrivals = read(&nats_stream, &messages).await;
    assert_eq!(arrivals.len(), messages.len());
    assert_order_per_key(&messages, &arrivals);
    let (code, text) = finish(relay(&config, &["backlog"]).spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("log_lag_bytes "), "{text}");
    let (code, text) = finish(
        relay(&config, &["dead-letters", "list"]).spawn().unwrap(),
        DEADLINE,
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("malformed envelope"), "{text}");
    assert!(
        slot_dropped(&pool, name).await,
        "the slot stayed active after the relay exited"
    );
}

/// A pool on the logical cluster, with the slot and publication `name` and
/// the tables `name` and `name_failures` of an earlier run gone.
async fn fresh_wal(name: &str) -> sqlx::PgPool {
    let pool = sqlx::PgPool::connect(&postgres_wal_url())
        .await
        .expect("logical PostgreSQL");
    assert!(
        slot_dropped(&pool, name).await,
        "an earlier run's relay still reads the slot"
    );
    sqlx::raw_sql(&format!(
        "DROP PUBLICATION IF EXISTS {name}; DROP TABLE IF EXISTS public.{name}; \
         DROP TABLE IF EXISTS public.{name}_failures"
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool
}

/// A table-based outbox moved to the WAL outbox's table mode while its
/// writers go on, by the README's steps: `migrate` for the WAL relay
/// creates the slot and warns of the rows already waiting (they are not in
/// the log it reads); the table-based relay drains the table; the WAL
/// relay then reads what was committed since the slot. Every message
/// arrives, in order per key (JetStream drops the copies the WAL relay
/// sends of rows the table relay delivered, by their message id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_outbox_moves_to_the_log_and_loses_nothing() {
    let name = "relay_switch";
    let url = postgres_wal_url();
    let pool = fresh_wal(name).await;
    let writer = outbox_postgres::PostgresOutbox::new(
        outbox_postgres::PostgresConfig {
            table: name.into(),
            ..Default::default()
        },
        pool.clone(),
    )
    .unwrap();
    writer.migrate().await.unwrap();
    let messages = numbered_messages("relay-switch.orders", 5, 4);
    let commit = |messages: &'static [outbox_core::Message]| {
        let (pool, writer) = (pool.clone(), writer.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            writer.enqueue_many(&mut tx, messages).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    let messages: &'static [outbox_core::Message] = Vec::leak(messages);
    commit(&messages[..10]).await;

    let wal = settings_with_source(
        &format!(
            "kind = \"postgres_wal\"\nurl = \"{url}\"\ntable = \"{name}\"\nread_table = true\n\
             prefix = \"{name}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\
             failures_table = \"{name}_failures\""
        ),
        name,
        spare_port(),
        "",
    );
    let (code, text) = finish(relay(&wal, &["migrate"]).spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("holds 10 rows") && text.contains("not in the log"),
        "migrate did not warn of the rows before the slot: {text}"
    );
    commit(&messages[10..]).await;

    let nats_stream = stream("RELAY_SWITCH", "relay-switch").await;
    let table = settings_with_source(
        &format!("kind = \"postgres\"\nurl = \"{url}\"\ntable = \"{name}\""),
        name,
        spare_port(),
        "",
    );
    let (code, text) = finish(relay(&table, &["drain"]).spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("published 20\n"), "{text}");
    let (code, text) = finish(relay(&wal, &["drain"]).spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("published 10\n"),
        "the rows since the slot: {text}"
    );
    let arrivals = read(&nats_stream, messages).await;
    assert_eq!(arrivals.len(), messages.len());
    assert_order_per_key(messages, &arrivals);

    let (code, text) = finish(relay(&wal, &["migrate"]).spawn().unwrap(), DEADLINE).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains("not in the log"),
        "a second migrate warned: {text}"
    );
    assert!(
        slot_dropped(&pool, name).await,
        "the slot stayed active after the relay exited"
    );
}

/// Drops the slot `name` if it exists, once no relay reads it (false if
/// one still does past the deadline).
async fn slot_dropped(pool: &sqlx::PgPool, name: &str) -> bool {
    eventually(DEADLINE, || async {
        sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(name)
        .execute(pool)
        .await
        .is_ok()
    })
    .await
}

/// `lanes` by settings alone: a relay whose table lacks the lane index
/// stops at its start naming the setting; three relays that migrate with
/// `lanes = 8` create it and deliver everything, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_with_lanes_migrate_their_index_and_deliver_in_order() {
    let (outbox, pool) = table("relay_lanes").await;
    let nats_stream = stream("RELAY_LANES", "relay-lanes").await;
    let messages = numbered_messages("relay-lanes.orders", 100, 20);
    commit(&outbox, &pool, &messages).await;

    let config = settings("relay_lanes", spare_port(), "batch_size = 50");
    let mut command = relay(&config, &["run"]);
    command.env("OUTBOX_SOURCE__LANES", "8");
    let (code, text) = finish(command.spawn().unwrap(), DEADLINE).await;
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("lanes = 8") && text.contains("relay_lanes_l8"),
        "{text}"
    );

    let children: Vec<_> = (0..3)
        .map(|_| {
            let config = settings("relay_lanes", spare_port(), "batch_size = 50");
            let mut command = relay(&config, &["run"]);
            command.env("OUTBOX_SOURCE__LANES", "8");
            command.env("OUTBOX_SOURCE__MIGRATE", "true");
            command.spawn().unwrap()
        })
        .collect();
    let drained = eventually(DEADLINE, || async {
        outbox.backlog().await.unwrap().waiting == 0
    })
    .await;
    for child in children {
        sigterm(&child);
        let (code, text) = finish(child, Duration::from_secs(20)).await;
        assert_eq!(code, 0, "{text}");
    }
    assert!(drained, "three relays with lanes did not drain the outbox");
    let arrivals = read(&nats_stream, &messages).await;
    assert_eq!(arrivals.len(), messages.len());
    assert_order_per_key(&messages, &arrivals);
}
