//! The topology file: a system's hubs, the services on each and the bridges between them.
//! Services and bridges are named by their own config files, the same files they run with
//! anywhere; the topology adds only what a local run and the graph need.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use fractal::config::{ConfigError, Problems, Validate, join};
use fractal::service::ServiceConfig;
use fractal::wire;
use fractal_bridge::{BridgeConfig, Contracts};
use serde::Deserialize;

/// The topology file as written.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TopologyFile {
    /// The system's name.
    pub(crate) name: String,
    /// Its hubs, by name; one `nats-server` each when run locally.
    pub(crate) hubs: BTreeMap<String, HubSpec>,
    /// Its services.
    #[serde(default)]
    pub(crate) services: Vec<ServiceSpec>,
    /// Its bridges.
    #[serde(default)]
    pub(crate) bridges: Vec<BridgeSpec>,
    /// Whole systems included as subsystems of this one, each from its own topology file.
    #[serde(default)]
    pub(crate) systems: Vec<SystemSpec>,
    /// The program `fractal demo` runs against the running system.
    #[serde(default)]
    pub(crate) demo: Option<DemoSpec>,
    /// The system's contracts, for tools that read and write payloads: a descriptor set file
    /// or a folder of `.proto` files, relative to the topology file. Default: `proto` beside
    /// it, if there is one.
    #[serde(default)]
    pub(crate) contracts: Option<PathBuf>,
}

/// A hub: its servers and the one definition of its streams.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct HubSpec {
    /// Its client port on this machine (its first node's; node `i` adds `100 × i`).
    pub(crate) port: u16,
    /// Its monitoring port (`/varz`, `/jsz`, `/healthz`). Default: the client port + 4000, as
    /// NATS's own 4222 and 8222.
    #[serde(default)]
    pub(crate) monitor: Option<u16>,
    /// Its cluster port, for the routes between its nodes. Default: the client port + 2000,
    /// as NATS's own 6222.
    #[serde(default)]
    pub(crate) cluster: Option<u16>,
    /// How many servers it runs as: 1, or a cluster of 3 or 5.
    #[serde(default = "one")]
    pub(crate) nodes: usize,
    /// When its servers write to disk: `default` (NATS's own: every 2 minutes, relying on
    /// replicas) or `always` (before acknowledging each write).
    #[serde(default)]
    pub(crate) sync: Sync,
    /// Its events and faults streams (and views), the same for every client; unset settings
    /// keep the platform's defaults (an unlimited, file-backed lake), and replicas default to
    /// as many as the hub has nodes, at most 3.
    #[serde(default)]
    pub(crate) streams: fractal::hub::StreamSettings,
}

fn one() -> usize {
    1
}

/// When a hub's servers write to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Sync {
    /// NATS's default: fsync every 2 minutes; replicas carry what is not yet on disk.
    #[default]
    Default,
    /// fsync before acknowledging each write.
    Always,
}

impl HubSpec {
    /// The monitoring port.
    pub(crate) fn monitor(&self) -> u16 {
        self.monitor.unwrap_or(self.port.saturating_add(4000))
    }

    /// The cluster port.
    pub(crate) fn cluster(&self) -> u16 {
        self.cluster.unwrap_or(self.port.saturating_add(2000))
    }

    /// The replicas of its streams and views.
    pub(crate) fn replicas(&self) -> usize {
        self.streams.replicas.unwrap_or(self.nodes.min(3))
    }

    /// `stream` with the settings this hub defines (its name stays the client's).
    pub(crate) fn apply(&self, stream: &mut fractal::hub::StreamConfig) {
        let settings = fractal::hub::StreamSettings {
            name: None,
            replicas: Some(self.replicas()),
            ..self.streams.clone()
        };
        *stream = settings.onto(stream.clone());
    }

    /// The ports of node `i`: client, monitoring and cluster.
    pub(crate) fn node_ports(&self, i: usize) -> [u16; 3] {
        let step = 100 * i as u16;
        [self.port, self.monitor(), self.cluster()].map(|p| p.saturating_add(step))
    }
}

/// A service.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ServiceSpec {
    /// The program that runs it (a binary of the workspace: `restaurant`).
    pub(crate) program: String,
    /// Its config file, relative to the topology file.
    pub(crate) config: PathBuf,
    /// External contracts (event types) it publishes on its hub.
    #[serde(default)]
    pub(crate) publishes: Vec<String>,
    /// External contracts (event types) it consumes from its hub.
    #[serde(default)]
    pub(crate) consumes: Vec<String>,
    /// The views it keeps (their buckets are provisioned with the hub's streams, and only
    /// this service may read and write them).
    #[serde(default)]
    pub(crate) views: Vec<String>,
}

/// A system included whole as a subsystem: its hubs, services and bridges take its name as
/// a prefix (`north.ordering`), and its ports shift by its offset.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SystemSpec {
    /// Its name here, a single token: the first part of its hubs' and services' paths.
    pub(crate) name: String,
    /// Its topology file, relative to this one: the same file it runs with on its own.
    pub(crate) topology: PathBuf,
    /// What its ports (hubs, services, bridges) are shifted by. Default: 1000 for the first
    /// system included here, 2000 for the second, and so on, added to this system's own.
    #[serde(default)]
    pub(crate) port_offset: Option<u16>,
}

/// A bridge.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BridgeSpec {
    /// Its config file (the bridge program's own format), relative to the topology file.
    pub(crate) config: PathBuf,
}

/// The demo.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DemoSpec {
    /// The program (a binary of the workspace). It gets `--system <running.json>` and
    /// `--orders N`.
    pub(crate) program: String,
}

impl Validate for TopologyFile {
    fn validate(&self, path: &str, problems: &mut Problems) {
        problems.check(join(path, "name"), wire::check_token(&self.name));
        if self.hubs.is_empty() {
            problems.add(join(path, "hubs"), "a system needs at least one hub");
        }
        for (name, hub) in &self.hubs {
            let at = join(path, &format!("hubs.{name}"));
            problems.check(&at, wire::check_token(name));
            if hub.port == 0 {
                problems.add(join(&at, "port"), "must be a port number, not 0");
            }
            if hub.monitor == Some(0) || (hub.monitor.is_none() && hub.port > u16::MAX - 4000) {
                problems.add(
                    join(&at, "monitor"),
                    "must be a port number, not 0 (the default, port + 4000, is past 65535)",
                );
            }
            if hub.monitor() == hub.port {
                problems.add(join(&at, "monitor"), "must differ from the client port");
            }
            if ![1, 3, 5].contains(&hub.nodes) {
                problems.add(
                    join(&at, "nodes"),
                    format!(
                        "{} nodes: a hub runs as 1 server or a cluster of 3 or 5",
                        hub.nodes
                    ),
                );
            } else if !(hub.nodes == 1 || hub.cluster.is_some() || hub.port <= u16::MAX - 2400) {
                problems.add(
                    join(&at, "cluster"),
                    "the default, port + 2000, is past 65535",
                );
            }
            if hub.streams.name.is_some() {
                problems.add(
                    join(&at, "streams.name"),
                    "each client names the hub's streams in its own configuration",
                );
            }
            let replicas = hub.replicas();
            if ![1, 3, 5].contains(&hub.nodes) {
                // Reported above; the default replicas follow from the nodes.
            } else if ![1, 3, 5].contains(&replicas) {
                problems.add(join(&at, "streams.replicas"), "must be 1, 3 or 5");
            } else if replicas > hub.nodes {
                problems.add(
                    join(&at, "streams.replicas"),
                    format!(
                        "{replicas} replicas need at least {replicas} nodes; the hub has {}",
                        hub.nodes
                    ),
                );
            }
        }
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            problems.check(join(&at, "program"), wire::check_token(&service.program));
            for (key, types) in [
                ("publishes", &service.publishes),
                ("consumes", &service.consumes),
            ] {
                for (j, event_type) in types.iter().enumerate() {
                    problems.check(format!("{at}.{key}[{j}]"), wire::check_name(event_type));
                }
            }
            for (j, view) in service.views.iter().enumerate() {
                if view.is_empty()
                    || !view
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    problems.add(
                        format!("{at}.views[{j}]"),
                        format!("`{view}` is not a view name (letters, digits, `_` and `-`)"),
                    );
                }
            }
        }
        let mut systems = BTreeSet::new();
        for (i, system) in self.systems.iter().enumerate() {
            let at = format!("systems[{i}].name");
            problems.check(&at, wire::check_token(&system.name));
            if self.hubs.contains_key(&system.name) {
                problems.add(
                    &at,
                    format!("`{}` is both a hub and a system here", system.name),
                );
            }
            if !systems.insert(&system.name) {
                problems.add(&at, format!("system `{}` is included twice", system.name));
            }
        }
        if let Some(demo) = &self.demo {
            problems.check("demo.program", wire::check_token(&demo.program));
        }
    }
}

/// A service with its configuration read.
#[derive(Debug, Clone)]
pub(crate) struct Service {
    /// The path of the system it belongs to (`north`), empty at the top.
    pub(crate) system: String,
    /// Where the topology names it (`services[2] (…/gateway.toml)`, under its system's entry
    /// when included).
    pub(crate) at: String,
    /// As the topology names it.
    pub(crate) spec: ServiceSpec,
    /// Its config file, resolved.
    pub(crate) config_path: PathBuf,
    /// Its configuration.
    pub(crate) config: ServiceConfig,
}

impl Service {
    /// `<subsystem>/<service>`.
    pub(crate) fn name(&self) -> String {
        self.config.source()
    }

    /// The hub it runs on.
    pub(crate) fn hub(&self) -> &str {
        &self.config.hub.name
    }
}

/// A bridge with its configuration read.
#[derive(Debug, Clone)]
pub(crate) struct Bridge {
    /// Where the topology names it.
    pub(crate) at: String,
    /// Its config file, resolved.
    pub(crate) config_path: PathBuf,
    /// Its configuration.
    pub(crate) config: BridgeConfig,
}

impl Bridge {
    /// The event types each route delivers to the target (after any renaming), with the
    /// route's contract.
    pub(crate) fn deliveries(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for route in &self.config.routes {
            match &route.target_type {
                Some(target) => out.push((target.clone(), route.contract.clone())),
                None => out.extend(
                    route
                        .types
                        .iter()
                        .map(|t| (t.clone(), route.contract.clone())),
                ),
            }
        }
        out
    }
}

/// A topology with every file it names read and checked.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    /// The topology file.
    pub(crate) path: PathBuf,
    /// The system's name.
    pub(crate) name: String,
    /// Its hubs, by name.
    pub(crate) hubs: BTreeMap<String, HubSpec>,
    /// The services.
    pub(crate) services: Vec<Service>,
    /// The bridges.
    pub(crate) bridges: Vec<Bridge>,
    /// The demo, if any.
    pub(crate) demo: Option<DemoSpec>,
    /// The system's contracts.
    pub(crate) contracts: Contracts,
}

/// Whether the event type `event_type` matches the route pattern `pattern` (`*` one token, a
/// final `>` the rest).
pub(crate) fn matches(pattern: &str, event_type: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = event_type.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn port_of(url: &str) -> Option<u16> {
    url::Url::parse(url).ok()?.port().or(Some(4222))
}

fn listen_port(listen: &str) -> Option<u16> {
    listen
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.port())
}

impl Topology {
    /// Service `name` (`<subsystem>/<service>`), or an error listing the services there are.
    pub(crate) fn service(&self, name: &str) -> anyhow::Result<&Service> {
        self.services
            .iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let names: Vec<String> = self.services.iter().map(Service::name).collect();
                anyhow::anyhow!(
                    "no service `{name}` in the topology (services: {})",
                    names.join(", ")
                )
            })
    }

    /// Reads and checks the topology at `path`, every config it names and every system it
    /// includes, recursively; reports every problem found, each with where it is. An included
    /// system's hubs, services and bridges are named by their path (`north.ordering`,
    /// `north.ordering/gateway`, bridge `north-ordering-to-system`) and their ports shifted by
    /// its offset: the whole tree is one topology.
    pub(crate) fn load(path: &Path) -> Result<Topology, ConfigError> {
        let mut problems = Problems::default();
        let Some(topology) = read_system(path, &Nesting::default(), &mut problems) else {
            return Err(ConfigError { problems });
        };
        topology.check(&mut problems);
        problems.into_result().map(|()| topology)
    }

    /// Checks across files: hubs named exist and agree on ports, nothing shares a port, and
    /// every contract a bridge carries or a service consumes has a producer.
    fn check(&self, problems: &mut Problems) {
        let hub_port = |name: &str| self.hubs.get(name).map(|h| h.port);
        let service_at = |s: &Service| s.at.clone();
        let bridge_at = |b: &Bridge| b.at.clone();
        let check_hub =
            |problems: &mut Problems, at: String, key: &str, hub: &fractal::HubConfig| {
                match hub_port(&hub.name) {
                    None => problems.add(
                        format!("{at}: {key}.name"),
                        format!(
                            "hub `{}` is not in the topology (hubs: {})",
                            hub.name,
                            self.hubs.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ),
                    Some(port) => {
                        for (j, url) in hub.urls.iter().enumerate() {
                            if port_of(url) != Some(port) {
                                problems.add(
                                    format!("{at}: {key}.urls[{j}]"),
                                    format!(
                                        "`{url}` is not hub `{}`, which listens on port {port}",
                                        hub.name
                                    ),
                                );
                            }
                        }
                    }
                }
            };
        let mut names = BTreeSet::new();
        for service in &self.services {
            check_hub(problems, service_at(service), "hub", &service.config.hub);
            if !names.insert(service.name()) {
                problems.add(
                    service_at(service),
                    format!("service `{}` appears twice", service.name()),
                );
            }
        }
        let mut bridge_names = BTreeSet::new();
        for bridge in &self.bridges {
            check_hub(problems, bridge_at(bridge), "source", &bridge.config.source);
            check_hub(problems, bridge_at(bridge), "target", &bridge.config.target);
            if !bridge_names.insert(bridge.config.name.clone()) {
                problems.add(
                    bridge_at(bridge),
                    format!("bridge `{}` appears twice", bridge.config.name),
                );
            }
        }

        // Ports: each used once on this machine.
        let mut ports: HashMap<u16, String> = HashMap::new();
        let mut claim = |port: Option<u16>, owner: String, problems: &mut Problems| {
            let Some(port) = port else { return };
            if port == 0 {
                problems.add(
                    owner,
                    "port 0 (any free port) cannot be found by `fractal up`; give a fixed port",
                );
                return;
            }
            if let Some(first) = ports.get(&port) {
                problems.add(owner, format!("port {port} is already used by {first}"));
            } else {
                ports.insert(port, owner);
            }
        };
        for (name, hub) in &self.hubs {
            for i in 0..hub.nodes {
                let [port, monitor, cluster] = hub.node_ports(i);
                let node = if i == 0 {
                    String::new()
                } else {
                    format!(" (node {i})")
                };
                claim(Some(port), format!("hubs.{name}.port{node}"), problems);
                claim(
                    Some(monitor),
                    format!("hubs.{name}.monitor{node}"),
                    problems,
                );
                if hub.nodes > 1 {
                    claim(
                        Some(cluster),
                        format!("hubs.{name}.cluster{node}"),
                        problems,
                    );
                }
            }
        }
        for service in &self.services {
            if let Some(grpc) = &service.config.grpc {
                claim(
                    listen_port(&grpc.listen),
                    format!("{}: grpc.listen", service_at(service)),
                    problems,
                );
            }
            claim(
                listen_port(&service.config.admin.listen),
                format!("{}: admin.listen", service_at(service)),
                problems,
            );
        }
        for bridge in &self.bridges {
            claim(
                listen_port(&bridge.config.admin.listen),
                format!("{}: admin.listen", bridge_at(bridge)),
                problems,
            );
        }

        // Contracts: whatever a route carries or a service consumes is produced on that hub,
        // by one of its services or by a bridge into it.
        let produced = |hub: &str, pattern: &str| {
            self.services
                .iter()
                .filter(|s| s.hub() == hub)
                .flat_map(|s| &s.spec.publishes)
                .any(|t| matches(pattern, t))
                || self
                    .bridges
                    .iter()
                    .filter(|b| b.config.target.name == hub)
                    .flat_map(|b| b.deliveries())
                    .any(|(t, _)| matches(pattern, &t) || matches(&t, pattern))
        };
        for bridge in &self.bridges {
            for (j, route) in bridge.config.routes.iter().enumerate() {
                for (k, pattern) in route.types.iter().enumerate() {
                    if !produced(&bridge.config.source.name, pattern) {
                        problems.add(
                            format!("{}: routes[{j}].types[{k}]", bridge_at(bridge)),
                            format!(
                                "nothing publishes `{pattern}` on hub `{}` (no service lists it in `publishes`, no bridge brings it)",
                                bridge.config.source.name
                            ),
                        );
                    }
                }
            }
        }
        for service in &self.services {
            for (j, event_type) in service.spec.consumes.iter().enumerate() {
                if !produced(service.hub(), event_type) {
                    problems.add(
                        format!("{}: consumes[{j}]", service_at(service)),
                        format!("nothing brings `{event_type}` to hub `{}`", service.hub()),
                    );
                }
            }
        }
    }

    /// The configuration of hub `name` as its clients must see it: every node's URL (local,
    /// shifted by `offset`, `tls://` with `tls`), and its streams as the topology defines
    /// them, named as its clients name them.
    pub(crate) fn hub_config(
        &self,
        name: &str,
        offset: u16,
        tls: bool,
    ) -> Option<fractal::HubConfig> {
        let spec = self.hubs.get(name)?;
        let mut config = self
            .services
            .iter()
            .map(|s| &s.config.hub)
            .chain(
                self.bridges
                    .iter()
                    .flat_map(|b| [&b.config.source, &b.config.target]),
            )
            .find(|h| h.name == name)
            .cloned()
            .unwrap_or_else(|| fractal::HubConfig::local(name, ""));
        config.urls = crate::hubs::nodes(name, spec, offset, tls)
            .ok()?
            .iter()
            .map(crate::hubs::Node::url)
            .collect();
        spec.apply(&mut config.events);
        spec.apply(&mut config.faults);
        Some(config)
    }

    /// The part of the topology that runs `subsystems` alone: each a hub (`ordering`,
    /// `north.ordering`) or an included system (`north`, every hub under it); their hubs, their
    /// services, and the bridges between two of them. Empty means everything.
    pub(crate) fn select(&self, subsystems: &[String]) -> Result<Topology, String> {
        if subsystems.is_empty() {
            return Ok(self.clone());
        }
        let under = |name: &str, hub: &str| {
            hub == name
                || hub
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        for name in subsystems {
            if !self.hubs.keys().any(|hub| under(name, hub)) {
                let mut choices: BTreeSet<String> = self.hubs.keys().cloned().collect();
                for hub in self.hubs.keys() {
                    let mut path = String::new();
                    for token in hub
                        .split('.')
                        .collect::<Vec<_>>()
                        .iter()
                        .rev()
                        .skip(1)
                        .rev()
                    {
                        path = if path.is_empty() {
                            (*token).to_owned()
                        } else {
                            format!("{path}.{token}")
                        };
                        choices.insert(path.clone());
                    }
                }
                return Err(format!(
                    "`{name}` is not a subsystem of `{}`; choose from {}",
                    self.name,
                    choices.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        let chosen = |hub: &str| subsystems.iter().any(|s| under(s, hub));
        let mut part = self.clone();
        part.hubs.retain(|name, _| chosen(name));
        part.services.retain(|s| chosen(s.hub()));
        part.bridges
            .retain(|b| chosen(&b.config.source.name) && chosen(&b.config.target.name));
        Ok(part)
    }
}

fn read(path: &Path) -> Result<String, Problems> {
    std::fs::read_to_string(path).map_err(|e| {
        let mut problems = Problems::default();
        problems.add("", format!("cannot read `{}`: {e}", path.display()));
        problems
    })
}

/// Adds `found` (problems of the file `file`, named at `at` in the topology) to `problems`.
fn nest(problems: &mut Problems, at: &str, file: &Path, found: Problems) {
    for problem in found.iter() {
        let path = if problem.path.is_empty() {
            format!("{at} ({})", file.display())
        } else {
            format!("{at} ({}): {}", file.display(), problem.path)
        };
        problems.add(path, problem.message.clone());
    }
}

/// Where a system sits in the tree being read.
#[derive(Debug, Default, Clone)]
struct Nesting {
    /// Its path with a trailing dot (`north.`), empty at the root.
    prefix: String,
    /// How problems in it are named (`systems[0] (north: …/fractal.toml): `).
    label: String,
    /// What its ports are shifted by.
    offset: u16,
    /// The topology files from the root to it, to refuse a cycle.
    files: Vec<PathBuf>,
}

impl Nesting {
    /// A path under this system: `north.ordering` for `ordering`.
    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A single-token name under this system: `north-ordering-to-system`.
    fn token(&self, name: &str) -> String {
        format!("{}{name}", self.prefix.replace('.', "-"))
    }
}

/// Reads the system at `path` as `nesting` places it, with the systems it includes, into one
/// topology (not yet checked across files); `None` if its own file cannot be read.
fn read_system(path: &Path, nesting: &Nesting, problems: &mut Problems) -> Option<Topology> {
    let label = &nesting.label;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problems.add(
                label.trim_end_matches(": "),
                format!("cannot read `{}`: {e}", path.display()),
            );
            return None;
        }
    };
    let file: TopologyFile = match fractal::config::from_toml(&text) {
        Ok(file) => file,
        Err(e) => {
            for problem in e.problems.iter() {
                problems.add(format!("{label}{}", problem.path), problem.message.clone());
            }
            return None;
        }
    };
    let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let offset = nesting.offset;

    let mut services = Vec::new();
    for (i, spec) in file.services.iter().enumerate() {
        let at = format!("{label}services[{i}]");
        let config_path = root.join(&spec.config);
        match read(&config_path).and_then(|text| {
            fractal::config::from_toml::<ServiceConfig>(&text).map_err(|e| e.problems)
        }) {
            Ok(mut config) => {
                if !nesting.prefix.is_empty() {
                    config.subsystem = nesting.path(&config.subsystem);
                    let placed = place_hub(&mut config.hub, nesting).and_then(|()| {
                        config.admin.listen = shift_listen(&config.admin.listen, offset)?;
                        if let Some(grpc) = &mut config.grpc {
                            grpc.listen = shift_listen(&grpc.listen, offset)?;
                        }
                        Ok(())
                    });
                    if let Err(e) = placed {
                        problems.add(format!("{at} ({})", spec.config.display()), e);
                    }
                }
                services.push(Service {
                    system: nesting.prefix.trim_end_matches('.').to_owned(),
                    at: format!("{at} ({})", spec.config.display()),
                    spec: spec.clone(),
                    config_path,
                    config,
                })
            }
            Err(found) => nest(problems, &at, &spec.config, found),
        }
    }
    let mut bridges = Vec::new();
    for (i, spec) in file.bridges.iter().enumerate() {
        let at = format!("{label}bridges[{i}]");
        let config_path = root.join(&spec.config);
        match read(&config_path).and_then(|text| {
            fractal::config::from_toml::<BridgeConfig>(&text).map_err(|e| e.problems)
        }) {
            Ok(mut config) => {
                let folder = config_path.parent().unwrap_or(Path::new("."));
                if let Err(e) = config.load_contracts(folder) {
                    nest(problems, &at, &spec.config, e.problems);
                }
                if !nesting.prefix.is_empty() {
                    config.name = nesting.token(&config.name);
                    let placed = place_hub(&mut config.source, nesting)
                        .and_then(|()| place_hub(&mut config.target, nesting))
                        .and_then(|()| {
                            config.admin.listen = shift_listen(&config.admin.listen, offset)?;
                            Ok(())
                        });
                    if let Err(e) = placed {
                        problems.add(format!("{at} ({})", spec.config.display()), e);
                    }
                }
                bridges.push(Bridge {
                    at: format!("{at} ({})", spec.config.display()),
                    config_path,
                    config,
                })
            }
            Err(found) => nest(problems, &at, &spec.config, found),
        }
    }
    let mut hubs = BTreeMap::new();
    for (name, spec) in &file.hubs {
        match shift_hub(spec, offset) {
            Ok(spec) => {
                hubs.insert(nesting.path(name), spec);
            }
            Err(e) => problems.add(format!("{label}hubs.{name}"), e),
        }
    }
    let contracts_path = root.join(file.contracts.as_deref().unwrap_or(Path::new("proto")));
    // Tools read payloads with the top's contracts: an included system's are not loaded (its
    // bridges load their own).
    let contracts =
        if !nesting.prefix.is_empty() || (file.contracts.is_none() && !contracts_path.exists()) {
            Contracts::builtin()
        } else {
            Contracts::load(&contracts_path).unwrap_or_else(|e| {
                problems.add(format!("{label}contracts"), e.to_string());
                Contracts::builtin()
            })
        };
    let mut topology = Topology {
        path: path.to_path_buf(),
        name: file.name,
        hubs,
        services,
        bridges,
        demo: file.demo,
        contracts,
    };

    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for (i, system) in file.systems.iter().enumerate() {
        let included = root.join(&system.topology);
        let at = format!("{label}systems[{i}]");
        let child_canonical = std::fs::canonicalize(&included).unwrap_or_else(|_| included.clone());
        let chain: Vec<&PathBuf> = nesting.files.iter().chain([&canonical]).collect();
        if let Some(first) = chain.iter().position(|f| **f == child_canonical) {
            let cycle: Vec<String> = chain[first..]
                .iter()
                .chain([&&child_canonical])
                .map(|f| f.display().to_string())
                .collect();
            problems.add(
                format!("{at}.topology"),
                format!("includes itself: {}", cycle.join(" → ")),
            );
            continue;
        }
        let own = system.port_offset.or_else(|| {
            u16::try_from(i + 1)
                .ok()
                .and_then(|place| place.checked_mul(1000))
        });
        let Some(shifted) = own.and_then(|own| offset.checked_add(own)) else {
            problems.add(
                format!("{at}.port_offset"),
                format!("{own:?} on top of {offset} is past 65535"),
            );
            continue;
        };
        let child = Nesting {
            prefix: nesting.path(&format!("{}.", system.name)),
            label: format!(
                "{at} ({}: {}): ",
                nesting.path(&system.name),
                system.topology.display()
            ),
            offset: shifted,
            files: chain.into_iter().cloned().collect(),
        };
        if let Some(included) = read_system(&included, &child, problems) {
            topology.hubs.extend(included.hubs);
            topology.services.extend(included.services);
            topology.bridges.extend(included.bridges);
        }
    }
    Some(topology)
}

/// `port` shifted by `offset`, or why it cannot be.
fn shift(port: u16, offset: u16) -> Result<u16, String> {
    port.checked_add(offset)
        .ok_or_else(|| format!("port {port} shifted by {offset} is past 65535"))
}

/// A client's view of a hub of an included system: its path name, its URLs' ports shifted.
fn place_hub(hub: &mut fractal::HubConfig, nesting: &Nesting) -> Result<(), String> {
    hub.name = nesting.path(&hub.name);
    for url in &mut hub.urls {
        if let Ok(mut parsed) = url::Url::parse(url) {
            // A URL without a port is NATS's 4222, as `port_of` reads it.
            let port = shift(parsed.port().unwrap_or(4222), nesting.offset)?;
            if parsed.set_port(Some(port)).is_ok() {
                *url = parsed.to_string().trim_end_matches('/').to_owned();
            }
        }
    }
    Ok(())
}

/// A hub's ports (client, monitoring, cluster) shifted by `offset`.
fn shift_hub(spec: &HubSpec, offset: u16) -> Result<HubSpec, String> {
    if offset == 0 {
        return Ok(spec.clone());
    }
    Ok(HubSpec {
        port: shift(spec.port, offset)?,
        monitor: Some(shift(spec.monitor(), offset)?),
        cluster: Some(shift(spec.cluster(), offset)?),
        ..spec.clone()
    })
}

/// A listen address with its port shifted by `offset` (port 0 stays: any free port).
fn shift_listen(listen: &str, offset: u16) -> Result<String, String> {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.port() != 0 => {
            Ok(std::net::SocketAddr::new(addr.ip(), shift(addr.port(), offset)?).to_string())
        }
        _ => Ok(listen.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_nats_subjects() {
        assert!(matches("order.placed", "order.placed"));
        assert!(matches("order.*", "order.placed"));
        assert!(matches("order.>", "order.driver.assigned"));
        assert!(!matches("order.*", "order.driver.assigned"));
        assert!(!matches("menu.*", "order.placed"));
        assert!(!matches("order.placed.x", "order.placed"));
    }
}
