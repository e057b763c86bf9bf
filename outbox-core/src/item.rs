//! What the relay moves.

use std::time::SystemTime;

use uuid::Uuid;

/// Anything a [`Source`](crate::Source) hands to the relay and a
/// [`Destination`](crate::Destination) publishes.
///
/// The relay needs only three facts about an item: a stable id (carried to the
/// broker so duplicates can be dropped), the ordering key (items sharing it are
/// published in order) and how many attempts already failed. Everything else is
/// between the source and the destination; [`Message`](crate::Message) is the
/// ready-made item for the common case.
pub trait Item: Send + Sync + 'static {
    /// Stable id, the same on every delivery attempt.
    fn id(&self) -> Uuid;
    /// Items with equal keys are published in the order they were enqueued.
    fn ordering_key(&self) -> &str;
    /// Failed attempts recorded before this delivery.
    fn attempts(&self) -> u32;
    /// When the item was committed, if known; feeds the commit-to-publish
    /// latency statistics.
    fn created_at(&self) -> Option<SystemTime> {
        None
    }
    /// Where the item goes (topic, subject, exchange and routing key), if
    /// known; names the relay's publish span (feature `opentelemetry`).
    fn destination_name(&self) -> Option<&str> {
        None
    }
    /// The writer's W3C `traceparent`, if it captured one; the relay's
    /// publish span continues that trace (feature `opentelemetry`).
    fn traceparent(&self) -> Option<&str> {
        None
    }
}
