//! Deleting in bounded batches.

use std::future::Future;

use outbox_core::Error;

/// Runs `delete(batch)` (a statement deleting at most `batch` rows, which
/// returns how many it deleted) until a run deletes fewer than `batch`;
/// returns the total. Each run is a statement of its own, so no
/// transaction holds many row locks or a long undo log.
pub async fn delete_in_batches<F, Fut>(batch: u32, mut delete: F) -> Result<u64, Error>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<u64, Error>>,
{
    let batch = i64::from(batch.max(1));
    let mut total = 0;
    loop {
        let deleted = delete(batch).await?;
        total += deleted;
        if (deleted as i64) < batch {
            return Ok(total);
        }
    }
}
