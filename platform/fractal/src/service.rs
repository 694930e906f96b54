//! What every service process shares: its configuration (hub, consumer, admin endpoint, logs)
//! and the signal that tells it to stop.

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminConfig;
use crate::config::{Problems, Validate, join};
use crate::consume::ConsumerConfig;
use crate::hub::HubConfig;
use crate::telemetry::LogConfig;
use crate::wire;

/// Configuration of one service process.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// The subsystem the service belongs to (`ordering`).
    pub subsystem: String,
    /// The service's name within it (`checkout`); also its durable consumer's default name.
    pub service: String,
    /// The subsystem's hub.
    pub hub: HubConfig,
    /// How events are consumed.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// The admin endpoint (health, readiness, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

impl ServiceConfig {
    /// `<subsystem>/<service>`, recorded as the source of every event the service publishes.
    pub fn source(&self) -> String {
        format!("{}/{}", self.subsystem, self.service)
    }

    /// `<subsystem>-<service>`, the name of its traces.
    pub fn trace_name(&self) -> String {
        format!("{}-{}", self.subsystem, self.service)
    }
}

impl Validate for ServiceConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        problems.check(join(path, "subsystem"), wire::check_token(&self.subsystem));
        problems.check(join(path, "service"), wire::check_token(&self.service));
        self.hub.validate(&join(path, "hub"), problems);
        self.consumer.validate(&join(path, "consumer"), problems);
        self.admin.validate(&join(path, "admin"), problems);
        self.log.validate(&join(path, "log"), problems);
    }
}

/// A token cancelled on the first SIGTERM or Ctrl-C, for graceful shutdown.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::error!(error = %e, "Cannot listen for SIGTERM.");
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("Shutting down.");
        cancel.cancel();
    });
    token
}
