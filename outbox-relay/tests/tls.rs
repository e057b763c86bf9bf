//! TLS end to end: the `outbox-relay` binary reads a PostgreSQL of the
//! test's own that takes TCP connections over TLS only, and publishes to a
//! nats-server of its own that requires TLS, both with a certificate from a
//! CA made for the test and trusted through the relay's settings.

mod support;

use async_nats::jetstream::{self, stream};
use outbox_postgres::{PostgresConfig, PostgresOutbox};
use outbox_testkit::{assert_order_per_key, eventually, numbered_messages};
use support::certificates::Certificates;
use support::servers::{OwnNats, OwnPostgres};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reaches_postgres_and_nats_over_tls_only() {
    let certificates = Certificates::generate("relay");
    let postgres = OwnPostgres::start_tls(&certificates).await;
    let nats = OwnNats::start_tls(&certificates).await;
    let ca = certificates.ca().display().to_string();

    // Plain TCP is refused, so whatever connects below is encrypted.
    let plain = sqlx::PgPool::connect(&format!("{}?sslmode=disable", postgres.url())).await;
    let refused = plain.expect_err("a plain connection must be refused");
    assert!(refused.to_string().contains("no encryption"), "{refused}");

    let url = format!("{}?sslmode=verify-full&sslrootcert={ca}", postgres.url());
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("PostgreSQL over TLS, the certificate verified");
    let outbox = PostgresOutbox::new(PostgresConfig {
        table: "tls".into(),
        ..PostgresConfig::default()
    })
    .unwrap();
    outbox.migrate(&pool).await.unwrap();

    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(certificates.ca())
        .connect(nats.url())
        .await
        .expect("NATS over TLS, the certificate verified");
    let stream = jetstream::new(client)
        .create_stream(stream::Config {
            name: "TLS".into(),
            subjects: vec!["tls.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let messages = numbered_messages("tls.orders", 20, 10);
    commit(&outbox, &pool, &messages).await;

    let source = format!("kind = \"postgres\"\nurl = \"{url}\"\ntable = \"tls\"");
    let destination = format!(
        "kind = \"nats\"\nurl = \"{}\"\nroot_certificates = \"{ca}\"",
        nats.url()
    );
    let port = spare_port();
    let config = settings_with(&source, &destination, "tls", port, "");
    let mut child = relay(&config, &["run"]).spawn().unwrap();
    let total = messages.len();
    let arrived = eventually(DEADLINE, || {
        let mut stream = stream.clone();
        async move { stream.info().await.unwrap().state.messages as usize >= total }
    })
    .await;
    if !arrived {
        child.start_kill().ok();
        let (_, text) = finish(child, DEADLINE).await;
        panic!("not every message arrived over TLS; the relay said:\n{text}");
    }
    sigterm(&child);
    let (code, text) = finish(child, DEADLINE).await;
    assert_eq!(code, 0, "{text}");

    assert_order_per_key(&messages, &read(&stream, &messages).await);
    assert_eq!(outbox.backlog(&pool).await.unwrap().waiting, 0);
}
