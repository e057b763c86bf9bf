//! outbox-mysql (placeholder).
