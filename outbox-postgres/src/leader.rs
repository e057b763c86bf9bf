//! Leader-only mode: one relay claims, the others stand by.

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

/// Holds (or tries to take) the table's leader lock: a session-level
/// advisory lock on a connection of its own. PostgreSQL releases it when that
/// connection ends, so a dead leader's standby takes over at its next claim;
/// rows the old leader still leases stay its own until their lease passes.
pub(crate) struct Leadership {
    pool: PgPool,
    key: i64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The connection the lock is held (or tried) on, kept between tries.
    conn: Option<PgConnection>,
    leader: bool,
}

impl Leadership {
    pub fn new(pool: PgPool, key: i64) -> Self {
        Self {
            pool,
            key,
            state: Mutex::default(),
        }
    }

    /// True while this relay is the leader: checks that the connection
    /// holding the lock is alive, or tries to take the lock.
    pub async fn is_leader(&self) -> bool {
        let mut state = self.state.lock().await;
        if state.conn.is_none() {
            match self.pool.acquire().await {
                Ok(conn) => state.conn = Some(conn.detach()),
                Err(_) => return false,
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
}
