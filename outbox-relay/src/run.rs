//! `outbox-relay run`: relay until SIGTERM or SIGINT, serving `/healthz`
//! and `/metrics`, cleaning up done rows in mark-done mode.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{CancellationToken, Drained, Error, Relay};

use crate::startup::{until_up, Readiness};

use crate::destination;
use crate::settings::{AckMode, Database, Settings};
use outbox_sql::Operator;

/// Default retention of done rows in mark-done mode: 7 days.
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs the relay described by `settings` until a signal, then stops within
/// `relay.shutdown_timeout`.
pub async fn run(outbox: Box<dyn Operator>, settings: Settings) -> Result<(), Error> {
    tracing::info!(
        source = settings.source.kind(),
        url = %settings.source.address(),
        table = %settings.source.shared.table,
        destination = settings.destination.kind(),
        address = %settings.destination.address(),
        "outbox-relay starting"
    );
    let outbox: Arc<dyn Operator> = Arc::from(outbox);
    let shutdown = CancellationToken::new();
    let readiness: Arc<Readiness> = Arc::default();
    // Installed before the relay is built, which describes its metrics.
    let metrics = crate::metrics::install().map_err(Error::permanent)?;

    // Bound and served before any connection, so a port in use fails at
    // start-up and `/healthz` says what a relay still coming up waits for.
    if let Some(address) = Some(settings.http.listen.as_str()).filter(|a| !a.is_empty()) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|err| {
                Error::permanent(format!("http.listen: cannot listen on {address}: {err}"))
            })?;
        let endpoints = crate::http::Endpoints {
            readiness: readiness.clone(),
            metrics,
        };
        tokio::spawn(crate::http::serve(
            listener,
            endpoints,
            shutdown.child_token(),
        ));
    }
    tokio::spawn(stop_on_signal(shutdown.clone()));
    if settings.source.shared.migrate {
        let migrated = until_up("database", &readiness, &shutdown, || outbox.migrate()).await?;
        if migrated.is_none() {
            return Ok(());
        }
        tracing::info!("outbox table migrated");
    }
    let shared = &settings.source.shared;
    if shared.ack == AckMode::MarkDone {
        let retention = shared
            .retention_ms
            .map_or(DEFAULT_RETENTION, Duration::from_millis);
        let every = Duration::from_millis(shared.cleanup_interval_ms);
        tokio::spawn(clean_up(outbox.clone(), retention, every, shutdown.clone()));
    }
    if let Database::Mysql(mysql) = &settings.source.database {
        let every = Duration::from_millis(mysql.prune_keys_interval_ms);
        tokio::spawn(prune_keys(outbox.clone(), every, shutdown.clone()));
    }
    let result = relay(&*outbox, settings, &readiness, &shutdown).await;
    shutdown.cancel();
    if let Some(stats) = readiness.stats() {
        let counts = stats.snapshot().counts;
        tracing::info!(
            published = counts.published,
            retried = counts.retried,
            dead_lettered = counts.dead_lettered,
            "outbox-relay stopped"
        );
    }
    result
}

/// Connects the source and the destination, each whatever its kind, and
/// relays between them until `shutdown`.
async fn relay(
    outbox: &dyn Operator,
    settings: Settings,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let connect = || outbox.relay_source();
    let Some(source) = until_up("database", readiness, shutdown, connect).await? else {
        return Ok(());
    };
    let Some(destination) =
        destination::connect(&settings.destination, readiness, shutdown).await?
    else {
        return Ok(());
    };
    let relay = Relay::new(source, destination, settings.relay)
        .map_err(|err| Error::permanent(format!("invalid configuration: relay.{err}")))?;
    readiness.running(relay.stats());
    relay.run(shutdown.clone()).await
}

/// `outbox-relay drain`: connects, delivers what is waiting now with
/// [`Relay::drain`], and returns what became of it. A server that cannot
/// be reached fails the drain at once (a scheduled job runs again later).
pub async fn drain(outbox: &dyn Operator, settings: Settings) -> Result<Drained, Error> {
    let source = outbox.relay_source().await?;
    // Cancelled from the start: one attempt at the broker, no waiting.
    let (readiness, shutdown) = (Readiness::default(), CancellationToken::new());
    shutdown.cancel();
    let Some(destination) =
        destination::connect(&settings.destination, &readiness, &shutdown).await?
    else {
        let reason = readiness.waiting_for();
        return Err(Error::temporary(reason.trim_start_matches("starting: ")));
    };
    let relay = Relay::new(source, destination, settings.relay)
        .map_err(|err| Error::permanent(format!("invalid configuration: relay.{err}")))?;
    relay.drain().await
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return;
        }
    };
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    tracing::info!(signal, "stopping: finishing in-flight messages");
    shutdown.cancel();
}

/// Prunes `<table>_keys` every `every` (MySQL).
async fn prune_keys(outbox: Arc<dyn Operator>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match outbox.prune(1000).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned keys with no message left"),
            Err(err) => tracing::warn!(error = %err.report(), "pruning keys failed"),
        }
    }
}

/// Deletes done rows older than `retention` every `every`.
async fn clean_up(
    outbox: Arc<dyn Operator>,
    retention: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match outbox.cleanup(retention, 1000).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "cleaned up delivered rows"),
            Err(err) => tracing::warn!(error = %err.report(), "cleanup failed"),
        }
    }
}
