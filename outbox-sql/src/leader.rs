//! Leader-only mode: one relay claims, the others stand by. The shape every
//! database shares; each says how to open the lock's connection and how to
//! take the lock.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// How one database holds a table's leader lock: on a connection of its
/// own, which the server releases when that connection ends, so a dead
/// leader's standby takes over at its next claim (rows the old leader still
/// leases stay its own until their lease passes).
pub trait LeaderLock: Send + Sync + 'static {
    /// The lock's connection.
    type Conn: Connection;

    /// A connection of its own, which the server ends after a lease of
    /// silence (a stalled leader keeps its socket open, and would keep its
    /// lock for good); `None` when none can be had now.
    fn connect(&self) -> impl Future<Output = Option<Self::Conn>> + Send;

    /// Tries to take the lock on `conn`, without waiting.
    fn try_lock(
        &self,
        conn: &mut Self::Conn,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
}

/// Holds (or tries to take) a table's leader lock. A live leader pings its
/// lock's connection at a third of the lease, so the server's idle timeout
/// ends only a stalled leader's.
pub struct Leadership<L: LeaderLock> {
    lock: L,
    state: Arc<Mutex<State<L::Conn>>>,
    pinger: JoinHandle<()>,
}

struct State<C> {
    /// The connection the lock is held (or tried) on, kept between tries.
    conn: Option<C>,
    leader: bool,
}

impl<C> Default for State<C> {
    fn default() -> Self {
        Self {
            conn: None,
            leader: false,
        }
    }
}

impl<L: LeaderLock> Leadership<L> {
    /// Starts standing by for `lock`, whose connection's idle timeout is
    /// `lease`.
    pub fn new(lock: L, lease: Duration) -> Self {
        let state: Arc<Mutex<State<L::Conn>>> = Arc::default();
        let pinger = tokio::spawn(ping(Arc::clone(&state), lease / 3));
        Self {
            lock,
            state,
            pinger,
        }
    }

    /// True while this relay is the leader: checks that the connection
    /// holding the lock is alive, or tries to take the lock.
    pub async fn is_leader(&self) -> bool {
        let mut state = self.state.lock().await;
        if state.conn.is_none() {
            match self.lock.connect().await {
                Some(conn) => state.conn = Some(conn),
                None => return false,
            }
        }
        let was_leader = state.leader;
        let conn = state.conn.as_mut().expect("connection set above");
        let result = if was_leader {
            conn.ping().await.map(|()| true)
        } else {
            self.lock.try_lock(conn).await
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

impl<L: LeaderLock> Drop for Leadership<L> {
    fn drop(&mut self) {
        self.pinger.abort();
    }
}

/// Keeps a leader's connection from looking idle while this process runs.
async fn ping<C: Connection>(state: Arc<Mutex<State<C>>>, every: Duration) {
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
