//! Coming up while a server is still down: the relay keeps trying to reach
//! its database and broker, with backoff, and says on `/healthz` what it
//! waits for, instead of exiting.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use outbox_core::{CancellationToken, Error, Stats};

/// First and longest wait between two tries to reach a server.
const FIRST_WAIT: Duration = Duration::from_millis(500);
const LONGEST_WAIT: Duration = Duration::from_secs(30);

/// What `/healthz` reports before the relay runs, and its statistics once
/// it does.
#[derive(Default)]
pub struct Readiness {
    stats: OnceLock<Arc<Stats>>,
    waiting_for: Mutex<String>,
}

impl Readiness {
    /// The running relay's statistics, once it runs.
    pub fn stats(&self) -> Option<&Arc<Stats>> {
        self.stats.get()
    }

    /// The relay runs: `/healthz` reports its health from now on.
    pub fn running(&self, stats: Arc<Stats>) {
        let _ = self.stats.set(stats);
    }

    /// What the relay waits for before it can run.
    pub fn waiting_for(&self) -> String {
        let waiting = self.waiting_for.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.is_empty() {
            "starting".to_string()
        } else {
            format!("starting: {waiting}")
        }
    }

    fn wait_for(&self, what: String) {
        *self.waiting_for.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }
}

/// Runs `attempt` until it succeeds, trying again after a temporary error
/// with a doubling wait (0.5 s to 30 s); `None` when `shutdown` came first.
/// A permanent error (bad credentials, a refused setting) is returned.
pub async fn until_up<T, F, Fut>(
    what: &str,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut wait = FIRST_WAIT;
    loop {
        let err = match attempt().await {
            Ok(up) => return Ok(Some(up)),
            Err(err) if err.is_temporary() => err,
            Err(err) => return Err(err),
        };
        let report = err.report();
        tracing::warn!(what, error = %report, retry_in = ?wait, "cannot reach a server yet; trying again");
        readiness.wait_for(format!("cannot reach the {what} yet: {report}"));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(LONGEST_WAIT);
    }
}
