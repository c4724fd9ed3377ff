//! Logs, metrics and the HTTP health endpoints of server processes.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use cohort_coordinator::Readiness;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Starts logging: human-readable by default, JSON when `COHORT_LOG_FORMAT=json`;
/// the level comes from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let json = std::env::var("COHORT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new().install_recorder().expect("the metrics recorder is installed once");
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

/// Serves `/metrics` (Prometheus text), `/health/live` (the process runs) and
/// `/health/ready` on `address`, in the background. Readiness answers 200
/// `ready`, 200 `degraded: …` (serving, with a dependency down) or 503.
/// Returns the bound address.
pub async fn serve_http(address: &str, ready: Arc<dyn Fn() -> Readiness + Send + Sync>) -> anyhow::Result<SocketAddr> {
    let handle = prometheus();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the metrics address {address}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = handle.render();
                std::future::ready((
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    body,
                ))
            }),
        )
        .route("/health/live", get(|| async { "ok" }))
        .route(
            "/health/ready",
            get(move || {
                let answer = match ready() {
                    Readiness::Ready => (StatusCode::OK, "ready".to_string()),
                    Readiness::Degraded(why) => (StatusCode::OK, format!("degraded: {why}")),
                    Readiness::NotReady(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
                };
                std::future::ready(answer)
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics endpoint failed");
        }
    });
    Ok(bound)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested; finishing in-flight requests");
}
