//! Leader-only mode: one relay claims, the others stand by.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Holds (or tries to take) the table's leader lock: a session-level
/// advisory lock on a connection of its own. PostgreSQL releases it when that
/// connection ends, so a dead leader's standby takes over at its next claim;
/// rows the old leader still leases stay its own until their lease passes.
///
/// A leader that stalls (stopped, or its host frozen) keeps its socket open,
/// so the server would keep its lock for good. The connection is therefore
/// ended by the server once it has been idle for the lease
/// (`idle_session_timeout`, PostgreSQL 14+), and a live leader pings it at a
/// third of that.
pub(crate) struct Leadership {
    pool: PgPool,
    key: i64,
    lease: Duration,
    state: Arc<Mutex<State>>,
    pinger: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// The connection the lock is held (or tried) on, kept between tries.
    conn: Option<PgConnection>,
    leader: bool,
}

impl Leadership {
    pub fn new(pool: PgPool, key: i64, lease: Duration) -> Self {
        let state: Arc<Mutex<State>> = Arc::default();
        let pinger = tokio::spawn(ping(Arc::clone(&state), lease / 3));
        Self {
            pool,
            key,
            lease,
            state,
            pinger,
        }
    }

    /// True while this relay is the leader: checks that the connection
    /// holding the lock is alive, or tries to take the lock.
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
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(self.key)
                .fetch_one(conn)
                .await
        };
        match result {
            Ok(leader) => {
                if leader && !was_leader {
                    tracing::info!("took the leader lock: this relay claims");
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
    /// silence.
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
