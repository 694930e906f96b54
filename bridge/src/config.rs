//! The bridge's configuration: which hub to read, which hub to write, and the routes that
//! select external events and name the contract each must satisfy.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use fractal::HubConfig;
use fractal::admin::AdminConfig;
use fractal::config::{ConfigError, Problems, Validate, join};
use fractal::consume::Start;
use fractal::telemetry::LogConfig;
use fractal::wire;
use serde::Deserialize;

use crate::contracts::Contracts;

/// One bridge: a link from a source hub to a target hub carrying one or more routes.
#[derive(Debug, Clone, Deserialize)]
pub struct BridgeConfig {
    /// Name of the bridge, a single token. Its durable consumers on the source hub are named
    /// `bridge-<name>-<route>`.
    pub name: String,
    /// The hub events are read from.
    pub source: HubConfig,
    /// The hub events are written to.
    pub target: HubConfig,
    /// What is relayed.
    pub routes: Vec<RouteConfig>,
    /// The contracts routes may name: a descriptor set file (`FileDescriptorSet`, as
    /// `fractal contracts build` writes it) or a folder of `.proto` files compiled at start.
    /// A relative path is from the config file's folder. Unset: the platform's own messages
    /// only. The descriptors are read once, at start: a bridge restarts to take new ones.
    #[serde(default)]
    pub contracts: Option<PathBuf>,
    /// How events are relayed.
    #[serde(default)]
    pub relay: RelayConfig,
    /// The admin endpoint (health, readiness, metrics).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// A selection of external events and the contract they must satisfy.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteConfig {
    /// Name of the route, a single token, unique in the bridge.
    pub name: String,
    /// External event types to relay. A token `*` matches any one token and a final `>` any
    /// rest, as in NATS subjects (`order.*`).
    pub types: Vec<String>,
    /// Fully qualified name of the protobuf message every selected event must carry
    /// (`food.ordering.v1.OrderPlaced`).
    pub contract: String,
    /// Publish on the target under this event type instead of the original one. Only for a
    /// route that selects one exact type.
    #[serde(default)]
    pub target_type: Option<String>,
}

impl RouteConfig {
    /// The source subjects the route reads.
    pub fn subjects(&self) -> Vec<String> {
        self.types
            .iter()
            .map(|t| wire::event_subject(wire::Scope::External, t))
            .collect()
    }
}

/// How events are relayed.
#[derive(Debug, Clone, Deserialize)]
pub struct RelayConfig {
    /// Where a route's new durable consumer starts: `all` relays the whole event lake, `new`
    /// only events published from now on, `since:<RFC 3339 time>` those stored from then on.
    #[serde(default)]
    pub start: Start,
    /// Messages asked for per pull from the source.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Relays sent to the target and not yet acknowledged by it, per route. When the target
    /// is slow or down, the route stops pulling at this many: memory stays bounded.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Seconds the source waits for an acknowledgement before delivering again.
    #[serde(default = "default_ack_wait_secs")]
    pub ack_wait_secs: u64,
    /// A route with events waiting and no relay for this many seconds reports `stalled`.
    #[serde(default = "default_stall_after_secs")]
    pub stall_after_secs: u64,
    /// Seconds between readings of each route's lag.
    #[serde(default = "default_lag_poll_secs")]
    pub lag_poll_secs: u64,
}

fn default_batch() -> usize {
    512
}
fn default_max_in_flight() -> usize {
    2048
}
fn default_ack_wait_secs() -> u64 {
    30
}
fn default_stall_after_secs() -> u64 {
    60
}
fn default_lag_poll_secs() -> u64 {
    5
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            start: Start::All,
            batch: default_batch(),
            max_in_flight: default_max_in_flight(),
            ack_wait_secs: default_ack_wait_secs(),
            stall_after_secs: default_stall_after_secs(),
            lag_poll_secs: default_lag_poll_secs(),
        }
    }
}

fn check_type_pattern(pattern: &str) -> Result<(), String> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        match *token {
            "*" => {}
            ">" if i == tokens.len() - 1 => {}
            ">" => return Err(format!("`{pattern}`: `>` may only end a pattern")),
            token => wire::check_name(token).map_err(|e| format!("`{pattern}`: {e}"))?,
        }
    }
    Ok(())
}

impl BridgeConfig {
    /// Loads the contracts the bridge is given (`folder`: its config file's folder, which a
    /// relative path starts from) and checks that each route's contract is among them.
    pub fn load_contracts(&self, folder: &Path) -> Result<Contracts, ConfigError> {
        let mut problems = Problems::default();
        let contracts = match &self.contracts {
            None => Contracts::builtin(),
            Some(path) => match Contracts::load(&folder.join(path)) {
                Ok(contracts) => contracts,
                Err(e) => {
                    problems.add("contracts", e.to_string());
                    return Err(ConfigError { problems });
                }
            },
        };
        for (i, route) in self.routes.iter().enumerate() {
            if contracts.find(&route.contract).is_none() {
                problems.add(
                    format!("routes[{i}].contract"),
                    contracts.unknown(&route.contract),
                );
            }
        }
        problems.into_result().map(|()| contracts)
    }
}

impl Validate for BridgeConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        problems.check(join(path, "name"), wire::check_token(&self.name));
        self.source.validate(&join(path, "source"), problems);
        self.target.validate(&join(path, "target"), problems);
        if self.source.name == self.target.name {
            problems.add(
                join(path, "target.name"),
                format!(
                    "source and target are both `{}`; a bridge joins two different hubs",
                    self.source.name
                ),
            );
        }
        if self.routes.is_empty() {
            problems.add(join(path, "routes"), "at least one route is needed");
        }
        let mut names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("{}[{i}]", join(path, "routes"));
            problems.check(join(&at, "name"), wire::check_token(&route.name));
            if !names.insert(route.name.as_str()) {
                problems.add(
                    join(&at, "name"),
                    format!("route `{}` is defined twice", route.name),
                );
            }
            if route.types.is_empty() {
                problems.add(join(&at, "types"), "at least one event type is needed");
            }
            for (j, pattern) in route.types.iter().enumerate() {
                problems.check(
                    format!("{}[{j}]", join(&at, "types")),
                    check_type_pattern(pattern),
                );
            }
            if let Some(target_type) = &route.target_type {
                problems.check(join(&at, "target_type"), wire::check_name(target_type));
                let exact = route.types.len() == 1 && !route.types[0].contains(['*', '>']);
                if !exact {
                    problems.add(
                        join(&at, "target_type"),
                        "only a route selecting one exact type can rename it",
                    );
                }
            }
        }
        let relay = join(path, "relay");
        if self.relay.start == Start::LatestPerKey {
            problems.add(
                join(&relay, "start"),
                "`latest-per-key` is for services' consumers; a route starts at `all`, `new` \
                 or `since:<time>`",
            );
        }
        for (key, value) in [
            ("batch", self.relay.batch as u64),
            ("max_in_flight", self.relay.max_in_flight as u64),
            ("ack_wait_secs", self.relay.ack_wait_secs),
            ("stall_after_secs", self.relay.stall_after_secs),
            ("lag_poll_secs", self.relay.lag_poll_secs),
        ] {
            if value == 0 {
                problems.add(join(&relay, key), "must be at least 1");
            }
        }
        self.admin.validate(&join(path, "admin"), problems);
        self.log.validate(&join(path, "log"), problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_patterns() {
        assert!(check_type_pattern("order.placed").is_ok());
        assert!(check_type_pattern("order.*").is_ok());
        assert!(check_type_pattern("order.>").is_ok());
        assert!(check_type_pattern(">").is_ok());
        assert!(check_type_pattern("order.>.x").is_err());
        assert!(check_type_pattern("Order").is_err());
        assert!(check_type_pattern("order..x").is_err());
    }
}
