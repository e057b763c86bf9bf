//! TLS end to end: the `outbox-relay` binary reads a PostgreSQL, or a
//! MariaDB, of the test's own that takes connections over TLS only, and
//! publishes to a nats-server of its own that requires TLS, to a RabbitMQ
//! node of its own that takes `amqps://` only, or to a Kafka-protocol
//! broker of its own reached over TLS only, each with a certificate from a
//! CA made for the test and trusted through the relay's settings.

mod support;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use outbox_core::Message;
use outbox_mysql::{MysqlConfig, MysqlOutbox};
use outbox_postgres::{PostgresConfig, PostgresOutbox, WalConfig, WalOutbox};
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages};
use support::certificates::Certificates;
use support::servers::{OwnKafkaTls, OwnMariadb, OwnNats, OwnPostgres, OwnRabbit};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_postgres_and_nats_over_tls_only() {
    let certificates = Certificates::generate("relay");
    let postgres = OwnPostgres::start_tls(&certificates).await;
    let ca = certificates.ca().display().to_string();

    // Plain TCP is refused, so whatever connects below is encrypted.
    let plain = sqlx::PgPool::connect(&format!("{}?sslmode=disable", postgres.url())).await;
    let refused = plain.expect_err("a plain connection must be refused");
    assert!(refused.to_string().contains("no encryption"), "{refused}");

    let url = format!("{}?sslmode=verify-full&sslrootcert={ca}", postgres.url());
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("PostgreSQL over TLS, the certificate verified");
    let outbox = PostgresOutbox::new(
        PostgresConfig {
            table: "tls".into(),
            ..PostgresConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.unwrap();

    let nats = OwnNats::start_tls(&certificates).await;
    let stream = tls_stream(&nats, &certificates, "TLS", "tls").await;
    let messages = numbered_messages("tls.orders", 20, 10);
    commit(&outbox, &pool, &messages).await;

    let source = format!("kind = \"postgres\"\nurl = \"{url}\"\ntable = \"tls\"");
    let destination = format!(
        "kind = \"nats\"\nurl = \"{}\"\nroot_certificates = \"{ca}\"",
        nats.url()
    );
    relay_delivers(&source, &destination, "tls", &stream, &messages).await;
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reads_the_log_over_tls_only() {
    install_crypto_provider();
    let certificates = Certificates::generate("relay-wal");
    let postgres = OwnPostgres::start_logical_tls(&certificates).await;
    let ca = certificates.ca().display().to_string();
    // By name, not address: the replication client checks the name.
    let url = postgres.url().replace("127.0.0.1", "localhost");
    let url = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("PostgreSQL over TLS, the certificate verified");
    let outbox = WalOutbox::new(
        WalConfig {
            url: url.clone(),
            prefix: "tls_wal".into(),
            slot: "tls_wal".into(),
            publication: "tls_wal".into(),
            failures_table: "tls_wal".into(),
            ..WalConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.unwrap();
    let messages = numbered_messages("tls-wal.orders", 20, 10);
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_many(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();

    let stream = stream("TLS_WAL", "tls-wal").await;
    let source = format!(
        "kind = \"postgres_wal\"\nurl = \"{url}\"\nprefix = \"tls_wal\"\nslot = \"tls_wal\"\n\
         publication = \"tls_wal\"\nfailures_table = \"tls_wal\""
    );
    let destination = format!("kind = \"nats\"\nurl = \"{}\"", nats_url());
    let total = messages.len();
    // Plain TCP is refused (`hostssl` only), so a relay that read the log
    // read it over TLS; the server's own view says so while it reads.
    let encrypted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    relay_until(&source, &destination, "tls-wal", || {
        let (mut stream, pool, seen) = (stream.clone(), pool.clone(), encrypted.clone());
        async move {
            let walsender: Option<bool> = sqlx::query_scalar(
                "SELECT s.ssl FROM pg_stat_ssl AS s JOIN pg_stat_activity AS a USING (pid) \
                 WHERE a.backend_type = 'walsender'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            if walsender == Some(true) {
                seen.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            seen.load(std::sync::atomic::Ordering::Relaxed)
                && stream.info().await.unwrap().state.messages as usize >= total
        }
    })
    .await;
    assert!(
        encrypted.load(std::sync::atomic::Ordering::Relaxed),
        "the replication connection was not seen over TLS"
    );
    assert_order_per_key(&messages, &read(&stream, &messages).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_mariadb_over_tls_only() {
    let certificates = Certificates::generate("relay-mariadb");
    let mariadb = OwnMariadb::start_tls(&certificates).await;

    // Plain TCP is refused, so whatever connects below is encrypted. The
    // same user gets in over TLS below; MariaDB before 11.x words the
    // refusal as "Access denied" (MDEV-30178 gave it its own message).
    let plain = format!("{}?ssl-mode=DISABLED", mariadb.plain_url());
    let refused = sqlx::MySqlPool::connect(&plain)
        .await
        .expect_err("a plain connection must be refused");
    let refusal = refused.to_string();
    assert!(
        refusal.contains("insecure transport") || refusal.contains("Access denied"),
        "{refusal}"
    );

    let url = mariadb.url().await;
    assert!(url.contains("ssl-mode=VERIFY_IDENTITY"), "{url}");
    let pool = sqlx::MySqlPool::connect(&url)
        .await
        .expect("MariaDB over TLS, the certificate verified");
    let outbox = MysqlOutbox::new(
        MysqlConfig {
            table: "tls".into(),
            ..MysqlConfig::default()
        },
        pool.clone(),
    )
    .unwrap();
    outbox.migrate().await.unwrap();

    let nats = OwnNats::start_tls(&certificates).await;
    let stream = tls_stream(&nats, &certificates, "TLS_MY", "tls-my").await;
    let messages = numbered_messages("tls-my.orders", 20, 10);
    let mut tx = pool.begin().await.unwrap();
    outbox.enqueue_many(&mut tx, &messages).await.unwrap();
    tx.commit().await.unwrap();

    let source = format!("kind = \"mysql\"\nurl = \"{url}\"\ntable = \"tls\"");
    let destination = format!(
        "kind = \"nats\"\nurl = \"{}\"\nroot_certificates = \"{}\"",
        nats.url(),
        certificates.ca().display()
    );
    relay_delivers(&source, &destination, "tls-my", &stream, &messages).await;
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_rabbitmq_over_tls_only() {
    use outbox_amqp::lapin::options::BasicGetOptions;
    use outbox_amqp::{AmqpConfig, AmqpDestination};

    let certificates = Certificates::generate("relay-rabbitmq");
    let rabbit = OwnRabbit::start_tls(&certificates).await;
    let connect = |url: String, root_certificates| {
        let config = AmqpConfig {
            url,
            root_certificates,
            connection_name: "outbox-tls-test".into(),
            ..AmqpConfig::default()
        };
        tokio::time::timeout(Duration::from_secs(20), AmqpDestination::connect(config))
    };

    // Plain AMQP gets nowhere, and neither does TLS without the test's CA:
    // the certificate is checked.
    let plain = connect(rabbit.url(), None).await;
    assert!(!matches!(plain, Ok(Ok(_))), "plain AMQP must be refused");
    let unverified = connect(rabbit.tls_url(), None).await;
    match unverified {
        Ok(Err(err)) => assert!(err.to_string().contains("UnknownIssuer"), "{err}"),
        Ok(Ok(_)) => panic!("a certificate from an unknown CA must be refused"),
        Err(_) => panic!(
            "no answer over TLS in 20 s; the node's log ends:\n{}",
            rabbit.log_tail()
        ),
    }

    let admin = match connect(rabbit.tls_url(), Some(certificates.ca())).await {
        Ok(Ok(connection)) => connection,
        failed => panic!(
            "RabbitMQ over TLS, the certificate verified: {:?}; the node's log ends:\n{}",
            failed.map(|c| c.err()),
            rabbit.log_tail()
        ),
    };
    let channel = admin.channel().await.unwrap();
    let queue = "tls_orders";
    declare_durable(&channel, queue, false).await;

    let (outbox, pool) = table("tls_amqp").await;
    let messages = numbered_messages(queue, 20, 10);
    commit(&outbox, &pool, &messages).await;
    let destination = format!(
        "kind = \"amqp\"\nurl = \"{}\"\nroot_certificates = \"{}\"",
        rabbit.tls_url(),
        certificates.ca().display()
    );
    let total = messages.len() as u32;
    relay_until(
        &postgres_source("tls_amqp"),
        &destination,
        "tls_amqp",
        || async { declare_durable(&channel, queue, true).await >= total },
    )
    .await;
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);

    let mut arrived = Vec::new();
    while let Some(delivery) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id = delivery.properties.message_id().as_ref().unwrap();
        let id: uuid::Uuid = id.as_str().parse().unwrap();
        let key = &messages.iter().find(|m| m.id == id).unwrap().ordering_key;
        arrived.push((key.clone(), id));
    }
    assert_eq!(arrived.len(), messages.len());
    assert_order_per_key(&messages, &arrived);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_kafka_over_tls_only() {
    use outbox_kafka::{KafkaConfig, KafkaDestination};

    let certificates = Certificates::generate("relay-kafka");
    let kafka = OwnKafkaTls::start(&certificates).await;
    let ca = certificates.ca().display().to_string();
    let topic = format!("tls-orders-{}", uuid::Uuid::now_v7().simple());
    let create_topic = |properties: &[(&str, &str)]| {
        let mut config = KafkaConfig {
            brokers: kafka.brokers(),
            ..KafkaConfig::default()
        };
        for (name, value) in properties {
            config
                .properties
                .insert(name.to_string(), value.to_string());
        }
        let destination = KafkaDestination::new(config).unwrap();
        let topic = topic.clone();
        async move {
            let topics = [topic.as_str()];
            let created = destination.create_topics(&topics, 1, 1);
            tokio::time::timeout(Duration::from_secs(15), created).await
        }
    };

    // Plain Kafka gets nowhere, and neither does TLS without the test's CA:
    // the certificate is checked.
    let (plain, unverified) = tokio::join!(
        create_topic(&[]),
        create_topic(&[("security.protocol", "ssl")])
    );
    assert!(!matches!(plain, Ok(Ok(()))), "plain Kafka must be refused");
    assert!(
        !matches!(unverified, Ok(Ok(()))),
        "a certificate from an unknown CA must be refused"
    );
    let tls = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca.as_str()),
    ];
    create_topic(&tls)
        .await
        .expect("the broker answers over TLS")
        .expect("a topic created over TLS, the certificate verified");

    let received = Publishes::kafka_at(&kafka.brokers(), &tls, &topic, 1);
    let (outbox, pool) = table("tls_kafka").await;
    let messages = numbered_messages(&topic, 20, 10);
    commit(&outbox, &pool, &messages).await;
    let destination = format!(
        "kind = \"kafka\"\nbrokers = \"{}\"\n[destination.properties]\n\
         \"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{ca}\"\n\"linger.ms\" = 1",
        kafka.brokers()
    );
    relay_until(
        &postgres_source("tls_kafka"),
        &destination,
        "tls_kafka",
        || {
            let (received, messages) = (&received, &messages);
            async move { received.has_all(messages) }
        },
    )
    .await;
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
    assert_order_per_key(&messages, &received.keyed(&messages));
}

/// Mutual TLS: a nats-server that requires a client certificate turns
/// away a client without one, and the relay, given its certificate and key
/// in its settings, delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_presents_its_client_certificate_to_nats() {
    use outbox_nats::{NatsConfig, NatsDestination};
    let certificates = Certificates::generate("relay-nats-mtls");
    let nats = OwnNats::start_mtls(&certificates).await;
    let connect = |client: Option<(std::path::PathBuf, std::path::PathBuf)>| {
        let (client_certificate, client_key) = client.unzip();
        NatsDestination::connect(NatsConfig {
            url: nats.url(),
            root_certificates: Some(certificates.ca()),
            client_certificate,
            client_key,
            connect_timeout: Duration::from_secs(3),
            ..NatsConfig::default()
        })
    };
    let refused = connect(None).await;
    assert!(
        refused.is_err(),
        "a client without a certificate must be turned away"
    );
    let client = (certificates.client_certificate(), certificates.client_key());
    connect(Some(client))
        .await
        .expect("the client certificate is accepted");

    let stream = tls_stream(&nats, &certificates, "MTLS", "mtls").await;
    let (outbox, pool) = table("mtls_nats").await;
    let messages = numbered_messages("mtls.orders", 10, 5);
    commit(&outbox, &pool, &messages).await;
    let destination = format!(
        "kind = \"nats\"\nurl = \"{}\"\nroot_certificates = \"{}\"\n\
         client_certificate = \"{}\"\nclient_key = \"{}\"",
        nats.url(),
        certificates.ca().display(),
        certificates.client_certificate().display(),
        certificates.client_key().display()
    );
    relay_delivers(
        &postgres_source("mtls_nats"),
        &destination,
        "mtls_nats",
        &stream,
        &messages,
    )
    .await;
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
}

/// Mutual TLS with RabbitMQ (`verify_peer`, `fail_if_no_peer_cert`): no
/// connection without a client certificate; the relay presents its own and
/// delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_presents_its_client_certificate_to_rabbitmq() {
    use outbox_amqp::{AmqpConfig, AmqpDestination};

    let certificates = Certificates::generate("relay-rabbitmq-mtls");
    let rabbit = OwnRabbit::start_mtls(&certificates).await;
    let connect = |client: Option<(std::path::PathBuf, std::path::PathBuf)>| {
        let (client_certificate, client_key) = client.unzip();
        let config = AmqpConfig {
            url: rabbit.tls_url(),
            root_certificates: Some(certificates.ca()),
            client_certificate,
            client_key,
            ..AmqpConfig::default()
        };
        tokio::time::timeout(Duration::from_secs(20), AmqpDestination::connect(config))
    };
    let refused = connect(None).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a client without a certificate must be turned away"
    );
    let client = (certificates.client_certificate(), certificates.client_key());
    let admin = connect(Some(client))
        .await
        .expect("RabbitMQ answers over TLS")
        .expect("the client certificate is accepted");
    let channel = admin.channel().await.unwrap();
    let queue = "mtls_orders";
    declare_durable(&channel, queue, false).await;
    let (outbox, pool) = table("mtls_amqp").await;
    let messages = numbered_messages(queue, 10, 5);
    commit(&outbox, &pool, &messages).await;
    let destination = format!(
        "kind = \"amqp\"\nurl = \"{}\"\nroot_certificates = \"{}\"\n\
         client_certificate = \"{}\"\nclient_key = \"{}\"",
        rabbit.tls_url(),
        certificates.ca().display(),
        certificates.client_certificate().display(),
        certificates.client_key().display()
    );
    let total = messages.len() as u32;
    relay_until(
        &postgres_source("mtls_amqp"),
        &destination,
        "mtls_amqp",
        || async { declare_durable(&channel, queue, true).await >= total },
    )
    .await;
    assert_eq!(outbox.backlog().await.unwrap().waiting, 0);
}

/// Declares the durable `queue`, or with `passive` looks it up: its
/// message count.
async fn declare_durable(channel: &outbox_amqp::lapin::Channel, queue: &str, passive: bool) -> u32 {
    use outbox_amqp::lapin::options::QueueDeclareOptions;
    use outbox_amqp::lapin::types::FieldTable;
    let options = QueueDeclareOptions {
        durable: true,
        passive,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// A stream `name` on `<subject>.>` on `nats`, reached over TLS.
async fn tls_stream(
    nats: &OwnNats,
    certificates: &Certificates,
    name: &str,
    subject: &str,
) -> stream::Stream {
    install_crypto_provider();
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(certificates.ca())
        .add_client_certificate(certificates.client_certificate(), certificates.client_key())
        .connect(nats.url())
        .await
        .expect("NATS over TLS, the certificate verified");
    jetstream::new(client)
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{subject}.>")],
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Runs `outbox-relay run` from `source` to `destination` until `stream`
/// holds every one of `messages`, stops it with SIGTERM, and checks the
/// order per key.
async fn relay_delivers(
    source: &str,
    destination: &str,
    name: &str,
    stream: &stream::Stream,
    messages: &[Message],
) {
    let total = messages.len();
    relay_until(source, destination, name, || {
        let mut stream = stream.clone();
        async move { stream.info().await.unwrap().state.messages as usize >= total }
    })
    .await;
    assert_order_per_key(messages, &read(stream, messages).await);
}

/// Runs `outbox-relay run` from `source` to `destination` until `arrived`
/// holds, then stops it with SIGTERM: it must exit cleanly.
async fn relay_until<F, Fut>(source: &str, destination: &str, name: &str, arrived: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let config = settings_with(source, destination, name, spare_port(), "");
    let mut child = relay(&config, &["run"]).spawn().unwrap();
    if !eventually(DEADLINE, arrived).await {
        child.start_kill().ok();
        let (_, text) = finish(child, DEADLINE).await;
        panic!("not every message arrived over TLS; the relay said:\n{text}");
    }
    sigterm(&child);
    let (code, text) = finish(child, DEADLINE).await;
    assert_eq!(code, 0, "{text}");
}
