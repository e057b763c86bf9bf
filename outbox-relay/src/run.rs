//! `outbox-relay run`: relay until SIGTERM or SIGINT, serving `/healthz`
//! and `/metrics`, cleaning up done rows in mark-done mode.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{redact_url, CancellationToken, Error, Stats};

use crate::startup::{until_up, Readiness};

use crate::destination::relay_to;
use crate::outbox::Outbox;
use crate::settings::{Ack, Settings, SourceKind};

/// Default retention of done rows in mark-done mode: 7 days.
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Runs the relay described by `settings` until a signal, then stops within
/// `relay.shutdown_timeout`.
pub async fn run(outbox: Outbox, settings: Settings) -> Result<(), Error> {
    let destination_address = match &settings.destination.url {
        Some(url) => redact_url(url),
        None => settings.destination.brokers.clone().unwrap_or_default(),
    };
    // A SQLite path holds no credentials; anything else is shown redacted.
    let source_address = match settings.source.kind {
        crate::settings::SourceKind::Sqlite => settings.source.url.clone(),
        _ => redact_url(&settings.source.url),
    };
    tracing::info!(
        source = ?settings.source.kind,
        url = %source_address,
        table = %settings.source.table,
        destination = ?settings.destination.kind,
        address = %destination_address,
        "outbox-relay starting"
    );
    let outbox = Arc::new(outbox);
    let shutdown = CancellationToken::new();
    let readiness: Arc<Readiness> = Arc::default();

    // Bound and served before any connection, so a port in use fails at
    // start-up and `/healthz` says what a relay still coming up waits for.
    if let Some(address) = Some(settings.http.listen.as_str()).filter(|a| !a.is_empty()) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|err| {
                Error::permanent(format!("http.listen: cannot listen on {address}: {err}"))
            })?;
        tokio::spawn(crate::http::serve(
            listener,
            readiness.clone(),
            shutdown.child_token(),
        ));
    }
    tokio::spawn(stop_on_signal(shutdown.clone()));
    if settings.source.migrate {
        let migrated = until_up("database", &readiness, &shutdown, || outbox.migrate()).await?;
        if migrated.is_none() {
            return Ok(());
        }
        tracing::info!("outbox table migrated");
    }
    if settings.source.ack == Ack::MarkDone {
        let retention = settings
            .source
            .retention_ms
            .map_or(DEFAULT_RETENTION, Duration::from_millis);
        let every = Duration::from_millis(settings.source.cleanup_interval_ms);
        tokio::spawn(clean_up(outbox.clone(), retention, every, shutdown.clone()));
    }
    if settings.source.kind == SourceKind::Mysql {
        let every = Duration::from_millis(
            settings
                .source
                .prune_keys_interval_ms
                .unwrap_or(DEFAULT_PRUNE_KEYS_INTERVAL_MS),
        );
        tokio::spawn(prune_keys(outbox.clone(), every, shutdown.clone()));
    }
    // The relay is generic over the source: one arm per kind compiled in.
    macro_rules! relay {
        ($source:expr) => {
            relay_to(
                &settings.destination,
                $source,
                settings.relay.clone(),
                &readiness,
                shutdown.clone(),
            )
            .await
        };
    }
    let result = match &*outbox {
        #[cfg(feature = "postgres")]
        Outbox::Postgres(outbox, pool) => {
            let connect = || outbox.source(pool.clone());
            match until_up("database", &readiness, &shutdown, connect).await? {
                Some(source) => relay!(source),
                None => Ok(()),
            }
        }
        #[cfg(feature = "mysql")]
        Outbox::Mysql(outbox, pool) => relay!(outbox.source(pool.clone())),
        #[cfg(feature = "sqlite")]
        Outbox::Sqlite(outbox, pool) => relay!(outbox.source(pool.clone())),
    };
    shutdown.cancel();
    if let Some(stats) = readiness.stats() {
        tracing::info!(
            published = Stats::get(&stats.published),
            retried = Stats::get(&stats.retried),
            dead_lettered = Stats::get(&stats.dead_lettered),
            "outbox-relay stopped"
        );
    }
    result
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

/// MySQL: how often `<table>_keys` is pruned unless configured.
const DEFAULT_PRUNE_KEYS_INTERVAL_MS: u64 = 600_000;

/// Prunes `<table>_keys` every `every` (MySQL).
async fn prune_keys(outbox: Arc<Outbox>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match outbox.prune_keys().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned keys with no message left"),
            Err(err) => tracing::warn!(error = %err.report(), "pruning keys failed"),
        }
    }
}

/// Deletes done rows older than `retention` every `every`.
async fn clean_up(
    outbox: Arc<Outbox>,
    retention: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match outbox.cleanup(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "cleaned up delivered rows"),
            Err(err) => tracing::warn!(error = %err.report(), "cleanup failed"),
        }
    }
}
