//! A claim's transaction, held on a pool connection of its own while the
//! relay publishes the batch: its row locks are the lease.

use std::collections::HashMap;
use std::time::Duration;

use outbox_core::Error;
use sqlx::pool::PoolConnection;
use sqlx::{Executor, MySql, MySqlConnection, MySqlPool};
use uuid::Uuid;

use crate::error::classify;

/// Makes the connection's next transaction READ COMMITTED: its scans then
/// take no gap locks. Under REPEATABLE READ a claim's scan locks the gap at
/// the end of the `waiting` index, where every writer inserts, and InnoDB
/// settles the resulting writer-versus-claim waits as deadlocks, failing the
/// application's transaction.
const READ_COMMITTED: &str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// Makes `conn`'s next transaction READ COMMITTED (see [`READ_COMMITTED`]).
pub(crate) async fn read_committed(conn: &mut MySqlConnection) -> Result<(), Error> {
    sqlx::query(READ_COMMITTED)
        .execute(conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// An open claim transaction.
///
/// MySQL has no idle-in-transaction timeout, so the lease is the session's
/// `wait_timeout`: the server closes the connection, rolling the claim back,
/// once the relay has sent nothing on it for the lease (stalled, or gone
/// without closing its socket). The pool's own setting is put back at
/// commit. A claim dropped while open closes its connection rather than
/// return it to the pool inside a transaction.
pub struct ClaimTx {
    /// The connection, to run the claim's statements on.
    pub conn: PoolConnection<MySql>,
    /// The primary key (`seq`) of each claimed message: reports name their
    /// rows by it.
    pub seqs: HashMap<Uuid, u64>,
    open: bool,
}

impl ClaimTx {
    /// Starts a READ COMMITTED transaction whose connection ends after
    /// `lease` of silence.
    pub async fn begin(pool: &MySqlPool, lease: Duration) -> Result<Self, Error> {
        let conn = pool.acquire().await.map_err(classify)?;
        let mut claim = Self {
            conn,
            seqs: HashMap::new(),
            open: true,
        };
        // Whole seconds, rounded up: `wait_timeout` takes nothing finer.
        let seconds = lease.as_micros().div_ceil(1_000_000).max(1);
        let begin =
            format!("{READ_COMMITTED}; SET SESSION wait_timeout = {seconds}; START TRANSACTION");
        let conn: &mut MySqlConnection = &mut claim.conn;
        conn.execute(begin.as_str()).await.map_err(classify)?;
        Ok(claim)
    }

    /// Rolls the transaction back, releasing every lock it took, and starts
    /// another like it, in the same round trip.
    pub async fn restart(&mut self) -> Result<(), Error> {
        let conn: &mut MySqlConnection = &mut self.conn;
        conn.execute(format!("ROLLBACK; {READ_COMMITTED}; START TRANSACTION").as_str())
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Commits, and gives the connection back to the pool as it was.
    pub async fn commit(mut self) -> Result<(), Error> {
        let conn: &mut MySqlConnection = &mut self.conn;
        conn.execute("COMMIT; SET SESSION wait_timeout = @@GLOBAL.wait_timeout")
            .await
            .map_err(classify)?;
        self.open = false;
        Ok(())
    }
}

impl Drop for ClaimTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}
