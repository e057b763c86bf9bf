//! The relay's publish spans (feature `opentelemetry`): one per message
//! sent, named and attributed after OpenTelemetry's messaging conventions,
//! and a child of the writer's trace context when the message carries one,
//! so the trace of the request that wrote the message shows its publication.
//!
//! The message keeps the writer's `traceparent` on the broker: a consumer
//! continues the writer's trace, beside the publish span.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{Error, Item};

/// Opens a span for each item about to be sent, in the items' order.
pub(crate) fn open<I: Item>(system: &'static str, items: &[I]) -> Vec<Span> {
    items.iter().map(|item| open_one(system, item)).collect()
}

fn open_one<I: Item>(system: &'static str, item: &I) -> Span {
    let destination = item.destination_name().unwrap_or_default();
    let span = tracing::info_span!(
        parent: None,
        "publish",
        otel.name = format!("send {destination}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = destination,
        messaging.message.id = %item.id(),
        error.type = tracing::field::Empty,
    );
    if let Some(parent) = item.traceparent().and_then(parse_traceparent) {
        // Without an OpenTelemetry layer there is nothing to parent.
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    span
}

/// Closes the spans with their items' results.
pub(crate) fn close(spans: Vec<Span>, results: &[Result<(), Error>]) {
    for (span, result) in spans.into_iter().zip(results) {
        match result {
            Ok(()) => span.record("otel.status_code", "OK"),
            Err(error) => span
                .record("otel.status_code", "ERROR")
                .record("error.type", format!("{:?}", error.kind()).to_lowercase()),
        };
    }
}

/// The span context of a W3C `traceparent` (`00-<trace>-<span>-<flags>`),
/// or `None` when it does not parse or names the invalid all-zero ids.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace_id, span_id, flags, ..] = parts[..] else {
        return None;
    };
    let lengths = [version.len(), trace_id.len(), span_id.len(), flags.len()];
    if lengths != [2, 32, 16, 2] || version == "ff" || (version == "00" && parts.len() > 4) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_w3c_traceparent_parses_and_bad_ones_do_not() {
        let context =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-not-hex-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} parsed");
        }
    }
}
