//! outbox-kafka (placeholder).
