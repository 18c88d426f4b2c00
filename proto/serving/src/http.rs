//! The small HTTP endpoint every localml process serves with `--http-listen`:
//! `/metrics` (Prometheus text), `/healthz` (the process runs) and `/readyz` (it can do
//! its job), for Kubernetes probes and Prometheus.

use std::future::Future;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

/// What a process exposes: its metrics text, and whether it is ready.
pub trait Probe: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// Why the process cannot do its job now; `None` when it is ready.
    fn not_ready(&self) -> Option<String>;
    /// What the operator should know even when ready (e.g. an insecure listener); each
    /// is a `warning:` line of `/readyz`.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    probe: Arc<dyn Probe>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = {
        let probe = Arc::clone(&probe);
        move || {
            let probe = Arc::clone(&probe);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    probe.metrics(),
                )
            }
        }
    };
    let ready = move || {
        let probe = Arc::clone(&probe);
        async move {
            let warnings: String = probe
                .warnings()
                .iter()
                .map(|w| format!("warning: {w}\n"))
                .collect();
            match probe.not_ready() {
                None => (StatusCode::OK, format!("ready\n{warnings}")).into_response(),
                Some(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n{warnings}"),
                )
                    .into_response(),
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
