//! The Fractal bridge: relays selected external events from one hub to another, checking each
//! against its protobuf contract. Operators configure it; nothing in it is specific to a route.

pub mod config;
pub mod contracts;
mod metrics;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use fractal::Hub;
use fractal::HubConfig;
use fractal::admin::{self, Readiness};
use tokio_util::sync::CancellationToken;

pub use config::BridgeConfig;

/// Connects to a hub, retrying with backoff until it answers or `shutdown` is cancelled.
async fn connect(config: &HubConfig, shutdown: &CancellationToken) -> Option<Hub> {
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let hub = Hub::connect(config).await?;
            hub.ensure_streams().await?;
            Ok::<_, fractal::hub::HubError>(hub)
        };
        match attempt.await {
            Ok(hub) => return Some(hub),
            Err(e) => {
                tracing::warn!(hub = %config.name, error = %e, retry_in_ms = delay.as_millis() as u64, "Hub unavailable; retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Runs the bridge until `shutdown` is cancelled. The configuration must have been validated.
pub async fn run(config: BridgeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (Some(source), Some(target)) = (
        connect(&config.source, &shutdown).await,
        connect(&config.target, &shutdown).await,
    ) else {
        return Ok(());
    };
    let readiness = Readiness::default().hub(&source).hub(&target);
    let addr = admin::serve(&config.admin, readiness, shutdown.clone()).await?;
    tracing::info!(bridge = %config.name, source = %source.name(), target = %target.name(), admin = %addr, "Bridge started.");
    let mut routes = Vec::new();
    for route in config.routes {
        let contract = contracts::find(&route.contract)
            .ok_or_else(|| anyhow::anyhow!("unknown contract `{}`", route.contract))?;
        let route = Arc::new(relay::Route::new(
            &config.name,
            route,
            config.relay.clone(),
            contract,
            source.clone(),
            target.clone(),
        ));
        routes.push(tokio::spawn(route.run(shutdown.clone())));
    }
    for route in routes {
        route.await?;
    }
    for hub in [&source, &target] {
        let _ = tokio::time::timeout(Duration::from_secs(5), hub.client().flush()).await;
    }
    tracing::info!(bridge = %config.name, "Bridge stopped.");
    Ok(())
}
