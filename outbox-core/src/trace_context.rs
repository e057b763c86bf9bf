//! The writer's trace context (feature `opentelemetry`): a message built
//! inside a `tracing` span that `tracing-opentelemetry` bridges to
//! OpenTelemetry carries the span's W3C `traceparent` and `tracestate`, so
//! a consumer continues the producer's trace.

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{Message, HEADER_TRACEPARENT, HEADER_TRACESTATE};

/// `message` with the current span's context in its headers, unless it
/// has a `traceparent` already or no OpenTelemetry span is current.
pub(crate) fn with_current(mut message: Message) -> Message {
    if message.headers.contains_key(HEADER_TRACEPARENT) {
        return message;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    if !span.is_valid() {
        return message;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    );
    message
        .headers
        .insert(HEADER_TRACEPARENT.to_string(), traceparent);
    let state = span.trace_state().header();
    if !state.is_empty() {
        message.headers.insert(HEADER_TRACESTATE.to_string(), state);
    }
    message
}
