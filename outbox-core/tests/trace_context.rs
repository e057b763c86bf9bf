//! A message built in a traced span carries the span's W3C trace context,
//! which a consumer reads back with `Incoming::traceparent` (feature
//! `opentelemetry`; the brokers carry it: the destination suite).

use std::collections::BTreeMap;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use outbox_core::{Incoming, Message, HEADER_MESSAGE_ID, HEADER_TRACEPARENT};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn a_message_built_in_a_traced_span_carries_its_trace_context() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("shop")));

    let (message, own, trace_id) = tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("place_order");
        let _entered = span.enter();
        let trace_id = span.context().span().span_context().trace_id();
        let message = Message::builder("orders", "order-1").build().unwrap();
        let own = Message::builder("orders", "order-1")
            .header(
                HEADER_TRACEPARENT,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .build()
            .unwrap();
        (message, own, trace_id)
    });
    provider.force_flush().unwrap();

    let traceparent = &message.headers[HEADER_TRACEPARENT];
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent} is not of trace {trace_id}"
    );
    let finished = exporter.get_finished_spans().unwrap();
    let writer = finished
        .iter()
        .find(|span| span.name == "place_order")
        .expect("the writer's span was exported");
    assert_eq!(writer.span_context.trace_id(), trace_id);
    assert!(traceparent.contains(&format!("-{}-", writer.span_context.span_id())));

    let mut headers: BTreeMap<String, String> = message.headers.clone();
    headers.insert(HEADER_MESSAGE_ID.into(), message.id.to_string());
    let incoming = Incoming::from_headers(headers).unwrap();
    assert_eq!(incoming.traceparent(), Some(traceparent.as_str()));

    assert!(
        own.headers[HEADER_TRACEPARENT].starts_with("00-0af7651916cd43dd"),
        "a traceparent the caller set is kept"
    );
    let outside = Message::builder("orders", "order-2").build().unwrap();
    assert!(
        !outside.headers.contains_key(HEADER_TRACEPARENT),
        "no span, no trace context"
    );
}
