//! The core of the transactional outbox: the [`Message`] and [`Item`] types,
//! the [`Source`] and [`Destination`] traits adapters implement, and the
//! [`Relay`] that moves items between them under the outbox contract.
//!
//! No database or broker crate is a dependency; adapters live in their own
//! crates (`outbox-postgres`, `outbox-nats`, ...). The [`memory`] module has an
//! in-memory pair for tests.

mod backoff;
mod box_destination;
mod box_source;
mod claim;
mod cloud_events;
mod config;
mod dead_letter;
mod deliver_batch;
mod destination;
mod error;
mod histogram;
mod incoming;
mod item;
pub mod memory;
mod message;
mod metadata;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "opentelemetry")]
mod publish_span;
mod redact;
mod relay;
mod source;
mod stats;
#[cfg(feature = "opentelemetry")]
mod trace_context;
mod waiting;

pub use backoff::Backoff;
pub use box_destination::BoxDestination;
pub use box_source::BoxSource;
pub use claim::{Claim, ClaimId};
pub use cloud_events::{
    wrap_as_cloud_event, CloudEvents, CloudEventsBinding, CloudEventsMode, CLOUD_EVENTS_JSON,
};
pub use config::{duration_ms, RelayConfig};
pub use dead_letter::DeadLetter;
pub use destination::Destination;
pub use error::{BoxError, ConfigError, Error, ErrorKind, MAX_ERROR_BYTES};
pub use histogram::{Histogram, HistogramSnapshot, BUCKETS_SECONDS};
pub use incoming::{Incoming, HEADER_TRACEPARENT, HEADER_TRACESTATE};
pub use item::Item;
pub use message::{
    Event, Message, MessageBuilder, HEADER_EVENT_TYPE, HEADER_EVENT_VERSION, HEADER_MESSAGE_ID,
    HEADER_ORDERING_KEY, HEADER_SEQUENCE,
};
pub use metadata::{
    Metadata, HEADER_CAUSATION_ID, HEADER_CORRELATION_ID, HEADER_TENANT, HEADER_USER,
};
pub use redact::redact_url;
pub use relay::{Drained, Relay};
pub use source::{Backlog, Failure, LogLag, OnDeadLetter, Source, DEFAULT_BATCH_BYTES};
pub use stats::{Counts, Health, Stats, StatsSnapshot};
pub use waiting::Waiting;

/// Re-exported so users need not depend on tokio-util for shutdown.
pub use tokio_util::sync::CancellationToken;
