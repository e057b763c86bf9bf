//! Leader-only mode: one relay claims, the others stand by.

use sqlx::{Connection, MySqlConnection, MySqlPool};
use tokio::sync::Mutex;

use crate::sql::table_lock;

/// Holds (or tries to take) the table's leader lock, `GET_LOCK` on a
/// connection of its own, named after the database and the table (see
/// [`table_lock`]). The server releases it when that connection ends,
/// so a dead leader's standby takes over at its next claim; rows the old
/// leader still leases stay its own until their lease passes.
pub(crate) struct Leadership {
    pool: MySqlPool,
    table: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The connection the lock is held (or tried) on, kept between tries.
    conn: Option<MySqlConnection>,
    leader: bool,
}

impl Leadership {
    pub fn new(pool: MySqlPool, table: String) -> Self {
        Self {
            pool,
            table,
            state: Mutex::default(),
        }
    }

    /// True while this relay is the leader: checks that the connection
    /// holding the lock is alive, or tries to take the lock without waiting.
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
}
