//! The admin endpoint every long-running program serves: `/healthz` (the process is alive),
//! `/readyz` (its hubs are reachable) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Problems, Validate, join};

/// Where the admin endpoint listens.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminConfig {
    /// Address and port (`0.0.0.0:9090`); port 0 picks a free one.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:9090".into()
}

impl Validate for AdminConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            problems.add(
                join(path, "listen"),
                format!("`{}` is not an address:port: {e}", self.listen),
            );
        }
    }
}

type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The checks `/readyz` runs; each names what is not ready.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<Check>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Readiness({} checks)", self.checks.len())
    }
}

impl Readiness {
    /// Adds a check.
    pub fn check(mut self, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.checks.push(Arc::new(check));
        self
    }

    /// Adds a check that the hub is connected.
    pub fn hub(self, hub: &crate::Hub) -> Self {
        let hub = hub.clone();
        self.check(move || {
            if hub.is_connected() {
                Ok(())
            } else {
                Err(format!("hub `{}` is not connected", hub.name()))
            }
        })
    }

    /// Runs every check.
    pub fn status(&self) -> Result<(), Vec<String>> {
        let failures: Vec<String> = self.checks.iter().filter_map(|c| c().err()).collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }
}

/// Serves the admin endpoint until `shutdown` is cancelled. Returns the bound address once
/// listening; the server runs in a background task.
pub async fn serve(
    config: &AdminConfig,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.status() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(failures) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready:\n{}\n", failures.join("\n")),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    crate::metrics::encode(),
                )
                    .into_response()
            }),
        );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Admin endpoint stopped.");
        }
    });
    tracing::info!(%addr, "Admin endpoint listening.");
    Ok(addr)
}
