//! The Fractal bridge: relays selected external events from one hub to another, checking each
//! against its protobuf contract. Operators configure it; nothing in it is specific to a route.

pub mod config;
pub mod contracts;
mod metrics;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use fractal::Hub;
use fractal::admin::{self, Readiness};
use tokio_util::sync::CancellationToken;

pub use config::BridgeConfig;
pub use contracts::Contracts;

/// Runs the bridge until `shutdown` is cancelled, checking events against `contracts`. The
/// configuration must have been validated.
pub async fn run(
    config: BridgeConfig,
    contracts: Contracts,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (Some(source), Some(target)) = (
        Hub::connect_with_retry(&config.source, &shutdown).await?,
        Hub::connect_with_retry(&config.target, &shutdown).await?,
    ) else {
        return Ok(());
    };
    let readiness = Readiness::default().hub(&source).hub(&target);
    let addr = admin::serve(&config.admin, readiness, shutdown.clone()).await?;
    tracing::info!(bridge = %config.name, source = %source.name(), target = %target.name(), admin = %addr, "Bridge started.");
    let mut routes = Vec::new();
    for route in config.routes {
        let contract = contracts
            .find(&route.contract)
            .ok_or_else(|| anyhow::anyhow!(contracts.unknown(&route.contract)))?;
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
