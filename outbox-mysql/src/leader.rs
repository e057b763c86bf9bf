//! Leader-only mode on MySQL: `GET_LOCK` on a connection of its own.

use std::time::Duration;

use outbox_sql::LeaderLock;
use sqlx::{MySqlConnection, MySqlPool};

use crate::sql::table_lock;

/// The table's leader lock, `GET_LOCK` on a connection of its own, named
/// after the database and the table (see [`table_lock`]). A stalled
/// leader's socket stays open, and the server would keep its lock for
/// `wait_timeout` (8 hours by default): the connection's `wait_timeout` is
/// therefore the lease.
pub(crate) struct MysqlLeaderLock {
    pub pool: MySqlPool,
    pub table: String,
    pub lease: Duration,
}

impl LeaderLock for MysqlLeaderLock {
    type Conn = MySqlConnection;

    /// Whole seconds, rounded up: `wait_timeout` takes nothing finer.
    async fn connect(&self) -> Option<MySqlConnection> {
        let mut conn = self.pool.acquire().await.ok()?.detach();
        let seconds = self.lease.as_micros().div_ceil(1_000_000).max(1);
        sqlx::query(&format!("SET SESSION wait_timeout = {seconds}"))
            .execute(&mut conn)
            .await
            .ok()?;
        Some(conn)
    }

    async fn try_lock(&self, conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar::<_, Option<i64>>(&format!(
            "SELECT GET_LOCK({}, 0)",
            table_lock("leader")
        ))
        .bind(&self.table)
        .fetch_one(conn)
        .await
        .map(|taken| taken == Some(1))
    }
}
