//! outbox-postgres (placeholder).
