//! Leader-only mode: one relay claims, the others stand by.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, MySqlConnection, MySqlPool};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::sql::table_lock;

/// Holds (or tries to take) the table's leader lock, `GET_LOCK` on a
/// connection of its own, named after the database and the table (see
/// [`table_lock`]). The server releases it when that connection ends,
/// so a dead leader's standby takes over at its next claim; rows the old
/// leader still leases stay its own until their lease passes.
///
/// A leader that stalls (stopped, or its host frozen) keeps its socket open,
/// and the server would keep its lock for `wait_timeout` (8 hours by
/// default). The connection's `wait_timeout` is therefore the lease, and a
/// live leader pings it at a third of that.
pub(crate) struct Leadership {
    pool: MySqlPool,
    table: String,
    lease: Duration,
    state: Arc<Mutex<State>>,
    pinger: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// The connection the lock is held (or tried) on, kept between tries.
    conn: Option<MySqlConnection>,
    leader: bool,
}

impl Leadership {
    pub fn new(pool: MySqlPool, table: String, lease: Duration) -> Self {
        let state: Arc<Mutex<State>> = Arc::default();
        let pinger = tokio::spawn(ping(Arc::clone(&state), lease / 3));
        Self {
            pool,
            table,
            lease,
            state,
            pinger,
        }
    }

    /// True while this relay is the leader: checks that the connection
    /// holding the lock is alive, or tries to take the lock without waiting.
    pub async fn is_leader(&self) -> bool {
        let mut state = self.state.lock().await;
        if state.conn.is_none() {
            match self.connect().await {
                Some(conn) => state.conn = Some(conn),
                None => return false,
            }
        }
        let was_leader = state.leader;
        let conn = state.conn.as_mut().expect("connection set above");
        let result = if was_leader {
            conn.ping().await.map(|()| true)
        } else {
            sqlx::query_scalar::<_, Option<i64>>(&format!(
                "SELECT GET_LOCK({}, 0)",
                table_lock("leader")
            ))
            .bind(&self.table)
            .fetch_one(conn)
            .await
            .map(|taken| taken == Some(1))
        };
        match result {
            Ok(leader) => {
                if leader && !was_leader {
                    tracing::info!(
                        table = self.table,
                        "took the leader lock: this relay claims"
                    );
                }
                state.leader = leader;
                leader
            }
            Err(err) => {
                if was_leader {
                    tracing::warn!(error = %err, "lost the connection holding the leader lock; standing by");
                }
                *state = State::default();
                false
            }
        }
    }

    /// A connection of its own, which the server ends after a lease of
    /// silence (whole seconds, rounded up: `wait_timeout` takes nothing
    /// finer).
    async fn connect(&self) -> Option<MySqlConnection> {
        let mut conn = self.pool.acquire().await.ok()?.detach();
        let seconds = self.lease.as_micros().div_ceil(1_000_000).max(1);
        sqlx::query(&format!("SET SESSION wait_timeout = {seconds}"))
            .execute(&mut conn)
            .await
            .ok()?;
        Some(conn)
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.pinger.abort();
    }
}

/// Keeps a leader's connection from looking idle while this process runs.
async fn ping(state: Arc<Mutex<State>>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let mut state = state.lock().await;
        if !state.leader {
            continue;
        }
        let Some(conn) = state.conn.as_mut() else {
            continue;
        };
        if let Err(err) = conn.ping().await {
            tracing::warn!(error = %err, "lost the connection holding the leader lock; standing by");
            *state = State::default();
        }
    }
}
