//! Wake-ups from writers' NOTIFY, read all the time by a task of their own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outbox_core::Error;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::classify;

/// A LISTEN connection drained by a task of its own, whatever the relay is
/// doing. Reading it only while the relay was idle let notifications pile
/// up in the socket and then in PostgreSQL's notification queue, which
/// makes the server fail the application's commits once it is full. Any
/// number of notifications between two waits wake the relay once.
pub(crate) struct Wake {
    woken: Arc<Notify>,
    /// Set by every notification, taken by [`Wake::take_woken`].
    notified_since: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

impl Wake {
    /// Listens on `channel` on a connection of its own from `pool`.
    pub async fn listen(pool: &PgPool, channel: &str) -> Result<Self, Error> {
        let mut listener = PgListener::connect_with(pool).await.map_err(classify)?;
        listener.listen(channel).await.map_err(classify)?;
        let woken = Arc::new(Notify::new());
        let notified_since = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read(
            listener,
            Arc::clone(&woken),
            Arc::clone(&notified_since),
        ));
        Ok(Self {
            woken,
            notified_since,
            reader,
        })
    }

    /// Resolves once a notification arrived since the last call returned.
    pub async fn notified(&self) {
        self.woken.notified().await;
    }

    /// Whether a notification arrived since the last call.
    pub fn take_woken(&self) -> bool {
        self.notified_since.swap(false, Ordering::Relaxed)
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read(mut listener: PgListener, woken: Arc<Notify>, notified_since: Arc<AtomicBool>) {
    loop {
        match listener.recv().await {
            // `notify_one` keeps one permit when nobody waits: notifications
            // coalesce into a single wake-up.
            Ok(_) => {
                notified_since.store(true, Ordering::Relaxed);
                woken.notify_one();
            }
            Err(err) => {
                // sqlx reconnects and listens again on the next `recv`;
                // whatever was missed meanwhile is found by polling, and a
                // wake-up now makes the relay look at once.
                tracing::debug!(error = %err, "LISTEN connection failed; reconnecting");
                woken.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
