//! What acknowledging a delivered message does to its row.

/// What acknowledging a delivered message does to its row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Delete the row (the default): the table holds only what is waiting
    /// and the dead letters.
    #[default]
    Delete,
    /// Set `done_at`; the outbox handle's `cleanup` removes such rows later,
    /// in bounded batches.
    MarkDone,
}
