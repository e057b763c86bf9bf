//! A service that embeds the outbox, observed end to end: `POST
//! /orders/{id}` writes the order and its event in one PostgreSQL
//! transaction (the event carries the request's trace context and a
//! correlation id), a relay in the same process publishes to NATS
//! JetStream, `GET /metrics` serves the relay's figures beside the
//! service's own, and a consumer continues each request's trace.
//!
//! The spans go to OpenTelemetry's in-memory exporter so the example can
//! show them; a service puts `opentelemetry-otlp`'s exporter in its place.
//!
//! `scripts/services.sh up`, then `cargo run --example observed_service
//! --features postgres,nats,metrics,opentelemetry [ORDERS]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use outbox::nats::async_nats::jetstream::stream;
use outbox::nats::{incoming_from_headers, NatsConfig, NatsDestination};
use outbox::postgres::{sqlx, PostgresConfig, PostgresOutbox};
use outbox::{CancellationToken, Event, Metadata, Relay, RelayConfig};
use serde::Serialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Serialize)]
struct OrderPlaced {
    order_id: String,
    total_cents: i64,
}

impl Event for OrderPlaced {
    fn event_type(&self) -> &str {
        "OrderPlaced"
    }

    fn aggregate_id(&self) -> String {
        self.order_id.clone()
    }
}

struct Service {
    pool: sqlx::PgPool,
    outbox: PostgresOutbox,
    metrics: PrometheusHandle,
}

/// Places an order; answers the request's trace id.
#[tracing::instrument(skip_all, fields(order = %id.0))]
async fn place_order(
    service: State<Arc<Service>>,
    id: Path<String>,
) -> std::result::Result<String, String> {
    let mut tx = service.pool.begin().await.map_err(|e| e.to_string())?;
    sqlx::query("INSERT INTO shop.observed_orders (id, total_cents) VALUES ($1, 1250)")
        .bind(&id.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    let event = OrderPlaced {
        order_id: id.0.clone(),
        total_cents: 1250,
    };
    let metadata = Metadata {
        correlation_id: Some(format!("checkout-{}", id.0)),
        ..Metadata::default()
    };
    let outbox = &service.outbox;
    outbox
        .enqueue_event_with(&mut tx, "observed.orders", &event, &metadata)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string())
}

async fn metrics(service: State<Arc<Service>>) -> String {
    service.metrics.render()
}

/// Waits up to 30 s for `done`.
async fn until(mut done: impl AsyncFnMut() -> Result<bool>) -> Result {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await? {
        if Instant::now() > deadline {
            return Err("gave up waiting after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result {
    let orders: u64 = std::env::args().nth(1).map_or(Ok(20), |arg| arg.parse())?;
    // Traces: the service's `tracing` spans, bridged to OpenTelemetry.
    let spans = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("shop")))
        .init();
    // Metrics: one recorder for the service and its relay, before the relay is built.
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&outbox::BUCKETS_SECONDS)?
        .install_recorder()?;

    let url = std::env::var("OUTBOX_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS shop; DROP TABLE IF EXISTS shop.observed_orders; \
         CREATE TABLE shop.observed_orders (id text PRIMARY KEY, total_cents bigint NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let config = PostgresConfig {
        schema: "shop".into(),
        table: "observed_outbox".into(),
        ..PostgresConfig::default()
    };
    let outbox = PostgresOutbox::new(config, pool.clone())?;
    outbox.migrate().await?;
    let nats_url =
        std::env::var("OUTBOX_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let destination = NatsDestination::connect(NatsConfig {
        url: nats_url,
        ..NatsConfig::default()
    })
    .await?;
    let jetstream = destination.jetstream().clone();
    let _ = jetstream.delete_stream("OBSERVED").await;
    let config = stream::Config {
        name: "OBSERVED".into(),
        subjects: vec!["observed.>".into()],
        ..Default::default()
    };
    let mut stream = jetstream.create_stream(config).await?;

    let shutdown = CancellationToken::new();
    let relay = Relay::new(outbox.source().await?, destination, RelayConfig::default())?;
    let relaying = tokio::spawn(relay.run(shutdown.clone()));
    let service = Arc::new(Service {
        pool,
        outbox,
        metrics: prometheus,
    });
    let app = axum::Router::new()
        .route("/orders/{id}", post(place_order))
        .route("/metrics", get(metrics))
        .with_state(service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let serving =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::spawn(async move { serving.await });

    // Clients place orders; each answer is the trace id of its request.
    let client = reqwest::Client::new();
    let mut traces = HashMap::new();
    for n in 0..orders {
        let order = format!("order-{n}");
        let answer = client
            .post(format!("http://{address}/orders/{order}"))
            .send()
            .await?;
        traces.insert(order, answer.error_for_status()?.text().await?);
    }

    // A consumer reads each event's trace context and correlation id.
    until(async || Ok(stream.info().await?.state.messages >= orders)).await?;
    for seq in 1..=orders {
        let stored = stream.get_raw_message(seq).await?;
        let incoming = incoming_from_headers(&stored.headers)?;
        let order = incoming.ordering_key.clone().unwrap_or_default();
        let traceparent = incoming.traceparent().unwrap_or_default();
        if !traceparent.contains(&traces[&order])
            || incoming.correlation_id() != Some(&format!("checkout-{order}"))
        {
            return Err(format!(
                "{order}: traceparent {traceparent:?}, {:?}",
                incoming.correlation_id()
            )
            .into());
        }
    }
    provider.force_flush()?;
    let published_in_trace = spans
        .get_finished_spans()?
        .iter()
        .filter(|span| span.name == "send observed.orders")
        .filter(|span| {
            traces
                .values()
                .any(|trace| *trace == span.span_context.trace_id().to_string())
        })
        .count();
    println!("{orders} orders: each consumed in its request's trace, {published_in_trace} publish spans in those traces");
    if published_in_trace as u64 != orders {
        return Err("a publish span is missing from its request's trace".into());
    }

    let scrape = async || {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            client
                .get(format!("http://{address}/metrics"))
                .send()
                .await?
                .text()
                .await?,
        )
    };
    let published = format!("outbox_published_total{{destination=\"nats\"}} {orders}");
    until(async || Ok(scrape().await?.contains(&published))).await?;
    println!("/metrics: {published}");
    shutdown.cancel();
    relaying.await??;
    Ok(())
}
