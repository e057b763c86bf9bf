//! outbox-nats (placeholder).
