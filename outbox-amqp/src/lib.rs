//! RabbitMQ (AMQP 0.9.1) for the transactional outbox: an [`AmqpDestination`]
//! on lapin.
//!
//! Every message is published persistent (`delivery_mode` 2) and
//! `mandatory`, on a channel in publisher-confirm mode: it counts as sent only
//! once the broker confirmed it, and a message no queue is bound for comes
//! back as a permanent error (dead-lettered with the broker's reason) instead
//! of vanishing. The message id travels as `message_id` so consumers can drop
//! the duplicates a relay crash may cause.
//!
//! RabbitMQ refuses some publishes by closing the channel: an exchange that
//! does not exist (`NOT_FOUND`), access refused, a message over its size
//! limit. Every publish still waiting for a confirm on that channel then
//! fails with the same error, so each of them is published again at once,
//! alone on a channel of its own: the message at fault is dead-lettered with
//! the broker's reason, the others go through without waiting for a retry.
//!
//! Where a message goes: its `destination` is `exchange/routing-key`; a
//! destination without `/` goes to the default exchange with the destination
//! as routing key, that is straight to the queue of that name. Set
//! [`AmqpConfig::route`] to map messages another way.

mod config;
mod confirms;
mod destination;
mod error;
mod incoming;

pub use config::{AmqpConfig, Route};
pub use destination::AmqpDestination;
pub use error::classify;
pub use incoming::incoming;
/// The lapin crate this destination is built on, so users and tests reach
/// its types without a dependency of their own (and at the same version).
pub use lapin;
