//! NATS for the transactional outbox: a [`NatsDestination`] on async-nats.
//!
//! Two modes, chosen in [`NatsConfig::mode`]:
//!
//! * [`NatsMode::JetStream`] (the default): each message is published to a
//!   stream and counts as sent only once the stream acknowledged it. Its id
//!   goes in the `Nats-Msg-Id` header, so a message published again after a
//!   relay crash is dropped by the stream inside its duplicate window
//!   (2 minutes unless the stream says otherwise). At least once from the
//!   outbox, exactly once into the stream within that window.
//! * [`NatsMode::Core`]: publish and flush. The server does not acknowledge
//!   core NATS messages and keeps nothing for subscribers that are not
//!   listening: at most once on the broker side. For users who accept that.
//!
//! The subject is the message's `destination`, after an optional prefix.
//! Order per key: the relay sends a key's messages one after another and
//! stops at the first failure, so a stream stores each key's messages in
//! enqueue order; different keys are published concurrently.

mod config;
mod credentials;
mod destination;
mod error;
mod incoming;

/// The async-nats crate this destination is built on, so users and tests reach
/// its types without a dependency of their own (and at the same version).
pub use async_nats;
pub use config::{NatsAuth, NatsConfig, NatsMode};
pub use destination::NatsDestination;
pub use error::{classify_core, classify_jetstream, classify_no_responders};
pub use incoming::{incoming, incoming_from_headers};

/// Header carrying the message id, which JetStream uses to drop duplicates.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
