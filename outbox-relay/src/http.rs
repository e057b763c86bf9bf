//! `/healthz` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use outbox_core::{CancellationToken, Stats};
use tokio::net::TcpListener;

/// Serves the endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, shutdown: CancellationToken) {
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(stats);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "the HTTP endpoint stopped");
    }
}

/// 200 while the relay claims and delivers, 503 with the reason when it
/// stalls.
async fn healthz(State(stats): State<Arc<Stats>>) -> impl IntoResponse {
    let health = stats.health();
    let status = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = health.reason;
    if let Some(error) = health.last_error {
        body.push_str("\nlast error: ");
        body.push_str(&error);
    }
    (status, body + "\n")
}

async fn metrics(State(stats): State<Arc<Stats>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&stats),
    )
}
