//! How far the slot is behind the log.

use outbox_core::Error;
use sqlx::PgPool;

use crate::error::classify;

/// How far `slot`'s confirmed position is behind the log's end, in bytes
/// (`None` when the slot does not exist).
pub(crate) async fn slot_lag_bytes(pool: &PgPool, slot: &str) -> Result<Option<u64>, Error> {
    let lag: Option<i64> = sqlx::query_scalar(
        "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(classify)?
    .flatten();
    Ok(lag.map(|lag| lag.max(0) as u64))
}
