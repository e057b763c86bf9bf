//! outbox-amqp (placeholder).
