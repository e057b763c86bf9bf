//! End to end with tracing (feature `opentelemetry`): an order written in
//! PostgreSQL inside a traced request, relayed to JetStream; the relay's
//! publish span is a child of the request's span, and the consumer reads
//! the request's trace context from the broker's headers.

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use outbox::Message;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[allow(dead_code)] // the orders writer is for the other tests
mod common;
mod e2e;

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key.as_str() == key)
        .map(|attribute| &attribute.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_span_and_the_consumer_continue_the_writers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // Global: the relay's tasks run on the runtime's worker threads.
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("shop"))),
    )
    .unwrap();

    let (outbox, pool) = common::postgres_outbox("traced").await;
    let (destination, stream) = e2e::nats::setup("OUTBOX_E2E_TRACED", "outbox-e2e.traced").await;
    let request = tracing::info_span!("place_order");
    let message = async {
        let message = Message::builder("outbox-e2e.traced.orders", "order-1")
            .event_type("TestEvent")
            .header("seq", "0")
            .payload(b"{}".to_vec())
            .build()
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        outbox.enqueue(&mut tx, &message).await.unwrap();
        tx.commit().await.unwrap();
        message
    }
    .instrument(request)
    .await;
    let sources = vec![outbox.source().await.unwrap()];
    e2e::drain(sources, destination, async || {
        outbox.backlog().await.unwrap().waiting
    })
    .await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let writer = spans
        .iter()
        .find(|span| span.name == "place_order")
        .expect("the request's span was exported");
    let trace_id = writer.span_context.trace_id();
    let publish = spans
        .iter()
        .find(|span| span.name == "send outbox-e2e.traced.orders")
        .unwrap_or_else(|| panic!("no publish span among {spans:#?}"));
    assert_eq!(publish.span_context.trace_id(), trace_id);
    assert_eq!(publish.parent_span_id, writer.span_context.span_id());
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(
        attribute(publish, "messaging.system"),
        Some(&Value::from("nats"))
    );
    assert_eq!(
        attribute(publish, "messaging.message.id"),
        Some(&Value::from(message.id.to_string()))
    );

    let stored = stream.get_raw_message(1).await.unwrap();
    let incoming = outbox::nats::incoming_from_headers(&stored.headers).unwrap();
    assert_eq!(incoming.id, message.id);
    let consumed = incoming
        .traceparent()
        .expect("the broker carried traceparent");
    assert!(
        consumed.starts_with(&format!("00-{trace_id}-")),
        "{consumed} is not of trace {trace_id}"
    );
}
