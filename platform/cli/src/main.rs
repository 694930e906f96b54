//! `fractal`: run a system (or one subsystem) locally from its topology file, draw it, watch
//! and publish events, inspect and resubmit faults, and see whether it is healthy.

mod access;
mod asyncapi;
mod catalogue;
mod described;
mod events;
mod evolution;
mod faults;
mod graph;
mod hubs;
mod lake;
mod replay;
mod status;
mod table;
mod tls;
mod topology;
mod ui;
mod up;
mod views;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fractal::{Hub, Scope};

use crate::topology::Topology;
use crate::up::{Up, UpOptions};

/// Runs and inspects a Fractal system from its topology file.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The topology file. Default: `fractal.toml` in this folder or the nearest one above.
    #[arg(long, global = true)]
    topology: Option<PathBuf>,
    /// The folder of a local run's hub stores, logs and `running.json`. Default:
    /// `.fractal/run` beside the topology file.
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start one nats-server per hub, then every service and bridge; stop all on Ctrl-C.
    Up {
        /// Run only this subsystem's hub and services (repeat for several; bridges between
        /// chosen ones run too).
        #[arg(long = "subsystem", value_name = "NAME")]
        subsystems: Vec<String>,
        /// Add this to every port, to run beside another copy.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
        /// Report a service, bridge or hub that exits, but do not start it again.
        #[arg(long)]
        no_restart: bool,
        /// Hubs require mutual TLS: a private authority and a certificate for every hub node
        /// and client are made for the run, under the state folder's `tls/`.
        #[arg(long)]
        tls: bool,
        /// Hubs admit any client. By default each hub admits only its clients' nkeys (kept
        /// under the state folder's `credentials/`), each with only the permissions the
        /// topology derives for it.
        #[arg(long)]
        no_auth: bool,
    },
    /// Run the topology's demo program against the system (started for the demo if not
    /// running), with `--system <state>/running.json` and the arguments after `--`.
    Demo {
        /// Add this to every port when the demo starts the system itself.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
        /// Arguments for the demo program (`fractal demo -- --help` lists them).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Show the system as a graph, and who produces and consumes each contract.
    Topology {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print a hub's events as they arrive, decoded.
    Tail {
        /// The hub.
        hub: String,
        /// Only events of this type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// Start from the first event the hub keeps instead of new ones.
        #[arg(long)]
        all: bool,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Deliver stored events again to one consumer (a service's or a bridge route's) and no
    /// other: in order per key, marked as a replay, resumable (the same command continues
    /// where it stopped), with progress.
    #[command(args_conflicts_with_subcommands = true)]
    Replay {
        #[command(subcommand)]
        action: Option<ReplayAction>,
        #[command(flatten)]
        request: Option<ReplayArgs>,
    },
    /// Use a hub's event lake.
    Lake {
        #[command(subcommand)]
        action: LakeAction,
    },
    /// A service's views.
    Views {
        #[command(subcommand)]
        action: ViewsAction,
    },
    /// The external contracts: how they changed, and whether readers still read them.
    Contracts {
        #[command(subcommand)]
        action: ContractsAction,
    },
    /// Publish a simulated event, its payload given as JSON.
    Publish {
        /// The hub.
        hub: String,
        /// The event type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: String,
        /// The payload as JSON (protobuf JSON mapping), from a file or `-` for stdin.
        #[arg(long, value_name = "FILE")]
        json: PathBuf,
        /// The payload's message. Default: the contract of the bridge route that carries the
        /// type.
        #[arg(long)]
        contract: Option<String>,
        /// The partition key. Default: the payload's first `…_id` field.
        #[arg(long)]
        key: Option<String>,
        /// Publish as an internal event instead of an external one.
        #[arg(long)]
        internal: bool,
    },
    /// Inspect a hub's faults and resubmit their originals.
    Faults {
        /// The hub.
        hub: String,
        #[command(subcommand)]
        action: FaultAction,
    },
    /// Validate the topology and every config it names, and compare each service's
    /// `publishes` and `consumes` with what its program declares (`<program> --describe`,
    /// the one thing it runs).
    Check,
    /// A hub's servers as the topology defines them.
    Hub {
        #[command(subcommand)]
        action: HubAction,
    },
    /// Whether the system is healthy and, if not, where: every hub, service and bridge route.
    /// Exits 0 when healthy, 1 when anything is unhealthy, 3 when a part cannot be told.
    Status {
        /// Refresh every interval until Ctrl-C (in place on a terminal).
        #[arg(long)]
        watch: bool,
        /// Output format (`json`: one object per reading).
        #[arg(long, value_enum, default_value_t = status::Output::Text)]
        format: status::Output,
        #[command(flatten)]
        reading: Reading,
    },
    /// Serve a live page of the system: its topology with health, rates and lag, and each
    /// hub's latest events and faults.
    Ui {
        /// Where the page listens.
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: String,
        #[command(flatten)]
        reading: Reading,
    },
    /// Stops what `fractal up` started if it dies (started by `fractal up`).
    #[command(hide = true)]
    Watchdog {
        #[arg(long)]
        parent: u32,
        #[arg(long)]
        state: PathBuf,
    },
}

/// How `status` and `ui` read the system.
#[derive(Debug, clap::Args)]
struct Reading {
    /// Seconds between the readings rates are taken from.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Read a deployed system at the addresses in this TOML file (`[hubs.NAME] monitors`,
    /// `url`; `[services]` and `[bridges]` admin addresses) instead of a local run.
    #[arg(long, value_name = "FILE")]
    endpoints: Option<PathBuf>,
    /// A fault younger than this many seconds makes its hub unhealthy.
    #[arg(long, default_value_t = 300)]
    fault_window: u64,
    /// A consumer lag growing past this makes its service unhealthy.
    #[arg(long, default_value_t = 1000)]
    max_lag: u64,
}

impl Reading {
    fn observer(&self, topology: Topology, state: &Path) -> anyhow::Result<status::Observer> {
        if !(0.1..=3600.0).contains(&self.interval) {
            bail!(
                "--interval: {} is not between 0.1 and 3600 seconds",
                self.interval
            );
        }
        status::Observer::new(
            topology,
            state,
            self.endpoints.as_deref(),
            status::Thresholds {
                fault_window: Duration::from_secs(self.fault_window),
                max_lag: self.max_lag,
            },
            Duration::from_secs_f64(self.interval),
        )
    }
}

#[derive(Debug, Subcommand)]
enum HubAction {
    /// Print the `nats-server` configuration of each node of the hub, as `fractal up`
    /// writes it (cluster routes, JetStream, sync, TLS), for review.
    Config {
        /// The hub.
        hub: String,
        /// As `fractal up --port-offset` would shift it.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
        /// As `fractal up --tls` would write it.
        #[arg(long)]
        tls: bool,
        /// As `fractal up --no-auth` would write it: no credentials, no permissions.
        #[arg(long)]
        no_auth: bool,
    },
    /// Print who may do what on each hub, as `fractal up` grants it: a Markdown table per
    /// hub of each client's events, faults, durable consumers and views.
    Permissions,
    /// Print the hub's `authorization` block for a deployment (the Helm charts'
    /// `authorization` value): each client's public key with its permissions, derived from
    /// the topology. The seeds stay in `<state>/credentials` (made now if missing), one
    /// `<client>.nk` file each, to be put in a Secret.
    Authorization {
        /// The hub.
        hub: String,
    },
    /// Create the hub's streams and view buckets on a hub that runs elsewhere (the Helm
    /// charts' provisioning Job), as `fractal up`'s provisioning step does; waits for the hub
    /// to answer.
    Provision {
        /// The hub's name.
        hub: String,
        /// A URL of the hub; repeat for each node.
        #[arg(long = "url", required = true)]
        urls: Vec<String>,
        /// The provisioner's nkey seed file; none: an open hub.
        #[arg(long)]
        seed_file: Option<PathBuf>,
        /// The certificate authority of the hub's TLS certificate; none: no TLS.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Replicas of the streams and views.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// A view bucket to create; repeat for each.
        #[arg(long = "view")]
        views: Vec<String>,
        /// How long to wait for the hub.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The hub.
    hub: String,
    /// The service that gets the events: `<subsystem>/<service>` of the topology, or the
    /// name of a durable consumer on the hub.
    #[arg(long, value_name = "SERVICE", required_unless_present = "route")]
    to: Option<String>,
    /// The bridge route that gets the events, `<bridge>/<route>` (on its source hub).
    #[arg(long, value_name = "BRIDGE/ROUTE", conflicts_with = "to")]
    route: Option<String>,
    /// Only these event types (comma-separated); default: every type the consumer handles.
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// From this stream sequence (42) or storage time (2026-11-01T00:00:00Z) on.
    #[arg(long)]
    from: Option<lake::Bound>,
    /// Up to and including this stream sequence or storage time.
    #[arg(long)]
    until: Option<lake::Bound>,
    /// Only events of these partition keys (comma-separated).
    #[arg(long, value_delimiter = ',')]
    keys: Vec<String>,
    /// At most this many events per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Print what would be replayed (counts by type, the keys covered) and touch nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum ReplayAction {
    /// Every replay a hub keeps, with its progress.
    List {
        /// The hub.
        hub: String,
    },
    /// Stop a replay (a running one stops within a second).
    Cancel {
        /// The hub.
        hub: String,
        /// The replay's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ViewsAction {
    /// Rebuild a view from the lake while its running service keeps serving it: the service
    /// runs its handlers over every stored event into a new bucket, then switches to it; the
    /// report compares the new entries with the old.
    Rebuild {
        /// The service, `<subsystem>/<service>`.
        service: String,
        /// The view (its indexes are rebuilt with it).
        view: String,
    },
}

#[derive(Debug, Subcommand)]
enum ContractsAction {
    /// Compile the `.proto` files into one descriptor set (`FileDescriptorSet`, with imports
    /// and comments): a baseline for `check --against`, or descriptors for other tools.
    Build {
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The folder of `.proto` files. Default: the topology's `contracts`.
        #[arg(long, value_name = "DIR")]
        proto: Option<PathBuf>,
        /// Write nothing; exit 1 if the file is not what building would write (a descriptor
        /// set kept in a repository, such as a chart's, is out of date).
        #[arg(long)]
        check: bool,
    },
    /// Each external event type (one a bridge route carries): its message, who produces and
    /// consumes it, how many routes carry it. With `--format asyncapi`, an AsyncAPI 3.0
    /// document of the system: each hub a server, each type on a hub a channel, each
    /// producer, consumer and route an operation, each message's JSON Schema.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = CatalogueFormat::Text)]
        format: CatalogueFormat,
    },
    /// One external event type in full: its message's fields and comments, producers,
    /// consumers, the routes carrying it, the versions of its message and, with `--hub`, the
    /// latest such event stored there.
    Show {
        /// The event type (`order.placed`).
        event_type: String,
        /// The contracts: a folder of `.proto` files or a descriptor set. Default: the
        /// topology's `contracts`.
        #[arg(long, value_name = "DIR")]
        proto: Option<PathBuf>,
        /// Also show the latest event of the type stored on this hub.
        #[arg(long)]
        hub: Option<String>,
    },
    /// Compare the contracts the topology's routes carry (and what they reach) with another
    /// version: report each change as breaking or compatible, with file, message and field.
    /// Exits 1 if any change breaks readers of old or new events.
    Check {
        /// The version to compare with: a git revision of the repository (its `proto` folder
        /// is compiled) or a descriptor set file (`FileDescriptorSet`).
        #[arg(long, value_name = "REVISION|FILE", required_unless_present = "hub")]
        against: Option<String>,
        /// Also decode the external events stored on this hub with the contracts checked,
        /// reporting per type and payload version those that no longer decode or lose fields.
        #[arg(long)]
        hub: Option<String>,
        /// How many stored events to decode, the oldest first.
        #[arg(long, default_value_t = 10_000, value_name = "N")]
        sample: u64,
        /// The contracts to check: a folder of `.proto` files or a descriptor set. Default:
        /// the topology's `contracts`.
        #[arg(long, value_name = "DIR")]
        proto: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CatalogueFormat {
    Text,
    Asyncapi,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum LakeAction {
    /// Write a hub's events as JSON lines (the envelope's fields, the payload in protobuf's
    /// JSON mapping, the stream sequence and when the hub stored it), with progress on stderr.
    /// It stops at the last event stored when it began.
    Export {
        /// The hub.
        hub: String,
        /// Which events.
        #[command(flatten)]
        range: lake::Range,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum FaultAction {
    /// One line per fault.
    List,
    /// Everything about one fault.
    Show {
        /// The fault's id.
        id: String,
    },
    /// Publish the originals again, each for the consumer that faulted it.
    Resubmit {
        /// The faults' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Mermaid,
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Watchdog { parent, state } = &cli.command {
        up::watchdog(*parent, state);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fractal: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fractal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn find_topology(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let mut dir = std::env::current_dir()?;
    loop {
        let candidate = dir.join("fractal.toml");
        if candidate.is_file() {
            return Ok(candidate);
        }
        if !dir.pop() {
            bail!("no fractal.toml here or in a folder above; name one with --topology");
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Topology> {
    Topology::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn programs() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the fractal program itself")?;
    Ok(exe.parent().unwrap_or(Path::new(".")).to_path_buf())
}

/// Connects to `hub` of the running system, or of the topology if nothing runs.
async fn hub(topology_path: &Path, state: &Path, name: &str) -> anyhow::Result<Hub> {
    let mut config = match up::running(state) {
        Some(system) => system.hub_config(name).with_context(|| {
            format!(
                "hub `{name}` is not running (running: {})",
                system.hubs.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?,
        None => {
            let topology = load(topology_path)?;
            let mut config = topology.hub_config(name, 0, false).with_context(|| {
                format!(
                    "hub `{name}` is not in the topology (hubs: {})",
                    topology.hubs.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            config.tls = None;
            config
        }
    };
    config.connect_timeout_secs = 3;
    Hub::connect(&config).await.with_context(|| {
        format!(
            "cannot reach hub `{name}` at {}; is the system up? start it with `fractal up`",
            config.urls.join(", ")
        )
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let topology_path = find_topology(cli.topology)?;
    let state = match cli.state {
        Some(state) => state,
        None => topology_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(".fractal/run"),
    };
    match cli.command {
        Command::Check => {
            let topology = load(&topology_path)?;
            let problems = described::compare(&topology, &programs()?);
            if !problems.is_empty() {
                bail!(
                    "{}: {}",
                    topology_path.display(),
                    fractal::config::ConfigError { problems }
                );
            }
            println!(
                "{}: system `{}` with {} hubs, {} services and {} bridges is valid.",
                topology_path.display(),
                topology.name,
                topology.hubs.len(),
                topology.services.len(),
                topology.bridges.len()
            );
        }
        Command::Topology { format } => {
            let topology = load(&topology_path)?;
            print!(
                "{}",
                match format {
                    Format::Text => graph::text(&topology),
                    Format::Mermaid => graph::mermaid(&topology),
                    Format::Dot => graph::dot(&topology),
                }
            );
        }
        Command::Up {
            subsystems,
            port_offset,
            no_restart,
            tls,
            no_auth,
        } => {
            let topology = load(&topology_path)?
                .select(&subsystems)
                .map_err(|e| anyhow::anyhow!(e))?;
            let options = UpOptions {
                state: state.clone(),
                port_offset,
                programs: programs()?,
                ready_timeout: Duration::from_secs(60),
                tls,
                auth: !no_auth,
            };
            println!(
                "Starting {} hub{}, {} services and {} bridges of `{}`…",
                topology.hubs.len(),
                if topology.hubs.len() == 1 { "" } else { "s" },
                topology.services.len(),
                topology.bridges.len(),
                topology.name
            );
            // Ctrl-C while starting drops the start, which stops what it started.
            let shutdown = fractal::service::shutdown_on_signal();
            let mut up = tokio::select! {
                up = Up::start(&topology, &options) => up?,
                _ = shutdown.cancelled() => {
                    println!("Stopped while starting.");
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!("Ready:\n{}", up.table());
            println!(
                "State and logs in {}. Ctrl-C stops everything.",
                state.display()
            );
            // Supervise until Ctrl-C or SIGTERM.
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        for report in up.supervise(!no_restart)? {
                            println!("{report}");
                        }
                    }
                }
            }
            println!("Stopping…");
            up.stop();
            println!("Stopped.");
        }
        Command::Demo { port_offset, args } => {
            return demo(&topology_path, &state, port_offset, &args).await;
        }
        Command::Tail {
            hub: name,
            event_type,
            all,
            count,
        } => {
            let contracts = load(&topology_path)?.contracts;
            let hub = hub(&topology_path, &state, &name).await?;
            let shutdown = fractal::service::shutdown_on_signal();
            let only = event_type.as_deref();
            events::tail(&hub, &contracts, only, all, count, shutdown).await?;
        }
        Command::Replay { action, request } => match (action, request) {
            (Some(ReplayAction::List { hub: name }), _) => {
                let hub = hub(&topology_path, &state, &name).await?;
                print!("{}", replay::list(&hub).await?);
            }
            (Some(ReplayAction::Cancel { hub: name, id }), _) => {
                let hub = hub(&topology_path, &state, &name).await?;
                replay::cancel(&hub, &id).await?;
                println!("Replay {id} cancelled.");
            }
            (None, Some(args)) => {
                let durable = replay_target(&topology_path, &args)?;
                let request = replay::Request {
                    durable,
                    // Flattened into an optional argument group, a `Range` would leave the
                    // group unrecognised: its fields are spelled out here.
                    range: lake::Range {
                        types: args.types,
                        from: args.from,
                        until: args.until,
                    },
                    keys: args.keys,
                    rate: args.rate,
                };
                request.range.check()?;
                if request.rate == Some(0) {
                    bail!("--rate must be at least 1 event per second");
                }
                let hub = hub(&topology_path, &state, &args.hub).await?;
                if args.dry_run {
                    print!("{}", replay::dry_run(&hub, &request).await?);
                } else {
                    let shutdown = fractal::service::shutdown_on_signal();
                    let (id, replayed) = replay::run(&hub, &request, shutdown).await?;
                    println!(
                        "Replay {id}: {replayed} events replayed to `{}`.",
                        request.durable
                    );
                }
            }
            (None, None) => bail!("name a hub and --to or --route, or `list` or `cancel`"),
        },
        Command::Contracts {
            action: ContractsAction::Build { out, proto, check },
        } => {
            // Given a folder, the topology is not read: it may name the file being built.
            let proto = match proto {
                Some(folder) => std::fs::canonicalize(&folder)
                    .with_context(|| format!("no folder {}", folder.display()))?,
                None => contracts_path(&load(&topology_path)?, None)?,
            };
            if !proto.is_dir() {
                bail!(
                    "{} is a descriptor set already, not a folder of .proto files; name the folder with --proto",
                    proto.display()
                );
            }
            let set = fractal_bridge::contracts::compile_folder(&proto)?;
            let bytes = prost::Message::encode_to_vec(&set);
            if check {
                if std::fs::read(&out).ok().as_ref() != Some(&bytes) {
                    eprintln!(
                        "{} is not the descriptor set of {}; write it with `fractal contracts build --out {}`",
                        out.display(),
                        proto.display(),
                        out.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
                println!("{}: up to date with {}.", out.display(), proto.display());
                return Ok(ExitCode::SUCCESS);
            }
            std::fs::write(&out, bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "{}: {} files compiled from {}.",
                out.display(),
                set.file.len(),
                proto.display()
            );
        }
        Command::Contracts {
            action: ContractsAction::List { format },
        } => {
            let topology = load(&topology_path)?;
            match format {
                CatalogueFormat::Text => {
                    print!("{}", catalogue::list(&catalogue::entries(&topology)))
                }
                CatalogueFormat::Asyncapi => {
                    let document = asyncapi::document(&topology, topology.contracts.pool());
                    println!("{document:#}");
                }
            }
        }
        Command::Contracts {
            action:
                ContractsAction::Show {
                    event_type,
                    proto,
                    hub: stored,
                },
        } => {
            let topology = load(&topology_path)?;
            let entries = catalogue::entries(&topology);
            let Some(entry) = entries.get(&event_type) else {
                let known: Vec<&str> = entries.keys().map(String::as_str).collect();
                bail!(
                    "no route carries `{event_type}`; the external types are {}",
                    known.join(", ")
                );
            };
            let contracts = match proto {
                Some(path) => fractal_bridge::Contracts::load(&path)?,
                None => topology.contracts.clone(),
            };
            print!("{}", catalogue::show(&event_type, entry, contracts.pool()));
            if let Some(name) = stored {
                let hub = hub(&topology_path, &state, &name).await?;
                let subject = fractal::wire::event_subject(Scope::External, &event_type);
                let stream = hub
                    .jetstream()
                    .get_stream_no_info(hub.events_stream())
                    .await
                    .context("cannot read the event stream")?;
                match stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(message) => {
                        let event = fractal::Event::decode(
                            &message.subject,
                            Some(&message.headers),
                            message.payload,
                        )?;
                        let line = events::line(&contracts, &event);
                        println!("\n  latest on `{name}`: {line}");
                    }
                    Err(e)
                        if e.kind()
                            == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                    {
                        println!("\n  latest on `{name}`: none stored")
                    }
                    Err(e) => bail!("cannot read the latest `{event_type}` on `{name}`: {e}"),
                }
            }
        }
        Command::Contracts {
            action:
                ContractsAction::Check {
                    against,
                    hub: lake,
                    sample,
                    proto,
                    format,
                },
        } => {
            let topology = load(&topology_path)?;
            let lake = match lake {
                Some(name) => Some(hub(&topology_path, &state, &name).await?),
                None => None,
            };
            let check = ContractsCheck {
                against: against.as_deref(),
                lake: lake.as_ref().map(|hub| (hub, sample)),
                proto,
                format,
            };
            return contracts_check(&topology, check).await;
        }
        Command::Views {
            action: ViewsAction::Rebuild { service, view },
        } => {
            let topology = load(&topology_path)?;
            let (name, consumer) = views::locate(&topology, &service, &view)?;
            let hub = hub(&topology_path, &state, &name).await?;
            print!("{}", views::rebuild(&hub, consumer, &view).await?);
        }
        Command::Lake {
            action:
                LakeAction::Export {
                    hub: name,
                    range,
                    output,
                },
        } => {
            range.check()?;
            let hub = hub(&topology_path, &state, &name).await?;
            let shutdown = fractal::service::shutdown_on_signal();
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let contracts = load(&topology_path)?.contracts;
            lake::export(&hub, &contracts, &range, &mut out, shutdown).await?;
        }
        Command::Publish {
            hub: name,
            event_type,
            json,
            contract,
            key,
            internal,
        } => {
            fractal::wire::check_name(&event_type)
                .map_err(|e| anyhow::anyhow!("--type: event type {e}"))?;
            let topology = load(&topology_path)?;
            let contract = match contract {
                Some(contract) => contract,
                None => contract_of(&topology, &event_type)?,
            };
            let contracts = &topology.contracts;
            let text = if json == Path::new("-") {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(&json)
                    .with_context(|| format!("cannot read {}", json.display()))?
            };
            let payload = events::encode_json(contracts, &contract, &text)
                .with_context(|| format!("{}", json.display()))?;
            let Some(key) = key.or_else(|| events::key_of(contracts, &contract, &payload)) else {
                bail!("the payload has no `…_id` field to key the event by; give one with --key");
            };
            let hub = hub(&topology_path, &state, &name).await?;
            let scope = if internal {
                Scope::Internal
            } else {
                Scope::External
            };
            let id = events::publish(&hub, scope, &event_type, &key, &contract, payload).await?;
            println!("Published {event_type} {id} (key {key}) on hub `{name}`.");
        }
        Command::Faults { hub: name, action } => {
            let hub = hub(&topology_path, &state, &name).await?;
            let all = faults::all(&hub).await?;
            let find = |id: &str| {
                all.iter()
                    .find(|f| f.id == id)
                    .with_context(|| format!("hub `{name}` has no fault `{id}`"))
            };
            match action {
                FaultAction::List => print!("{}", faults::list(&all)),
                FaultAction::Show { id } => {
                    let contracts = load(&topology_path)?.contracts;
                    print!("{}", faults::show(&contracts, find(&id)?))
                }
                FaultAction::Resubmit { ids } => {
                    let chosen = ids
                        .iter()
                        .map(|id| find(id))
                        .collect::<Result<Vec<_>, _>>()?;
                    for fault in chosen {
                        if faults::resubmit(&hub, fault).await? {
                            println!("Resubmitted {} to `{}`.", fault.id, fault.consumer);
                        } else {
                            println!("{} was resubmitted already.", fault.id);
                        }
                    }
                }
            }
        }
        Command::Status {
            watch,
            format,
            reading,
        } => {
            let observer = reading.observer(load(&topology_path)?, &state)?;
            let shutdown = fractal::service::shutdown_on_signal();
            return status::run(observer, format, watch, shutdown).await;
        }
        Command::Ui { listen, reading } => {
            let topology = load(&topology_path)?;
            let observer = reading.observer(topology.clone(), &state)?;
            let shutdown = fractal::service::shutdown_on_signal();
            ui::serve(&topology, observer, &listen, shutdown).await?;
        }
        Command::Hub {
            action:
                HubAction::Config {
                    hub,
                    port_offset,
                    tls,
                    no_auth,
                },
        } => {
            let topology = load(&topology_path)?;
            let spec = topology.hubs.get(&hub).with_context(|| {
                format!(
                    "hub `{hub}` is not in the topology (hubs: {})",
                    topology.hubs.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            let nodes = hubs::nodes(&hub, spec, port_offset, tls)?;
            let certificates = tls.then(|| tls::Certificates::at(&state.join("tls")));
            // The public keys of the run's credentials (made now if the run has none yet).
            let authorization = if no_auth {
                None
            } else {
                let credentials = access::Credentials::at(&state.join("credentials"))?;
                Some(access::authorization(&topology, &hub, &credentials)?)
            };
            for (i, node) in nodes.iter().enumerate() {
                let store = state.join("hubs").join(&node.name);
                println!(
                    "{}",
                    hubs::server_config(
                        &hub,
                        spec,
                        &nodes,
                        i,
                        &store,
                        certificates.as_ref(),
                        authorization.as_deref()
                    )
                );
            }
        }
        Command::Hub {
            action: HubAction::Permissions,
        } => print!("{}", access::table(&load(&topology_path)?)),
        Command::Hub {
            action: HubAction::Authorization { hub },
        } => {
            let topology = load(&topology_path)?;
            if !topology.hubs.contains_key(&hub) {
                bail!(
                    "hub `{hub}` is not in the topology (hubs: {})",
                    topology.hubs.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let credentials = access::Credentials::at(&state.join("credentials"))?;
            print!("{}", access::authorization(&topology, &hub, &credentials)?);
        }
        Command::Hub {
            action:
                HubAction::Provision {
                    hub,
                    urls,
                    seed_file,
                    ca_file,
                    replicas,
                    views,
                    timeout_secs,
                },
        } => {
            let mut config = fractal::HubConfig::local(&hub, &urls[0]);
            config.urls = urls;
            config.events.replicas = replicas;
            config.faults.replicas = replicas;
            if let Some(file) = seed_file {
                config.auth = fractal::hub::AuthConfig::Nkey {
                    seed: None,
                    seed_file: Some(file),
                };
                config.inbox_prefix = format!("_INBOX.{}", access::PROVISIONER);
            }
            if let Some(file) = ca_file {
                config.tls = Some(fractal::hub::TlsConfig {
                    required: true,
                    ca_file: Some(file),
                    cert_file: None,
                    key_file: None,
                });
            }
            let views: Vec<&str> = views.iter().map(String::as_str).collect();
            hubs::provision(
                &config,
                &views,
                Duration::from_secs(timeout_secs),
                || Ok(()),
            )
            .await?;
            println!(
                "Hub `{hub}`: streams and {} view buckets provisioned.",
                views.len()
            );
        }
        Command::Watchdog { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The durable consumer a replay goes to: a topology service's, a bridge route's, or one
/// named as it is on the hub.
fn replay_target(topology_path: &Path, args: &ReplayArgs) -> anyhow::Result<String> {
    if let Some(route) = &args.route {
        let topology = load(topology_path)?;
        let Some((bridge, name)) = route.split_once('/') else {
            bail!("--route `{route}`: name it `<bridge>/<route>`");
        };
        let Some(found) = topology.bridges.iter().find(|b| b.config.name == bridge) else {
            bail!("--route `{route}`: no bridge `{bridge}` in the topology");
        };
        if !found.config.routes.iter().any(|r| r.name == name) {
            bail!(
                "--route `{route}`: bridge `{bridge}` has no route `{name}` (routes: {})",
                found
                    .config
                    .routes
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if found.config.source.name != args.hub {
            bail!(
                "--route `{route}` reads hub `{}`, not `{}`",
                found.config.source.name,
                args.hub
            );
        }
        return Ok(format!("bridge-{bridge}-{name}"));
    }
    let to = args.to.as_deref().unwrap_or_default();
    if to.contains('/') {
        let topology = load(topology_path)?;
        let service = topology
            .service(to)
            .map_err(|e| anyhow::anyhow!("--to `{to}`: {e}"))?;
        if service.hub() != args.hub {
            bail!(
                "--to `{to}` runs on hub `{}`, not `{}`",
                service.hub(),
                args.hub
            );
        }
        let config = &service.config;
        return Ok(config
            .consumer
            .durable
            .clone()
            .unwrap_or_else(|| config.service.clone()));
    }
    Ok(to.to_owned())
}

/// The contract of the bridge routes that carry `event_type`.
fn contract_of(topology: &Topology, event_type: &str) -> anyhow::Result<String> {
    let contracts: std::collections::BTreeSet<&str> = topology
        .bridges
        .iter()
        .flat_map(|b| &b.config.routes)
        .filter(|r| r.types.iter().any(|p| topology::matches(p, event_type)))
        .map(|r| r.contract.as_str())
        .collect();
    match contracts.len() {
        1 => Ok(contracts.into_iter().next().unwrap_or_default().to_owned()),
        0 => bail!(
            "no bridge route carries `{event_type}`, so its contract is unknown; name it with --contract"
        ),
        _ => bail!(
            "routes carrying `{event_type}` disagree on its contract ({}); name one with --contract",
            contracts.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The contracts' folder or descriptor set: `given`, else the topology's `contracts`.
fn contracts_path(topology: &Topology, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given.as_deref().or(topology.contracts.source()) {
        Some(path) => path.to_owned(),
        None => bail!(
            "the topology names no contracts and has no `proto` folder beside it; set `contracts`"
        ),
    };
    std::fs::canonicalize(&path).with_context(|| format!("no file or folder {}", path.display()))
}

/// What `fractal contracts check` compares the contracts in `proto` with.
struct ContractsCheck<'a> {
    against: Option<&'a str>,
    lake: Option<(&'a Hub, u64)>,
    proto: Option<PathBuf>,
    format: ReportFormat,
}

/// `fractal contracts check`: the routes' contracts in `proto` against another version and
/// against the events a hub stores. Exits 1 if anything breaks.
async fn contracts_check(
    topology: &Topology,
    check: ContractsCheck<'_>,
) -> anyhow::Result<ExitCode> {
    let repository = std::fs::canonicalize(topology.path.parent().unwrap_or(Path::new(".")))?;
    let proto = contracts_path(topology, check.proto)?;
    let current = evolution::compile(&proto)?;
    let mut breaking = 0;
    let mut report = serde_json::Map::new();
    if let Some(against) = check.against {
        let baseline = evolution::baseline(against, &repository, &proto)?;
        let carried: Vec<String> = topology
            .bridges
            .iter()
            .flat_map(|b| b.config.routes.iter().map(|r| r.contract.clone()))
            .collect();
        let mut changes = evolution::compare(&baseline, &current, &carried);
        let topology_file = std::fs::canonicalize(&topology.path)?;
        if let Some(published) = evolution::published_at(against, &repository, &topology_file)? {
            changes.extend(evolution::compare_event_types(&published, topology));
        }
        let broken = changes.iter().filter(|c| c.breaking).count();
        breaking += broken;
        match check.format {
            ReportFormat::Json => {
                report.insert("against".into(), against.into());
                report.insert("changes".into(), serde_json::to_value(&changes)?);
            }
            ReportFormat::Text => {
                for change in &changes {
                    println!("{change}");
                }
                println!(
                    "{} change{} to the contracts since `{against}`, {broken} breaking.",
                    changes.len(),
                    if changes.len() == 1 { "" } else { "s" }
                );
            }
        }
    }
    if let Some((hub, sample)) = check.lake {
        let findings = evolution::check_lake(hub, &current, sample).await?;
        let broken = findings.iter().filter(|f| !f.is_clean()).count();
        breaking += broken;
        match check.format {
            ReportFormat::Json => {
                report.insert("hub".into(), hub.name().into());
                report.insert("lake".into(), serde_json::to_value(&findings)?);
            }
            ReportFormat::Text => {
                for finding in &findings {
                    println!("{finding}");
                }
                println!(
                    "{} stored type{} and version{} on hub `{}`, {broken} no longer read as written.",
                    findings.len(),
                    if findings.len() == 1 { "" } else { "s" },
                    if findings.len() == 1 { "" } else { "s" },
                    hub.name()
                );
            }
        }
    }
    if let ReportFormat::Json = check.format {
        report.insert("breaking".into(), breaking.into());
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(if breaking > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs the topology's demo program with `args`, against the running system or one started
/// for it. The platform knows nothing of what the demo does: its options are its own.
async fn demo(
    topology_path: &Path,
    state: &Path,
    port_offset: u16,
    args: &[String],
) -> anyhow::Result<ExitCode> {
    let topology = load(topology_path)?;
    let Some(demo) = &topology.demo else {
        bail!("the topology names no [demo] program");
    };
    let program = up::program(&programs()?, &demo.program)?;
    if args.iter().any(|a| a == "--help" || a == "-h") {
        let status = std::process::Command::new(&program)
            .args(args)
            .status()
            .with_context(|| format!("cannot run {}", program.display()))?;
        return Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let shutdown = fractal::service::shutdown_on_signal();
    let mut started = None;
    if up::running(state).is_none() {
        println!("Starting `{}` for the demo…", topology.name);
        let options = UpOptions {
            state: state.to_path_buf(),
            port_offset,
            programs: programs()?,
            ready_timeout: Duration::from_secs(60),
            tls: false,
            auth: true,
        };
        let up = tokio::select! {
            up = Up::start(&topology, &options) => up?,
            _ = shutdown.cancelled() => return Ok(ExitCode::FAILURE),
        };
        println!("{}\n", up.table());
        started = Some(up);
    } else {
        println!("Using the system already running from {}.", state.display());
    }
    let mut child = tokio::process::Command::new(&program)
        .arg("--system")
        .arg(up::running_file(state))
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = shutdown.cancelled() => {
            let _ = child.kill().await;
            println!("Demo interrupted.");
            child.wait().await?
        }
    };
    if let Some(mut up) = started {
        println!("Stopping the system…");
        up.stop();
    }
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
