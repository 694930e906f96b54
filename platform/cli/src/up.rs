//! `fractal up`: one `nats-server` per hub, then every service and bridge as a child process,
//! all state and logs under one folder. Children are stopped on Ctrl-C/SIGTERM, services and
//! bridges first, hubs last; a watchdog process stops them too if `fractal up` itself dies.
//!
//! While it runs, `fractal up` supervises its children as Kubernetes does its pods: one that
//! exits is reported at once (name, exit status or signal, the end of its log) and started
//! again after a back-off of 1 s doubling to 30 s, reset once it has run for a minute; one
//! that keeps crashing is reported as crash-looping and retried every 30 s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fractal_cli::running::{RunningProcess, RunningSystem};
use fractal_process::{Process, Spawn};

use crate::access::{self, Credentials, OPERATOR, PROVISIONER};
use crate::topology::Topology;

/// How to run a topology locally.
#[derive(Debug, Clone)]
pub(crate) struct UpOptions {
    /// The folder of hub stores, logs and `running.json`.
    pub(crate) state: PathBuf,
    /// Added to every port of the topology, to run beside another copy.
    pub(crate) port_offset: u16,
    /// Where the workspace's programs are.
    pub(crate) programs: PathBuf,
    /// How long everything may take to become ready.
    pub(crate) ready_timeout: Duration,
    /// Hubs require mutual TLS, with certificates of a private authority made for the run.
    pub(crate) tls: bool,
    /// Hubs admit only their clients' nkeys, each with the permissions the topology derives
    /// for it (see [`crate::access`]).
    pub(crate) auth: bool,
}

/// The first wait before starting an exited child again.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait; a child waiting this long is crash-looping.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a child must run for its back-off to start from the beginning again.
const STEADY: Duration = Duration::from_secs(60);

/// The wait before starting a child again that exited after running for `ran_for`, the last
/// wait having been `previous` (zero at first).
fn next_backoff(previous: Duration, ran_for: Duration) -> Duration {
    if ran_for >= STEADY {
        FIRST_BACKOFF
    } else {
        (previous * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF)
    }
}

/// A child process of `fractal up`, and how to start it again.
#[derive(Debug)]
struct Managed {
    name: String,
    child: Process,
    log: PathBuf,
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    /// Where its pid is recorded in `running.json`.
    role: Role,
    started: Instant,
    restarts: u32,
    backoff: Duration,
    state: State,
}

/// Where a child of `fractal up` is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Exited; started again at that time.
    Restarting(Instant),
    /// Exited for good (`--no-restart`).
    Stopped,
}

#[derive(Debug, Clone)]
enum Role {
    Hub,
    Service(String),
    Bridge(String),
}

impl Managed {
    fn start(
        name: String,
        role: Role,
        program: &Path,
        args: &[&std::ffi::OsStr],
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> anyhow::Result<Managed> {
        let child = spawn(program, args, &env, &log)?;
        Ok(Managed {
            name,
            child,
            log,
            program: program.to_path_buf(),
            args: args.iter().map(|a| a.to_os_string()).collect(),
            env,
            role,
            started: Instant::now(),
            restarts: 0,
            backoff: Duration::ZERO,
            state: State::Running,
        })
    }
}

/// A running system.
#[derive(Debug)]
pub(crate) struct Up {
    hubs: Vec<Managed>,
    processes: Vec<Managed>,
    watchdog: Option<Process>,
    /// What runs where.
    pub(crate) system: RunningSystem,
    running_file: PathBuf,
}

/// `running.json` in `state`.
pub(crate) fn running_file(state: &Path) -> PathBuf {
    state.join("running.json")
}

/// The system described in `state`, if its `fractal up` is still alive.
pub(crate) fn running(state: &Path) -> Option<RunningSystem> {
    let system = RunningSystem::load(&running_file(state)).ok()?;
    alive(system.pid).then_some(system)
}

pub(crate) use fractal_process::alive;

/// A program of the workspace next to `fractal`.
pub(crate) fn program(programs: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = programs.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "program `{name}` is not built (looked for {}); build every program with `cargo build --workspace --bins`",
            path.display()
        )
    }
}

fn shifted(listen: &str, offset: u16) -> anyhow::Result<String> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("`{listen}` is not an address"))?;
    if addr.port() == 0 {
        return Ok(listen.to_owned());
    }
    let port = addr
        .port()
        .checked_add(offset)
        .with_context(|| format!("port {} + offset {offset} is past 65535", addr.port()))?;
    Ok(std::net::SocketAddr::new(addr.ip(), port).to_string())
}

/// The name of a bridge's certificate.
fn bridge_client(bridge: &str) -> String {
    format!("bridge-{bridge}")
}

/// The environment that gives a client (under `key`: `ORDERING_HUB__`, `BRIDGE_SOURCE__`) its
/// hub as `fractal up` runs it: every node's URL, the streams as the topology defines them,
/// and the client's own certificate, credential and inbox if it has them.
fn hub_env(key: &str, hub: &fractal::HubConfig) -> Vec<(String, String)> {
    let urls: Vec<String> = hub.urls.iter().map(|u| format!("{u:?}")).collect();
    let mut env = vec![
        // The hub's name in the tree (`north.ordering` for a system's `ordering`).
        (format!("{key}NAME"), hub.name.clone()),
        (format!("{key}URLS"), format!("[{}]", urls.join(","))),
    ];
    if let Some(tls) = &hub.tls {
        for (setting, file) in [
            ("CA_FILE", &tls.ca_file),
            ("CERT_FILE", &tls.cert_file),
            ("KEY_FILE", &tls.key_file),
        ] {
            if let Some(file) = file {
                env.push((format!("{key}TLS__{setting}"), file.display().to_string()));
            }
        }
    }
    if let fractal::hub::AuthConfig::Nkey {
        seed_file: Some(file),
        ..
    } = &hub.auth
    {
        env.push((format!("{key}AUTH__TYPE"), "nkey".to_owned()));
        env.push((format!("{key}AUTH__SEED_FILE"), file.display().to_string()));
    }
    env.push((format!("{key}INBOX_PREFIX"), hub.inbox_prefix.clone()));
    for (stream, config) in [("EVENTS", &hub.events), ("FAULTS", &hub.faults)] {
        let storage = match config.storage {
            fractal::hub::Storage::File => "file",
            fractal::hub::Storage::Memory => "memory",
        };
        for (setting, value) in [
            ("NAME", config.name.clone()),
            ("REPLICAS", config.replicas.to_string()),
            ("STORAGE", storage.to_owned()),
            ("MAX_AGE_SECS", config.max_age_secs.to_string()),
            ("MAX_BYTES", config.max_bytes.to_string()),
            ("MAX_MESSAGES", config.max_messages.to_string()),
            (
                "DUPLICATE_WINDOW_SECS",
                config.duplicate_window_secs.to_string(),
            ),
        ] {
            env.push((format!("{key}{stream}__{setting}"), value));
        }
    }
    env
}

/// What one run gives each client to reach its hubs: certificates, credentials, or neither.
#[derive(Debug, Default)]
struct Access {
    certificates: Option<crate::tls::Certificates>,
    credentials: Option<Credentials>,
}

impl Access {
    /// How client `id` (its certificate named `certificate`) reaches `hub`.
    fn client(&self, hub: &fractal::HubConfig, certificate: &str, id: &str) -> fractal::HubConfig {
        let mut config = hub.clone();
        config.tls = self.certificates.as_ref().map(|c| c.client(certificate));
        if let Some(credentials) = &self.credentials {
            credentials.client(id, &mut config);
        }
        config
    }
}

fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Up {
    /// Starts `topology` and waits until every hub, service and bridge is ready.
    pub(crate) async fn start(topology: &Topology, options: &UpOptions) -> anyhow::Result<Up> {
        let repository = topology
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let nats = fractal_process::find_nats_server(&repository)?;
        let logs = options.state.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        // One `fractal up` per state folder, from its start on.
        let lock = options.state.join("up.pid");
        if let Some(pid) = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|pid| alive(*pid) && *pid != std::process::id())
        {
            bail!(
                "another `fractal up` (pid {pid}) runs from {}; stop it first, or use another --state",
                options.state.display()
            );
        }
        std::fs::write(&lock, std::process::id().to_string())
            .with_context(|| format!("cannot write {}", lock.display()))?;
        let mut up = Up {
            hubs: Vec::new(),
            processes: Vec::new(),
            watchdog: None,
            system: RunningSystem {
                name: topology.name.clone(),
                pid: std::process::id(),
                ..Default::default()
            },
            running_file: running_file(&options.state),
        };
        let fractal = std::env::current_exe()?;
        up.watchdog = Some(
            Spawn::new(&fractal, Path::new("/dev/null"))
                .args([
                    "watchdog",
                    "--parent",
                    &std::process::id().to_string(),
                    "--state",
                ])
                .args([&options.state])
                .own_group()
                .start()
                .context("cannot start the watchdog")?,
        );
        match up.launch(topology, options, &nats, &logs).await {
            Ok(()) => Ok(up),
            Err(e) => {
                up.stop();
                Err(e)
            }
        }
    }

    async fn launch(
        &mut self,
        topology: &Topology,
        options: &UpOptions,
        nats: &Path,
        logs: &Path,
    ) -> anyhow::Result<()> {
        let offset = options.port_offset;
        let certificates = if options.tls {
            let mut names = vec![OPERATOR.to_owned()];
            for (name, spec) in &topology.hubs {
                let nodes = crate::hubs::nodes(name, spec, offset, true)?;
                names.extend(nodes.into_iter().map(|n| n.name));
            }
            names.extend(topology.services.iter().map(|s| s.name()));
            names.extend(
                topology
                    .bridges
                    .iter()
                    .map(|b| bridge_client(&b.config.name)),
            );
            let certificates =
                crate::tls::Certificates::create(&options.state.join("tls"), &names)?;
            self.system.tls = Some(certificates.client(OPERATOR));
            Some(certificates)
        } else {
            None
        };
        let credentials = if options.auth {
            let credentials = Credentials::at(&options.state.join("credentials"))?;
            self.system.credential = Some(credentials.seed_file(OPERATOR));
            Some(credentials)
        } else {
            None
        };
        let access = Access {
            certificates,
            credentials,
        };
        let mut all_nodes = Vec::new();
        let mut hubs = BTreeMap::new();
        for (name, spec) in &topology.hubs {
            let nodes = crate::hubs::nodes(name, spec, offset, options.tls)?;
            let authorization = access
                .credentials
                .as_ref()
                .map(|credentials| access::authorization(topology, name, credentials))
                .transpose()?;
            for (i, node) in nodes.iter().enumerate() {
                let store = options.state.join("hubs").join(&node.name);
                std::fs::create_dir_all(&store)?;
                let conf = options
                    .state
                    .join("hubs")
                    .join(format!("{}.conf", node.name));
                let server = crate::hubs::server_config(
                    name,
                    spec,
                    &nodes,
                    i,
                    &store,
                    access.certificates.as_ref(),
                    authorization.as_deref(),
                );
                std::fs::write(&conf, server)?;
                self.hubs.push(Managed::start(
                    format!("hub {}", node.name),
                    Role::Hub,
                    nats,
                    &["-c".as_ref(), conf.as_os_str()],
                    Vec::new(),
                    logs.join(format!("hub-{}.log", node.name)),
                )?);
                self.write_pids()?;
            }
            self.system.hubs.insert(name.clone(), nodes[0].url());
            self.system
                .nodes
                .insert(name.clone(), nodes.iter().map(|n| n.url()).collect());
            self.system.monitors.insert(
                name.clone(),
                nodes.iter().map(|n| n.monitor_url()).collect(),
            );
            let config = topology
                .hub_config(name, offset, options.tls)
                .with_context(|| format!("hub `{name}` is not in the topology"))?;
            hubs.insert(name.clone(), config);
            all_nodes.extend(nodes);
        }
        for node in &all_nodes {
            self.wait_for_node(node, options.ready_timeout).await?;
        }
        // The provisioning step, with its own credential: each hub's streams, as the
        // topology defines them, and its services' views, before any client connects.
        for (name, config) in &hubs {
            let views: Vec<&str> = topology
                .services
                .iter()
                .filter(|s| s.hub() == name)
                .flat_map(|s| s.spec.views.iter().map(String::as_str))
                .collect();
            let provisioner = access.client(config, OPERATOR, PROVISIONER);
            crate::hubs::provision(&provisioner, &views, options.ready_timeout, || {
                self.check_alive()
            })
            .await?;
            eprintln!("  hub {name} ready at {}", config.urls.join(", "));
        }

        for service in &topology.services {
            let program = program(&options.programs, &service.spec.program)?;
            let prefix = fractal::service::env_prefix(&service.spec.program);
            let admin = shifted(&service.config.admin.listen, offset)?;
            let client = access.client(
                &hubs[service.hub()],
                &service.name(),
                &access::service_id(&service.name()),
            );
            let mut env = hub_env(&format!("{prefix}HUB__"), &client);
            env.push((
                format!("{prefix}SUBSYSTEM"),
                service.config.subsystem.clone(),
            ));
            env.push((format!("{prefix}ADMIN__LISTEN"), admin.clone()));
            let grpc = match &service.config.grpc {
                Some(grpc) => {
                    let listen = shifted(&grpc.listen, offset)?;
                    env.push((format!("{prefix}GRPC__LISTEN"), listen.clone()));
                    Some(format!("http://{}", listen.replace("0.0.0.0", "127.0.0.1")))
                }
                None => None,
            };
            let name = service.name();
            let log = logs.join(format!("{}.log", name.replace('/', "-")));
            let managed = Managed::start(
                name.clone(),
                Role::Service(name.clone()),
                &program,
                &["--config".as_ref(), service.config_path.as_os_str()],
                env,
                log.clone(),
            )?;
            self.system.services.insert(
                name.clone(),
                RunningProcess {
                    hub: service.hub().to_owned(),
                    grpc,
                    admin: admin.replace("0.0.0.0", "127.0.0.1"),
                    pid: managed.child.id(),
                    log: log.display().to_string(),
                    restarts: 0,
                    state: "running".into(),
                },
            );
            self.processes.push(managed);
            self.write_pids()?;
        }
        for bridge in &topology.bridges {
            let program = program(&options.programs, "fractal-bridge")?;
            let config = &bridge.config;
            let admin = shifted(&config.admin.listen, offset)?;
            let certificate = bridge_client(&config.name);
            let side = |hub: &str, side: &str| {
                access.client(
                    &hubs[hub],
                    &certificate,
                    &access::bridge_id(&config.name, side),
                )
            };
            let mut env = hub_env("BRIDGE_SOURCE__", &side(&config.source.name, "source"));
            env.extend(hub_env(
                "BRIDGE_TARGET__",
                &side(&config.target.name, "target"),
            ));
            env.push(("BRIDGE_NAME".to_owned(), config.name.clone()));
            env.push(("BRIDGE_ADMIN__LISTEN".to_owned(), admin.clone()));
            let name = format!("bridge {}", config.name);
            let log = logs.join(format!("bridge-{}.log", config.name));
            let managed = Managed::start(
                name,
                Role::Bridge(config.name.clone()),
                &program,
                &["--config".as_ref(), bridge.config_path.as_os_str()],
                env,
                log.clone(),
            )?;
            self.system.bridges.insert(
                config.name.clone(),
                RunningProcess {
                    hub: config.source.name.clone(),
                    grpc: None,
                    admin: admin.replace("0.0.0.0", "127.0.0.1"),
                    pid: managed.child.id(),
                    log: log.display().to_string(),
                    restarts: 0,
                    state: "running".into(),
                },
            );
            self.processes.push(managed);
            self.write_pids()?;
        }
        eprintln!(
            "  {} services and {} bridges started; waiting until each is ready…",
            topology.services.len(),
            topology.bridges.len()
        );
        self.wait_until_ready(options.ready_timeout).await?;
        self.write_running()
    }

    fn write_running(&self) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(&self.system)?;
        std::fs::write(&self.running_file, json)
            .with_context(|| format!("cannot write {}", self.running_file.display()))
    }

    /// One round of supervision: reports each child that exited since the last round and,
    /// with `restart`, starts again each one whose back-off is over. Returns what it reports,
    /// a line or a few each.
    pub(crate) fn supervise(&mut self, restart: bool) -> anyhow::Result<Vec<String>> {
        let mut reports = Vec::new();
        for managed in self.hubs.iter_mut().chain(self.processes.iter_mut()) {
            match managed.state {
                State::Running => {
                    let Some(status) = managed.child.exited() else {
                        continue;
                    };
                    let mut report = format!(
                        "{} exited ({status}) after {:.0?}; the end of {}:\n{}",
                        managed.name,
                        managed.started.elapsed(),
                        managed.log.display(),
                        tail(&managed.log, 10)
                    );
                    if !restart {
                        report.push_str("\nNot restarted (--no-restart).");
                        managed.state = State::Stopped;
                    } else {
                        managed.backoff = next_backoff(managed.backoff, managed.started.elapsed());
                        if managed.backoff == MAX_BACKOFF {
                            report.push_str(&format!(
                                "\n{} is crash-looping ({} restarts); next try in {:?}.",
                                managed.name, managed.restarts, managed.backoff
                            ));
                        } else {
                            report.push_str(&format!("\nRestarting in {:?}.", managed.backoff));
                        }
                        managed.state = State::Restarting(Instant::now() + managed.backoff);
                    }
                    reports.push(report);
                }
                State::Restarting(at) if Instant::now() >= at => {
                    let args: Vec<&std::ffi::OsStr> =
                        managed.args.iter().map(|a| a.as_os_str()).collect();
                    match spawn(&managed.program, &args, &managed.env, &managed.log) {
                        Ok(child) => {
                            managed.child = child;
                            managed.started = Instant::now();
                            managed.restarts += 1;
                            managed.state = State::Running;
                            let pid = managed.child.id();
                            reports.push(format!(
                                "{} restarted (pid {pid}; {} restart{} so far).",
                                managed.name,
                                managed.restarts,
                                if managed.restarts == 1 { "" } else { "s" }
                            ));
                        }
                        Err(e) => {
                            managed.backoff = next_backoff(managed.backoff, Duration::ZERO);
                            managed.state = State::Restarting(Instant::now() + managed.backoff);
                            reports.push(format!(
                                "{} could not be started again: {e:#}; next try in {:?}.",
                                managed.name, managed.backoff
                            ));
                        }
                    }
                }
                State::Restarting(_) | State::Stopped => {}
            }
        }
        if !reports.is_empty() {
            self.write_pids()?;
            self.describe_processes();
            self.write_running()?;
        }
        Ok(reports)
    }

    /// Copies each service's and bridge's pid, restarts and state into the description.
    fn describe_processes(&mut self) {
        for managed in &self.processes {
            let process = match &managed.role {
                Role::Service(name) => self.system.services.get_mut(name),
                Role::Bridge(name) => self.system.bridges.get_mut(name),
                Role::Hub => None,
            };
            let Some(process) = process else { continue };
            process.pid = managed.child.id();
            process.restarts = managed.restarts;
            process.state = match managed.state {
                State::Running => "running",
                State::Restarting(_) if managed.backoff == MAX_BACKOFF => "crash-looping",
                State::Restarting(_) => "restarting",
                State::Stopped => "stopped",
            }
            .into();
        }
    }

    /// The pids the watchdog stops if `fractal up` dies: services and bridges first.
    fn write_pids(&self) -> anyhow::Result<()> {
        // Only running children: an exited one's pid may belong to another process now.
        let pids: Vec<String> = self
            .processes
            .iter()
            .filter(|m| m.state == State::Running)
            .map(|m| format!("process {}", m.child.id()))
            .chain(
                self.hubs
                    .iter()
                    .filter(|m| m.state == State::Running)
                    .map(|m| format!("hub {}", m.child.id())),
            )
            .collect();
        let file = self.running_file.with_file_name("pids");
        std::fs::write(&file, pids.join("\n"))
            .with_context(|| format!("cannot write {}", file.display()))
    }

    /// Waits until the node says it is healthy: listening, and with JetStream current (in a
    /// cluster, once the nodes have elected a leader).
    async fn wait_for_node(
        &mut self,
        node: &crate::hubs::Node,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let monitor = format!("127.0.0.1:{}", node.monitor);
        let deadline = Instant::now() + timeout;
        loop {
            if fractal_cli::running::answers_ok(&monitor, "/healthz").await {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "hub node `{}` was not healthy within {timeout:?} (monitoring {monitor})",
                    node.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails with the log of the first child that exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for managed in self.hubs.iter_mut().chain(self.processes.iter_mut()) {
            if let Some(status) = managed.child.exited() {
                bail!(
                    "{} exited ({status}) while starting; the end of {}:\n{}",
                    managed.name,
                    managed.log.display(),
                    tail(&managed.log, 15)
                );
            }
        }
        Ok(())
    }

    async fn wait_until_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let admins: Vec<(String, String)> = self
            .system
            .services
            .iter()
            .map(|(name, p)| (name.clone(), p.admin.clone()))
            .chain(
                self.system
                    .bridges
                    .iter()
                    .map(|(name, p)| (format!("bridge {name}"), p.admin.clone())),
            )
            .collect();
        for (name, admin) in admins {
            loop {
                if fractal_cli::running::answers_ok(&admin, "/readyz").await {
                    break;
                }
                self.check_alive()?;
                if Instant::now() > deadline {
                    bail!("{name} was not ready within {timeout:?} (admin {admin})");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// What runs where, as a table.
    pub(crate) fn table(&self) -> String {
        let mut rows = vec![["what", "hub", "gRPC", "admin"].map(String::from).to_vec()];
        for (hub, url) in &self.system.hubs {
            let monitors = self.system.monitors.get(hub).cloned().unwrap_or_default();
            rows.push(vec![
                format!("hub {hub}"),
                url.clone(),
                String::new(),
                monitors.join(", "),
            ]);
        }
        for (name, p) in &self.system.services {
            rows.push(vec![
                name.clone(),
                p.hub.clone(),
                p.grpc.clone().unwrap_or_default(),
                p.admin.clone(),
            ]);
        }
        for (name, p) in &self.system.bridges {
            rows.push(vec![
                format!("bridge {name}"),
                p.hub.clone(),
                String::new(),
                p.admin.clone(),
            ]);
        }
        crate::table::table(&rows).trim_end().to_owned()
    }

    /// Stops services and bridges (SIGTERM, then SIGKILL after 10 s), then the hubs.
    pub(crate) fn stop(&mut self) {
        for group in [&mut self.processes, &mut self.hubs] {
            // A child that exited is not signalled: its pid may belong to another process now.
            let running: Vec<&mut Managed> = group
                .iter_mut()
                .filter(|m| m.state == State::Running)
                .collect();
            let names: Vec<String> = running.iter().map(|m| m.name.clone()).collect();
            let stopped = fractal_process::terminate_all(
                running.into_iter().map(|m| &mut m.child),
                Duration::from_secs(10),
            );
            for (name, status) in names.iter().zip(stopped) {
                if status.is_none() {
                    eprintln!("{name} did not stop within 10 s; killed it.");
                }
            }
            group.clear();
        }
        for file in ["running.json", "pids", "up.pid"] {
            let _ = std::fs::remove_file(self.running_file.with_file_name(file));
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            watchdog.kill();
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child in its own process group (so a terminal's Ctrl-C reaches only `fractal up`, which
/// stops everything in order), its output appended to `log`.
fn spawn(
    program: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<Process> {
    Ok(Spawn::new(program, log)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .own_group()
        .start()?)
}

/// The watchdog: waits for `parent` to disappear, then stops whatever it left running:
/// services and bridges first, hubs last.
pub(crate) fn watchdog(parent: u32, state: &Path) {
    while alive(parent) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = std::fs::read_to_string(state.join("pids")).unwrap_or_default();
    for kind in ["process", "hub"] {
        let pids: Vec<u32> = listed
            .lines()
            .filter_map(|l| l.strip_prefix(kind)?.trim().parse().ok())
            .collect();
        for pid in &pids {
            fractal_process::signal_pid(*pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in pids.iter().filter(|p| alive(**p)) {
            fractal_process::signal_pid(*pid, "KILL");
        }
    }
    for file in ["pids", "up.pid", "running.json"] {
        let _ = std::fs::remove_file(state.join(file));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_thirty_seconds_and_starts_over_after_a_steady_minute() {
        let mut wait = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..7 {
            wait = next_backoff(wait, Duration::from_secs(2));
            waits.push(wait.as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(next_backoff(wait, Duration::from_secs(61)), FIRST_BACKOFF);
    }
}
