//! `/healthz` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use outbox_core::CancellationToken;
use tokio::net::TcpListener;

use crate::startup::Readiness;

/// What the endpoints read: the relay's state and the metrics recorded.
#[derive(Clone)]
pub struct Endpoints {
    /// The relay's statistics once it runs, or what it waits for.
    pub readiness: Arc<Readiness>,
    /// Renders the recorded metrics.
    pub metrics: PrometheusHandle,
}

/// Serves the endpoints on `listener` until `shutdown`, from start-up on:
/// before the relay runs, `/healthz` answers 503 with what it waits for.
pub async fn serve(listener: TcpListener, endpoints: Endpoints, shutdown: CancellationToken) {
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(endpoints);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "the HTTP endpoint stopped");
    }
}

/// 200 while the relay claims and delivers, 503 with the reason when it
/// stalls or has not started yet.
async fn healthz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let readiness = &endpoints.readiness;
    let Some(stats) = readiness.stats() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            readiness.waiting_for() + "\n",
        );
    };
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

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let body = match endpoints.readiness.stats() {
        Some(stats) => {
            // Health is a judgement of the moment: evaluated now, it sets
            // its gauge, so a stalled relay shows 0 without moving.
            stats.health();
            endpoints.metrics.render()
        }
        None => format!("# {}\n", endpoints.readiness.waiting_for()),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
