//! `fractal status`: is the system healthy, and if not, where. It reads only what a deployed
//! system exposes too: each hub node's monitoring endpoint (`/jsz`) and each service's and
//! bridge's admin endpoint (`/readyz`, `/metrics`). Rates come from two readings taken an
//! interval apart; a part that cannot be read is reported as such, never skipped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use fractal::config::{Problems, Validate, join};
use fractal_cli::running::RunningSystem;
use serde::{Deserialize, Serialize};

use crate::table::table;
use crate::topology::Topology;

/// Where to read each part of a system.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Targets {
    /// The system's name.
    pub(crate) system: String,
    /// Where the addresses come from, for the reader.
    pub(crate) source: String,
    pub(crate) hubs: Vec<HubTarget>,
    pub(crate) services: Vec<ProcessTarget>,
    pub(crate) bridges: Vec<BridgeTarget>,
}

/// A hub: its nodes' monitoring endpoints and its streams' names.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HubTarget {
    pub(crate) name: String,
    /// Its client URL, for tools that read events (`fractal ui`).
    pub(crate) url: Option<String>,
    /// The TLS settings those tools connect with.
    #[serde(skip)]
    pub(crate) tls: Option<fractal::hub::TlsConfig>,
    pub(crate) monitors: Vec<String>,
    pub(crate) events_stream: String,
    pub(crate) faults_stream: String,
}

/// A service or a bridge process.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessTarget {
    pub(crate) name: String,
    /// Its hub (a bridge: its source).
    pub(crate) hub: String,
    /// Its admin endpoint (`127.0.0.1:9161`); `None` when nobody said where it is.
    pub(crate) admin: Option<String>,
    /// What `fractal up` knows of it, when it runs locally.
    pub(crate) local: Option<Supervised>,
}

/// A child of `fractal up`, as its `running.json` describes it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Supervised {
    pub(crate) pid: u32,
    pub(crate) restarts: u32,
    pub(crate) state: String,
}

/// A bridge: its process and its routes.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BridgeTarget {
    pub(crate) process: ProcessTarget,
    pub(crate) target: String,
    pub(crate) routes: Vec<String>,
}

/// The endpoints file of a deployed system (`--endpoints`), for example through port-forwards:
///
/// ```toml
/// [hubs.ordering]
/// url = "nats://localhost:4224"          # optional; `fractal ui` reads events through it
/// monitors = ["http://localhost:8224"]   # one per node
///
/// [services]
/// "ordering/checkout" = "localhost:9171"
///
/// [bridges]
/// system-to-ordering = "localhost:9203"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EndpointsFile {
    #[serde(default)]
    hubs: BTreeMap<String, HubEndpoints>,
    #[serde(default)]
    services: BTreeMap<String, String>,
    #[serde(default)]
    bridges: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HubEndpoints {
    url: Option<String>,
    #[serde(default)]
    monitors: Vec<String>,
}

impl Validate for EndpointsFile {
    fn validate(&self, path: &str, problems: &mut Problems) {
        for (name, hub) in &self.hubs {
            let at = join(path, &format!("hubs.{name}"));
            if let Some(url) = &hub.url
                && !(url.starts_with("nats://") || url.starts_with("tls://"))
            {
                problems.add(
                    join(&at, "url"),
                    format!("`{url}` is not a nats:// or tls:// URL"),
                );
            }
            if hub.monitors.is_empty() {
                problems.add(join(&at, "monitors"), "name at least one monitoring URL");
            }
            for (i, monitor) in hub.monitors.iter().enumerate() {
                if !(monitor.starts_with("http://") || monitor.starts_with("https://")) {
                    problems.add(
                        format!("{at}.monitors[{i}]"),
                        format!("`{monitor}` is not an http:// or https:// URL"),
                    );
                }
            }
        }
        for (table, addresses) in [("services", &self.services), ("bridges", &self.bridges)] {
            for (name, address) in addresses {
                if address.trim().is_empty() {
                    problems.add(
                        join(path, &format!("{table}.\"{name}\"")),
                        "an admin address (host:port) is needed",
                    );
                }
            }
        }
    }
}

impl EndpointsFile {
    /// Every name the file gives must be a part of `topology`.
    fn check_names(&self, topology: &Topology) -> Result<(), String> {
        let mut unknown = Vec::new();
        for hub in self.hubs.keys().filter(|h| !topology.hubs.contains_key(*h)) {
            unknown.push(format!("hub `{hub}`"));
        }
        for service in self
            .services
            .keys()
            .filter(|s| !topology.services.iter().any(|t| &t.name() == *s))
        {
            unknown.push(format!("service `{service}`"));
        }
        for bridge in self
            .bridges
            .keys()
            .filter(|b| !topology.bridges.iter().any(|t| &t.config.name == *b))
        {
            unknown.push(format!("bridge `{bridge}`"));
        }
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "not in the topology `{}`: {}",
                topology.name,
                unknown.join(", ")
            ))
        }
    }
}

impl Targets {
    /// The parts of `topology`, at the addresses `fractal up` recorded in `state` if it runs,
    /// else in the endpoints file if one is given, else at the topology's own addresses.
    pub(crate) fn find(
        topology: &Topology,
        state: &Path,
        endpoints: Option<&Path>,
    ) -> anyhow::Result<Targets> {
        if let Some(path) = endpoints {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let file: EndpointsFile = fractal::config::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            file.check_names(topology)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok(Targets::from_endpoints(topology, &file, path));
        }
        Ok(match crate::up::running(state) {
            Some(system) => Targets::from_running(topology, &system, state),
            None => Targets::from_topology(topology, state),
        })
    }

    fn build(
        topology: &Topology,
        source: String,
        tls: Option<fractal::hub::TlsConfig>,
        hub: impl Fn(&str) -> (Option<String>, Vec<String>),
        service: impl Fn(&str) -> (Option<String>, Option<Supervised>),
        bridge: impl Fn(&str) -> (Option<String>, Option<Supervised>),
    ) -> Targets {
        let streams = |name: &str| {
            let config = topology
                .hub_config(name, 0, false)
                .unwrap_or_else(|| fractal::HubConfig::local(name, ""));
            (config.events.name, config.faults.name)
        };
        Targets {
            system: topology.name.clone(),
            source,
            hubs: topology
                .hubs
                .keys()
                .map(|name| {
                    let (url, monitors) = hub(name);
                    let (events_stream, faults_stream) = streams(name);
                    HubTarget {
                        name: name.clone(),
                        url,
                        tls: tls.clone(),
                        monitors,
                        events_stream,
                        faults_stream,
                    }
                })
                .collect(),
            services: topology
                .services
                .iter()
                .map(|s| {
                    let name = s.name();
                    let (admin, local) = service(&name);
                    ProcessTarget {
                        hub: s.hub().to_owned(),
                        name,
                        admin,
                        local,
                    }
                })
                .collect(),
            bridges: topology
                .bridges
                .iter()
                .map(|b| {
                    let (admin, local) = bridge(&b.config.name);
                    BridgeTarget {
                        process: ProcessTarget {
                            name: b.config.name.clone(),
                            hub: b.config.source.name.clone(),
                            admin,
                            local,
                        },
                        target: b.config.target.name.clone(),
                        routes: b.config.routes.iter().map(|r| r.name.clone()).collect(),
                    }
                })
                .collect(),
        }
    }

    fn from_running(topology: &Topology, system: &RunningSystem, state: &Path) -> Targets {
        let process = |p: Option<&fractal_cli::running::RunningProcess>| match p {
            Some(p) => (
                Some(p.admin.clone()),
                Some(Supervised {
                    pid: p.pid,
                    restarts: p.restarts,
                    state: if p.state.is_empty() {
                        "running".into()
                    } else {
                        p.state.clone()
                    },
                }),
            ),
            None => (None, None),
        };
        Targets::build(
            topology,
            format!("the system `fractal up` runs from {}", state.display()),
            system.tls.clone(),
            |hub| {
                (
                    system.hubs.get(hub).cloned(),
                    system.monitors.get(hub).cloned().unwrap_or_default(),
                )
            },
            |name| process(system.services.get(name)),
            |name| process(system.bridges.get(name)),
        )
    }

    fn from_endpoints(topology: &Topology, file: &EndpointsFile, path: &Path) -> Targets {
        Targets::build(
            topology,
            format!("the endpoints in {}", path.display()),
            None,
            |hub| {
                file.hubs
                    .get(hub)
                    .map(|h| (h.url.clone(), h.monitors.clone()))
                    .unwrap_or_default()
            },
            |name| (file.services.get(name).cloned(), None),
            |name| (file.bridges.get(name).cloned(), None),
        )
    }

    fn from_topology(topology: &Topology, state: &Path) -> Targets {
        let local = |listen: &str| listen.replace("0.0.0.0", "127.0.0.1");
        Targets::build(
            topology,
            format!(
                "the topology's own addresses (no `fractal up` runs from {})",
                state.display()
            ),
            None,
            |hub| {
                let nodes =
                    crate::hubs::nodes(hub, &topology.hubs[hub], 0, false).unwrap_or_default();
                (
                    nodes.first().map(crate::hubs::Node::url),
                    nodes.iter().map(crate::hubs::Node::monitor_url).collect(),
                )
            },
            |name| {
                let admin = topology
                    .services
                    .iter()
                    .find(|s| s.name() == name)
                    .map(|s| local(&s.config.admin.listen));
                (admin, None)
            },
            |name| {
                let admin = topology
                    .bridges
                    .iter()
                    .find(|b| b.config.name == name)
                    .map(|b| local(&b.config.admin.listen));
                (admin, None)
            },
        )
    }
}

/// What one reading of every part found.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    at: Instant,
    hubs: BTreeMap<String, Vec<Result<Streams, String>>>,
    processes: BTreeMap<String, ProcessReading>,
}

/// A hub node's account of the hub's streams.
#[derive(Debug, Clone, Default)]
struct Streams {
    events: Option<StreamState>,
    faults: Option<StreamState>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct StreamState {
    messages: u64,
    bytes: u64,
    #[serde(default)]
    last_ts: Option<String>,
}

#[derive(Debug, Clone)]
struct ProcessReading {
    /// `Ok` when ready, else why not.
    ready: Result<(), String>,
    metrics: Result<Metrics, String>,
}

/// One sample of a Prometheus text exposition: `(name, labels, value)`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics(Vec<(String, BTreeMap<String, String>, f64)>);

impl Metrics {
    /// Parses the Prometheus (or OpenMetrics) text format.
    pub(crate) fn parse(text: &str) -> Result<Metrics, String> {
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("line {}: `{}` is not a sample", i + 1, shorten(line));
            let (series, rest) = match line.find('{') {
                Some(open) => {
                    let close = line.rfind('}').filter(|c| *c > open).ok_or_else(bad)?;
                    (&line[..close + 1], &line[close + 1..])
                }
                None => line.split_once(' ').ok_or_else(bad)?,
            };
            let value: f64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(bad)?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, parse_labels(&labels[..labels.len() - 1])?),
                None => (series, BTreeMap::new()),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                return Err(bad());
            }
            samples.push((name.to_owned(), labels, value));
        }
        Ok(Metrics(samples))
    }

    /// The sum of `name` over the samples whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The values of `label` among the samples of `name` whose labels include `with`.
    fn label_values(&self, name: &str, label: &str, with: &[(&str, &str)]) -> Vec<String> {
        let mut values: Vec<String> = self
            .0
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
            })
            .filter_map(|(_, labels, _)| labels.get(label).cloned())
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

fn shorten(line: &str) -> String {
    if line.len() > 60 {
        let end = (0..=60)
            .rev()
            .find(|i| line.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &line[..end])
    } else {
        line.to_owned()
    }
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("labels `{}` are not key=\"value\" pairs", shorten(text)))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("labels `{}` end inside a value", shorten(text)))?;
        labels.insert(key.trim().trim_start_matches(',').trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',').trim();
    }
    Ok(labels)
}

/// Reads HTTP endpoints with a short timeout.
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    http: reqwest::Client,
}

impl Reader {
    pub(crate) fn new() -> anyhow::Result<Reader> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Reader { http })
    }

    /// The status and body of `GET url`, or why there is none.
    async fn get(&self, url: &str) -> Result<(u16, String), String> {
        let response = self.http.get(url).send().await.map_err(|e| {
            if e.is_timeout() {
                format!("{url} did not answer within 2 s")
            } else if e.is_connect() {
                format!("nothing answers at {url}")
            } else {
                format!("{url}: {e}")
            }
        })?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| format!("{url}: cannot read the answer: {e}"))?;
        Ok((status, body))
    }

    /// Reads every part of `targets` at once.
    pub(crate) async fn read(&self, targets: &Targets) -> Reading {
        let hubs = futures::future::join_all(targets.hubs.iter().map(|hub| async move {
            let nodes = futures::future::join_all(
                hub.monitors
                    .iter()
                    .map(|monitor| self.read_node(monitor, hub)),
            )
            .await;
            (hub.name.clone(), nodes)
        }));
        let processes = futures::future::join_all(
            targets
                .services
                .iter()
                .chain(targets.bridges.iter().map(|b| &b.process))
                .map(|p| async move { (p.name.clone(), self.read_process(p).await) }),
        );
        let (hubs, processes) = futures::join!(hubs, processes);
        Reading {
            at: Instant::now(),
            hubs: hubs.into_iter().collect(),
            processes: processes.into_iter().collect(),
        }
    }

    async fn read_node(&self, monitor: &str, hub: &HubTarget) -> Result<Streams, String> {
        #[derive(Deserialize)]
        struct Jsz {
            #[serde(default)]
            account_details: Vec<Account>,
        }
        #[derive(Deserialize)]
        struct Account {
            #[serde(default)]
            stream_detail: Vec<Stream>,
        }
        #[derive(Deserialize)]
        struct Stream {
            name: String,
            state: StreamState,
        }
        let url = format!("{}/jsz?streams=true", monitor.trim_end_matches('/'));
        let (status, body) = self.get(&url).await?;
        if status != 200 {
            return Err(format!("{url} answered {status}"));
        }
        let jsz: Jsz = serde_json::from_str(&body)
            .map_err(|e| format!("{url} is not a NATS monitoring endpoint: {e}"))?;
        let mut streams = Streams::default();
        for stream in jsz
            .account_details
            .into_iter()
            .flat_map(|a| a.stream_detail)
        {
            if stream.name == hub.events_stream {
                streams.events = Some(stream.state);
            } else if stream.name == hub.faults_stream {
                streams.faults = Some(stream.state);
            }
        }
        Ok(streams)
    }

    async fn read_process(&self, process: &ProcessTarget) -> ProcessReading {
        let Some(admin) = &process.admin else {
            let unknown = "no admin address given".to_owned();
            return ProcessReading {
                ready: Err(unknown.clone()),
                metrics: Err(unknown),
            };
        };
        let base = if admin.contains("://") {
            admin.trim_end_matches('/').to_owned()
        } else {
            format!("http://{admin}")
        };
        let ready_url = format!("{base}/readyz");
        let metrics_url = format!("{base}/metrics");
        let (ready, metrics) = futures::join!(self.get(&ready_url), self.get(&metrics_url));
        let ready = match ready {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!(
                "not ready ({status}): {}",
                body.trim()
                    .trim_start_matches("not ready:")
                    .trim()
                    .replace('\n', "; ")
            )),
            Err(e) => Err(e),
        };
        let metrics = match metrics {
            Ok((200, body)) => Metrics::parse(&body)
                .map_err(|e| format!("{metrics_url} is not Prometheus text: {e}")),
            Ok((status, _)) => Err(format!("{metrics_url} answered {status}")),
            Err(e) => Err(e),
        };
        ProcessReading { ready, metrics }
    }
}

/// How a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Health {
    Healthy,
    Unhealthy,
    /// Nothing says where to read it.
    Unknown,
}

/// How healthy a system is, part by part.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    pub(crate) system: String,
    pub(crate) source: String,
    /// Seconds since the Unix epoch.
    pub(crate) time: u64,
    /// Seconds between the two readings the rates come from.
    pub(crate) interval_secs: f64,
    pub(crate) health: Health,
    /// Every problem, `part: what`.
    pub(crate) problems: Vec<String>,
    pub(crate) hubs: Vec<HubStatus>,
    pub(crate) services: Vec<ServiceStatus>,
    pub(crate) bridges: Vec<BridgeStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HubStatus {
    pub(crate) name: String,
    pub(crate) health: Health,
    pub(crate) problems: Vec<String>,
    pub(crate) nodes: usize,
    pub(crate) nodes_up: usize,
    pub(crate) events: Option<u64>,
    pub(crate) bytes: Option<u64>,
    pub(crate) faults: Option<u64>,
    /// Age of the newest fault, in seconds.
    pub(crate) last_fault_secs: Option<u64>,
    pub(crate) events_per_sec: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceStatus {
    pub(crate) name: String,
    pub(crate) hub: String,
    pub(crate) health: Health,
    pub(crate) problems: Vec<String>,
    pub(crate) ready: Option<bool>,
    /// `running`, `restarting`, `crash-looping` or `stopped`, when `fractal up` runs it.
    pub(crate) state: Option<String>,
    pub(crate) restarts: Option<u32>,
    pub(crate) handled_per_sec: Option<f64>,
    pub(crate) failed_per_sec: Option<f64>,
    pub(crate) faulted_per_sec: Option<f64>,
    /// Events in the hub not yet delivered to its consumers.
    pub(crate) lag: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct BridgeStatus {
    pub(crate) name: String,
    pub(crate) source: String,
    pub(crate) target: String,
    pub(crate) health: Health,
    pub(crate) problems: Vec<String>,
    pub(crate) ready: Option<bool>,
    pub(crate) state: Option<String>,
    pub(crate) restarts: Option<u32>,
    pub(crate) routes: Vec<RouteStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RouteStatus {
    pub(crate) name: String,
    pub(crate) relayed_per_sec: Option<f64>,
    pub(crate) lag: Option<u64>,
    /// Age of the oldest event waiting to be relayed, in seconds.
    pub(crate) oldest_waiting_secs: Option<u64>,
    pub(crate) stalled: Option<bool>,
    /// Events rejected since the bridge started, by reason.
    pub(crate) rejected: BTreeMap<String, u64>,
}

/// What makes a part unhealthy besides being down.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Thresholds {
    /// A fault younger than this is new.
    pub(crate) fault_window: Duration,
    /// A consumer lag that grows past this is a problem even while events are handled.
    pub(crate) max_lag: u64,
}

fn rate(before: f64, after: f64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        ((after - before).max(0.0)) / secs
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since an RFC 3339 time, if it parses.
fn age_secs(rfc3339: &str) -> Option<u64> {
    let time = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(unix_now().saturating_sub(time.unix_timestamp().max(0) as u64))
}

impl Status {
    /// The status from two readings of `targets`, `before` and `after`.
    pub(crate) fn assess(
        targets: &Targets,
        before: &Reading,
        after: &Reading,
        thresholds: Thresholds,
    ) -> Status {
        let secs = after.at.duration_since(before.at).as_secs_f64();
        let hubs: Vec<HubStatus> = targets
            .hubs
            .iter()
            .map(|hub| assess_hub(hub, before, after, secs, thresholds))
            .collect();
        let services: Vec<ServiceStatus> = targets
            .services
            .iter()
            .map(|s| assess_service(s, before, after, secs, thresholds))
            .collect();
        let bridges: Vec<BridgeStatus> = targets
            .bridges
            .iter()
            .map(|b| assess_bridge(b, before, after, secs))
            .collect();
        let mut problems = Vec::new();
        for hub in &hubs {
            problems.extend(
                hub.problems
                    .iter()
                    .map(|p| format!("hub {}: {p}", hub.name)),
            );
        }
        for service in &services {
            problems.extend(
                service
                    .problems
                    .iter()
                    .map(|p| format!("{}: {p}", service.name)),
            );
        }
        for bridge in &bridges {
            problems.extend(
                bridge
                    .problems
                    .iter()
                    .map(|p| format!("bridge {}: {p}", bridge.name)),
            );
        }
        let healths = hubs
            .iter()
            .map(|h| h.health)
            .chain(services.iter().map(|s| s.health))
            .chain(bridges.iter().map(|b| b.health));
        let mut health = Health::Healthy;
        for h in healths {
            match h {
                Health::Unhealthy => health = Health::Unhealthy,
                Health::Unknown if health == Health::Healthy => health = Health::Unknown,
                _ => {}
            }
        }
        Status {
            system: targets.system.clone(),
            source: targets.source.clone(),
            time: unix_now(),
            interval_secs: secs,
            health,
            problems,
            hubs,
            services,
            bridges,
        }
    }
}

/// What was found wrong with a part: problems make it unhealthy; what could not be read
/// (nothing answers, an answer that makes no sense) makes it unknown.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    unreadable: Vec<String>,
}

impl Findings {
    /// Its health, `known` when there is an address to read it at; and every finding.
    fn health(self, known: bool) -> (Health, Vec<String>) {
        let health = if !self.problems.is_empty() {
            Health::Unhealthy
        } else if !known || !self.unreadable.is_empty() {
            Health::Unknown
        } else {
            Health::Healthy
        };
        let mut all = self.problems;
        all.extend(self.unreadable);
        (health, all)
    }
}

fn assess_hub(
    hub: &HubTarget,
    before: &Reading,
    after: &Reading,
    secs: f64,
    thresholds: Thresholds,
) -> HubStatus {
    let empty = Vec::new();
    let nodes = after.hubs.get(&hub.name).unwrap_or(&empty);
    let nodes_up = nodes.iter().filter(|n| n.is_ok()).count();
    let mut findings = Findings::default();
    for (monitor, node) in hub.monitors.iter().zip(nodes) {
        if let Err(e) = node {
            if nodes_up == 0 {
                findings.unreadable.push(format!("unreachable: {e}"));
            } else {
                findings.problems.push(format!("node {monitor} down: {e}"));
            }
        }
    }
    // The node that knows most: a lagging replica knows less.
    let best = |reading: &Reading, pick: fn(&Streams) -> Option<&StreamState>| {
        reading
            .hubs
            .get(&hub.name)
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_ref().ok())
            .filter_map(|n| pick(n).cloned())
            .max_by_key(|s| s.messages)
    };
    let events = best(after, |s| s.events.as_ref());
    let faults = best(after, |s| s.faults.as_ref());
    let events_before = best(before, |s| s.events.as_ref());
    let last_fault_secs = faults
        .as_ref()
        .filter(|f| f.messages > 0)
        .and_then(|f| f.last_ts.as_deref())
        .and_then(age_secs);
    if let (Some(faults), Some(age)) = (&faults, last_fault_secs)
        && age < thresholds.fault_window.as_secs()
    {
        findings.problems.push(format!(
            "new faults: the newest of {} came {age} s ago (see `fractal faults {} list`)",
            faults.messages, hub.name
        ));
    }
    let (health, problems) = findings.health(!hub.monitors.is_empty());
    HubStatus {
        name: hub.name.clone(),
        health,
        problems,
        nodes: hub.monitors.len(),
        nodes_up,
        events_per_sec: match (&events_before, &events) {
            (Some(b), Some(a)) => Some(rate(b.messages as f64, a.messages as f64, secs)),
            _ => None,
        },
        events: events.as_ref().map(|s| s.messages),
        bytes: events.as_ref().map(|s| s.bytes),
        faults: Some(faults.as_ref().map_or(0, |s| s.messages)).filter(|_| nodes_up > 0),
        last_fault_secs,
    }
}

/// What is wrong with a process: down or restarting under `fractal up`, not ready, not
/// answering, its metrics unreadable. Returns whether it is ready and its metrics before and
/// after.
fn assess_process(
    process: &ProcessTarget,
    before: &Reading,
    after: &Reading,
    findings: &mut Findings,
) -> (Option<bool>, Option<Metrics>, Option<Metrics>) {
    if let Some(local) = &process.local {
        match local.state.as_str() {
            "running" if !crate::up::alive(local.pid) => {
                findings
                    .problems
                    .push(format!("down (pid {} is gone)", local.pid));
            }
            "running" => {}
            state => findings
                .problems
                .push(format!("{state} ({} restarts)", local.restarts)),
        }
    }
    let metrics = |r: &Reading| {
        r.processes
            .get(&process.name)
            .and_then(|p| p.metrics.as_ref().ok())
            .cloned()
    };
    let (m0, m1) = (metrics(before), metrics(after));
    let Some(reading) = after.processes.get(&process.name) else {
        return (None, m0, m1);
    };
    if process.admin.is_none() {
        return (None, m0, m1);
    }
    let down = !findings.problems.is_empty();
    let ready = match &reading.ready {
        Ok(()) => Some(true),
        // It answered: not ready.
        Err(e) if e.starts_with("not ready") => {
            findings.problems.push(e.clone());
            Some(false)
        }
        // `fractal up` runs it, yet it does not answer: it hangs.
        Err(e) if process.local.is_some() => {
            if !down {
                findings.problems.push(format!("not answering: {e}"));
            }
            None
        }
        Err(e) => {
            findings.unreadable.push(e.clone());
            None
        }
    };
    if ready.is_some()
        && let Err(e) = &reading.metrics
    {
        findings.unreadable.push(e.clone());
    }
    (ready, m0, m1)
}

fn assess_service(
    service: &ProcessTarget,
    before: &Reading,
    after: &Reading,
    secs: f64,
    thresholds: Thresholds,
) -> ServiceStatus {
    let mut findings = Findings::default();
    let (ready, m0, m1) = assess_process(service, before, after, &mut findings);
    let problems = &mut findings.problems;
    let per_sec = |name: &str| match (&m0, &m1) {
        (Some(a), Some(b)) => Some(rate(a.sum(name, &[]), b.sum(name, &[]), secs)),
        _ => None,
    };
    let handled = per_sec("fractal_events_handled_total");
    let failed = per_sec("fractal_events_failed_total");
    let faulted = per_sec("fractal_events_faulted_total");
    let lag_of = |m: &Metrics| m.sum("fractal_consumer_pending_messages", &[]).max(0.0) as u64;
    let lag = m1.as_ref().map(lag_of);
    if let (Some(a), Some(b)) = (&m0, &m1) {
        let (lag0, lag1) = (lag_of(a), lag_of(b));
        if handled == Some(0.0) && failed.is_some_and(|f| f > 0.0) {
            problems.push(format!(
                "failing: {:.0} attempts failed and none succeeded in {secs:.0} s",
                failed.unwrap_or(0.0) * secs
            ));
        } else if handled == Some(0.0) && lag1 > lag0 {
            problems.push(format!(
                "stuck: its lag grew from {lag0} to {lag1} and it handled nothing in {secs:.0} s"
            ));
        } else if lag1 > lag0 && lag1 >= thresholds.max_lag {
            problems.push(format!("lag growing: {lag0} → {lag1}"));
        }
        if faulted.is_some_and(|f| f > 0.0) {
            problems.push(format!(
                "faulted {:.0} events in {secs:.0} s",
                faulted.unwrap_or(0.0) * secs
            ));
        }
    }
    let (health, problems) = findings.health(service.admin.is_some());
    ServiceStatus {
        name: service.name.clone(),
        hub: service.hub.clone(),
        health,
        problems,
        ready,
        state: service.local.as_ref().map(|l| l.state.clone()),
        restarts: service.local.as_ref().map(|l| l.restarts),
        handled_per_sec: handled,
        failed_per_sec: failed,
        faulted_per_sec: faulted,
        lag,
    }
}

fn assess_bridge(
    bridge: &BridgeTarget,
    before: &Reading,
    after: &Reading,
    secs: f64,
) -> BridgeStatus {
    let process = &bridge.process;
    let mut findings = Findings::default();
    let (ready, m0, m1) = assess_process(process, before, after, &mut findings);
    let problems = &mut findings.problems;
    let routes = bridge
        .routes
        .iter()
        .map(|route| {
            let with = [("route", route.as_str())];
            let gauge = |name: &str| m1.as_ref().map(|m| m.sum(name, &with).max(0.0) as u64);
            let mut rejected = BTreeMap::new();
            if let Some(m) = &m1 {
                for reason in m.label_values("fractal_bridge_rejected_total", "reason", &with) {
                    let by = [("route", route.as_str()), ("reason", reason.as_str())];
                    let count = m.sum("fractal_bridge_rejected_total", &by) as u64;
                    let earlier = m0.as_ref().map_or(count, |m| {
                        m.sum("fractal_bridge_rejected_total", &by) as u64
                    });
                    if count > earlier {
                        problems.push(format!(
                            "route {route}: rejected {} events ({reason}) in {secs:.0} s",
                            count - earlier
                        ));
                    }
                    rejected.insert(reason, count);
                }
            }
            let stalled = gauge("fractal_bridge_stalled").map(|s| s > 0);
            let lag = gauge("fractal_bridge_source_pending_messages");
            let oldest = gauge("fractal_bridge_oldest_waiting_seconds");
            if stalled == Some(true) {
                problems.push(format!(
                    "route {route}: stalled, {} events waiting, the oldest for {} s",
                    lag.unwrap_or(0),
                    oldest.unwrap_or(0)
                ));
            }
            RouteStatus {
                name: route.clone(),
                relayed_per_sec: match (&m0, &m1) {
                    (Some(a), Some(b)) => Some(rate(
                        a.sum("fractal_bridge_relayed_total", &with),
                        b.sum("fractal_bridge_relayed_total", &with),
                        secs,
                    )),
                    _ => None,
                },
                lag,
                oldest_waiting_secs: oldest,
                stalled,
                rejected,
            }
        })
        .collect();
    let (health, problems) = findings.health(process.admin.is_some());
    BridgeStatus {
        name: process.name.clone(),
        source: process.hub.clone(),
        target: bridge.target.clone(),
        health,
        problems,
        ready,
        state: process.local.as_ref().map(|l| l.state.clone()),
        restarts: process.local.as_ref().map(|l| l.restarts),
        routes,
    }
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn per_sec(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| format!("{v:.1}"))
}

fn bytes(value: Option<u64>) -> String {
    match value {
        None => "?".into(),
        Some(b) if b < 1024 => format!("{b} B"),
        Some(b) if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) if b < 1024 * 1024 * 1024 => format!("{:.1} MiB", b as f64 / 1048576.0),
        Some(b) => format!("{:.1} GiB", b as f64 / 1073741824.0),
    }
}

fn mark(health: Health) -> &'static str {
    match health {
        Health::Healthy => "ok",
        Health::Unhealthy => "UNHEALTHY",
        Health::Unknown => "unknown",
    }
}

fn yes_no(value: Option<bool>) -> String {
    match value {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "?".into(),
    }
}

impl Status {
    /// The status as one screen of text.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "System `{}`: {}{}",
            self.system,
            match self.health {
                Health::Healthy => "healthy".to_owned(),
                Health::Unhealthy => "UNHEALTHY".to_owned(),
                Health::Unknown => "partly unknown".to_owned(),
            },
            match self.problems.len() {
                0 => String::new(),
                1 => " (1 problem)".to_owned(),
                n => format!(" ({n} problems)"),
            }
        );
        let _ = writeln!(
            out,
            "Read from {}; rates over {:.1} s.",
            self.source, self.interval_secs
        );
        for problem in &self.problems {
            let _ = writeln!(out, "  ✗ {problem}");
        }
        let mut rows = vec![
            [
                "hub",
                "health",
                "nodes",
                "events",
                "events/s",
                "bytes",
                "faults",
                "newest fault",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for hub in &self.hubs {
            rows.push(vec![
                hub.name.clone(),
                mark(hub.health).into(),
                format!("{}/{}", hub.nodes_up, hub.nodes),
                opt(hub.events),
                per_sec(hub.events_per_sec),
                bytes(hub.bytes),
                opt(hub.faults),
                hub.last_fault_secs
                    .map_or_else(|| "-".into(), |s| format!("{s} s ago")),
            ]);
        }
        let _ = write!(out, "\n{}", table(&rows));
        let mut rows = vec![
            [
                "service",
                "hub",
                "health",
                "ready",
                "restarts",
                "handled/s",
                "failed/s",
                "faulted/s",
                "lag",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for s in &self.services {
            rows.push(vec![
                s.name.clone(),
                s.hub.clone(),
                mark(s.health).into(),
                yes_no(s.ready),
                s.restarts.map_or_else(|| "-".into(), |r| r.to_string()),
                per_sec(s.handled_per_sec),
                per_sec(s.failed_per_sec),
                per_sec(s.faulted_per_sec),
                opt(s.lag),
            ]);
        }
        let _ = write!(out, "\n{}", table(&rows));
        let mut rows = vec![
            [
                "bridge route",
                "hubs",
                "health",
                "relayed/s",
                "lag",
                "oldest waiting",
                "stalled",
                "rejected",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for b in &self.bridges {
            let hubs = format!("{} → {}", b.source, b.target);
            let health = match (b.ready, b.restarts) {
                (_, Some(r)) if r > 0 => format!("{} ({r} restarts)", mark(b.health)),
                _ => mark(b.health).into(),
            };
            for r in &b.routes {
                rows.push(vec![
                    format!("{}/{}", b.name, r.name),
                    hubs.clone(),
                    health.clone(),
                    per_sec(r.relayed_per_sec),
                    opt(r.lag),
                    r.oldest_waiting_secs
                        .map_or_else(|| "?".into(), |s| format!("{s} s")),
                    yes_no(r.stalled),
                    if r.rejected.is_empty() {
                        "-".into()
                    } else {
                        r.rejected
                            .iter()
                            .map(|(reason, n)| format!("{n} {reason}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ]);
            }
        }
        let _ = write!(out, "\n{}", table(&rows));
        out
    }
}

/// Reads a system again and again, each status with the rates since the reading before.
#[derive(Debug)]
pub(crate) struct Observer {
    topology: Topology,
    state: std::path::PathBuf,
    endpoints: Option<std::path::PathBuf>,
    thresholds: Thresholds,
    interval: Duration,
    reader: Reader,
    last: Option<Reading>,
}

impl Observer {
    pub(crate) fn new(
        topology: Topology,
        state: &Path,
        endpoints: Option<&Path>,
        thresholds: Thresholds,
        interval: Duration,
    ) -> anyhow::Result<Observer> {
        Ok(Observer {
            topology,
            state: state.to_path_buf(),
            endpoints: endpoints.map(Path::to_path_buf),
            thresholds,
            interval,
            reader: Reader::new()?,
            last: None,
        })
    }

    /// Where each part is now (a local run's processes change pids as they restart).
    pub(crate) fn targets(&self) -> anyhow::Result<Targets> {
        Targets::find(&self.topology, &self.state, self.endpoints.as_deref())
    }

    /// Waits an interval, reads every part and returns the status since the last reading
    /// (the first call reads twice, an interval apart).
    pub(crate) async fn next(&mut self) -> anyhow::Result<Status> {
        let targets = self.targets()?;
        let before = match self.last.take() {
            Some(reading) => reading,
            None => self.reader.read(&targets).await,
        };
        tokio::time::sleep(self.interval.saturating_sub(before.at.elapsed())).await;
        let after = self.reader.read(&targets).await;
        let status = Status::assess(&targets, &before, &after, self.thresholds);
        self.last = Some(after);
        Ok(status)
    }
}

/// How `fractal status` shows a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

/// `fractal status`: prints the status once, or with `watch` again every interval until
/// `shutdown`. Exits 0 when healthy, 1 when anything is unhealthy, 3 when nothing is but some
/// part cannot be told (no address for it).
pub(crate) async fn run(
    mut observer: Observer,
    output: Output,
    watch: bool,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<std::process::ExitCode> {
    use std::io::IsTerminal as _;
    let terminal = std::io::stdout().is_terminal();
    let mut code = std::process::ExitCode::SUCCESS;
    loop {
        let status = tokio::select! {
            status = observer.next() => status?,
            _ = shutdown.cancelled() => return Ok(code),
        };
        code = match status.health {
            Health::Healthy => std::process::ExitCode::SUCCESS,
            Health::Unhealthy => std::process::ExitCode::from(1),
            Health::Unknown => std::process::ExitCode::from(3),
        };
        let shown = match output {
            Output::Text => status.text(),
            Output::Json => format!("{}\n", serde_json::to_string(&status)?),
        };
        if watch && terminal && output == Output::Text {
            // Home and clear, then the screen: it refreshes in place.
            print!("\x1b[H\x1b[2J{shown}");
        } else if watch && output == Output::Text {
            println!("{shown}");
        } else {
            print!("{shown}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        if !watch {
            return Ok(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_with_labels_escapes_and_openmetrics_comments() {
        let text = "# HELP x A thing.\n# TYPE x counter\n\
            fractal_events_handled_total{service=\"a/b\",event_type=\"order.placed\"} 12\n\
            fractal_bridge_rejected_total{bridge=\"b\",route=\"r\",reason=\"say \\\"no\\\"\"} 3\n\
            up 1\n# EOF\n";
        let metrics = Metrics::parse(text).unwrap();
        assert_eq!(metrics.sum("fractal_events_handled_total", &[]), 12.0);
        assert_eq!(
            metrics.label_values("fractal_bridge_rejected_total", "reason", &[("route", "r")]),
            ["say \"no\""]
        );
        assert_eq!(metrics.sum("up", &[]), 1.0);
    }

    #[test]
    fn garbage_metrics_name_the_line() {
        let e = Metrics::parse("ok 1\n<html>oops</html>\n").unwrap_err();
        assert!(e.starts_with("line 2: `<html>oops</html>`"), "{e}");
        let e = Metrics::parse("x{a=\"1} 2\n").unwrap_err();
        assert!(e.contains("end inside a value"), "{e}");
    }

    fn targets() -> Targets {
        let process = |name: &str, hub: &str| ProcessTarget {
            name: name.into(),
            hub: hub.into(),
            admin: Some("127.0.0.1:1".into()),
            local: None,
        };
        Targets {
            system: "s".into(),
            source: "test".into(),
            hubs: vec![HubTarget {
                name: "a".into(),
                url: None,
                tls: None,
                monitors: vec!["http://127.0.0.1:1".into()],
                events_stream: "EVENTS".into(),
                faults_stream: "FAULTS".into(),
            }],
            services: vec![process("a/worker", "a")],
            bridges: vec![BridgeTarget {
                process: process("a-to-b", "a"),
                target: "b".into(),
                routes: vec!["orders".into()],
            }],
        }
    }

    /// A reading of `targets()`: the hub's newest fault `fault_age` seconds ago, the service's
    /// and the bridge's metrics as given.
    fn reading(at: Instant, fault_age: Option<u64>, service: &str, bridge: &str) -> Reading {
        let faults = fault_age.map(|age| {
            let time = time::OffsetDateTime::now_utc() - time::Duration::seconds(age as i64);
            StreamState {
                messages: 1,
                bytes: 100,
                last_ts: time
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok(),
            }
        });
        let process = |metrics: &str| ProcessReading {
            ready: Ok(()),
            metrics: Metrics::parse(metrics),
        };
        Reading {
            at,
            hubs: [(
                "a".to_owned(),
                vec![Ok(Streams {
                    events: Some(StreamState::default()),
                    faults,
                })],
            )]
            .into(),
            processes: [
                ("a/worker".to_owned(), process(service)),
                ("a-to-b".to_owned(), process(bridge)),
            ]
            .into(),
        }
    }

    fn service(handled: u64, failed: u64, lag: u64) -> String {
        format!(
            "fractal_events_handled_total{{service=\"a/worker\"}} {handled}\n\
             fractal_events_failed_total{{service=\"a/worker\"}} {failed}\n\
             fractal_consumer_pending_messages{{consumer=\"worker\"}} {lag}\n"
        )
    }

    fn route(relayed: u64, stalled: u64, rejected: u64) -> String {
        format!(
            "fractal_bridge_relayed_total{{bridge=\"a-to-b\",route=\"orders\"}} {relayed}\n\
             fractal_bridge_stalled{{bridge=\"a-to-b\",route=\"orders\"}} {stalled}\n\
             fractal_bridge_rejected_total{{bridge=\"a-to-b\",route=\"orders\",reason=\"contract\"}} {rejected}\n"
        )
    }

    fn assess(before: Reading, after: Reading) -> Status {
        let thresholds = Thresholds {
            fault_window: Duration::from_secs(300),
            max_lag: 1000,
        };
        Status::assess(&targets(), &before, &after, thresholds)
    }

    #[test]
    fn a_busy_healthy_system_has_rates_and_no_problems() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let status = assess(
            reading(t0, Some(3600), &service(100, 0, 5), &route(40, 0, 0)),
            reading(t1, Some(3602), &service(300, 0, 9), &route(140, 0, 0)),
        );
        assert_eq!(status.health, Health::Healthy, "{:?}", status.problems);
        assert_eq!(status.services[0].handled_per_sec, Some(100.0));
        assert_eq!(status.bridges[0].routes[0].relayed_per_sec, Some(50.0));
        assert_eq!(
            status.hubs[0].last_fault_secs.map(|s| s >= 3600),
            Some(true)
        );
    }

    #[test]
    fn stuck_failing_stalled_rejecting_and_new_faults_are_each_named() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let problems = |before, after| assess(before, after).problems;

        let stuck = problems(
            reading(t0, None, &service(100, 0, 5), &route(0, 0, 0)),
            reading(t1, None, &service(100, 0, 9), &route(0, 0, 0)),
        );
        assert_eq!(
            stuck,
            ["a/worker: stuck: its lag grew from 5 to 9 and it handled nothing in 2 s"]
        );
        let failing = problems(
            reading(t0, None, &service(100, 3, 5), &route(0, 0, 0)),
            reading(t1, None, &service(100, 9, 5), &route(0, 0, 0)),
        );
        assert_eq!(
            failing,
            ["a/worker: failing: 6 attempts failed and none succeeded in 2 s"]
        );
        let growing = problems(
            reading(t0, None, &service(100, 0, 1500), &route(0, 0, 0)),
            reading(t1, None, &service(900, 0, 2500), &route(0, 0, 0)),
        );
        assert_eq!(growing, ["a/worker: lag growing: 1500 → 2500"]);
        let route_trouble = problems(
            reading(t0, Some(10), &service(0, 0, 0), &route(7, 1, 2)),
            reading(t1, Some(12), &service(0, 0, 0), &route(7, 1, 5)),
        );
        assert_eq!(route_trouble.len(), 3, "{route_trouble:#?}");
        assert!(route_trouble[0].starts_with("hub a: new faults: the newest of 1 came 1"));
        assert_eq!(
            route_trouble[1],
            "bridge a-to-b: route orders: rejected 3 events (contract) in 2 s"
        );
        assert!(route_trouble[2].starts_with("bridge a-to-b: route orders: stalled"));
    }

    #[test]
    fn rfc3339_ages_are_whole_seconds_into_the_past() {
        assert!(age_secs("2020-01-01T00:00:00.123456789Z").is_some_and(|a| a > 86400));
        assert_eq!(age_secs("yesterday"), None);
    }
}
