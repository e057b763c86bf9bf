//! Leader-only mode on PostgreSQL: a session-level advisory lock.

use std::time::Duration;

use outbox_sql::LeaderLock;
use sqlx::{PgConnection, PgPool};

/// The table's leader lock: a session-level advisory lock on a connection
/// of its own. A stalled leader's connection is ended by the server once it
/// has been idle for the lease (`idle_session_timeout`, PostgreSQL 14+).
pub(crate) struct PostgresLeaderLock {
    pub pool: PgPool,
    pub key: i64,
    pub lease: Duration,
}

impl LeaderLock for PostgresLeaderLock {
    type Conn = PgConnection;

    async fn connect(&self) -> Option<PgConnection> {
        let mut conn = self.pool.acquire().await.ok()?.detach();
        let timeout = sqlx::query("SELECT set_config('idle_session_timeout', $1, false)")
            .bind(self.lease.as_millis().to_string())
            .execute(&mut conn)
            .await;
        if let Err(err) = timeout {
            // PostgreSQL before 14: a stalled leader keeps the lock until
            // its TCP connection ends.
            tracing::warn!(error = %err, "idle_session_timeout not available: a stalled leader is not fenced by the server");
        }
        Some(conn)
    }

    async fn try_lock(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(conn)
            .await
    }
}
