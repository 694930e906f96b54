//! What every service process shares: its configuration (hub, consumer, gRPC and admin
//! endpoints, logs), its start-up (hub, streams, admin endpoint) and the signal that tells it to
//! stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminConfig, Readiness};
use crate::config::{Problems, Validate, join};
use crate::consume::{Consumer, ConsumerConfig};
use crate::contract::AnyContract;
use crate::grpc::{GrpcConfig, GrpcServer};
use crate::hub::{Hub, HubConfig};
use crate::publish::Publisher;
use crate::telemetry::LogConfig;
use crate::wire;

/// Configuration of one service process.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// The subsystem the service belongs to (`ordering`), or its path in a larger system
    /// (`north.ordering`).
    pub subsystem: String,
    /// The service's name within it (`checkout`); also its durable consumer's default name.
    pub service: String,
    /// The subsystem's hub.
    pub hub: HubConfig,
    /// How events are consumed.
    #[serde(default)]
    pub consumer: ConsumerConfig,
    /// The gRPC endpoint, for services that answer commands and queries; absent for those
    /// that only react to events.
    #[serde(default)]
    pub grpc: Option<GrpcConfig>,
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
        problems.check(join(path, "subsystem"), wire::check_name(&self.subsystem));
        problems.check(join(path, "service"), wire::check_token(&self.service));
        self.hub.validate(&join(path, "hub"), problems);
        self.consumer.validate(&join(path, "consumer"), problems);
        if let Some(grpc) = &self.grpc {
            grpc.validate(&join(path, "grpc"), problems);
        }
        self.admin.validate(&join(path, "admin"), problems);
        self.log.validate(&join(path, "log"), problems);
    }
}

/// A running service process: connected to its hub (streams provisioned), its admin endpoint
/// up, until `shutdown` is cancelled.
#[derive(Debug)]
pub struct Service {
    /// Its configuration.
    pub config: ServiceConfig,
    /// Its subsystem's hub.
    pub hub: Hub,
    /// Cancelled when the process should stop.
    pub shutdown: CancellationToken,
    /// Where the admin endpoint listens.
    pub admin: SocketAddr,
    /// Set once [`Service::run`] serves; `/readyz` says "starting" until then.
    started: Arc<AtomicBool>,
    /// The gRPC server [`Service::run`] serves, if any.
    grpc: Option<GrpcServer>,
    /// What its program declares of it, once [`Subsystem::run`] chose it.
    declaration: Option<Declaration>,
}

impl Service {
    /// Connects to the hub (retrying until it answers), makes sure its streams exist as
    /// configured and serves the admin endpoint. `None` if `shutdown` came first.
    pub async fn start(
        config: ServiceConfig,
        shutdown: CancellationToken,
    ) -> Result<Option<Service>, ServiceError> {
        let Some(hub) = Hub::connect_with_retry(&config.hub, &shutdown).await? else {
            return Ok(None);
        };
        let started = Arc::new(AtomicBool::new(false));
        let readiness = Readiness::default().hub(&hub).check({
            let started = started.clone();
            move || {
                if started.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("the service is starting".into())
                }
            }
        });
        let admin = admin::serve(&config.admin, readiness, shutdown.clone())
            .await
            .map_err(ServiceError::Listen)?;
        tracing::info!(service = %config.source(), hub = %hub.name(), admin = %admin, "Service started.");
        Ok(Some(Service {
            config,
            hub,
            shutdown,
            admin,
            started,
            grpc: None,
            declaration: None,
        }))
    }

    /// A publisher that records this service as the source of its events and, when its
    /// program declares what it publishes, refuses other external events.
    pub fn publisher(&self) -> Publisher {
        let publisher = Publisher::new(&self.hub, &self.config.source());
        match &self.declaration {
            Some(declaration) => publisher.declaring(declaration.publishes),
            None => publisher,
        }
    }

    /// A consumer with this service's name and consumer settings.
    pub fn consumer(&self) -> Consumer {
        Consumer::new(
            &self.hub,
            &self.config.service,
            self.config.consumer.clone(),
        )
    }

    /// Serves `grpc` too when the service runs: commands and queries, on the configuration's
    /// `[grpc] listen`.
    pub fn serve(mut self, grpc: GrpcServer) -> Self {
        self.grpc = Some(grpc);
        self
    }

    /// Runs the service's consumer, and its gRPC server if it [serves](Service::serve) one,
    /// until shutdown; if one of them fails, stops the other and returns the error. A consumer
    /// without handlers is not run: a service may only answer over gRPC.
    pub async fn run(self, consumer: impl Into<Consumer>) -> Result<(), ServiceError> {
        let consumer = consumer.into();
        if !consumer.has_handlers() && self.grpc.is_none() {
            return Err(ServiceError::Config(format!(
                "service `{}` has neither handlers nor a gRPC server: nothing to run",
                self.config.source()
            )));
        }
        if let Some(declaration) = &self.declaration {
            declaration
                .check_consumer(&consumer)
                .map_err(|e| ServiceError::Config(format!("{}: {e}", self.config.source())))?;
        }
        let stop = self.shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(grpc) = self.grpc {
            let Some(config) = &self.config.grpc else {
                return Err(ServiceError::Config(format!(
                    "service `{}` answers commands and queries over gRPC; its configuration needs [grpc] listen",
                    self.config.source()
                )));
            };
            let (addr, server) = grpc
                .serve(config, stop.clone())
                .await
                .map_err(ServiceError::Listen)?;
            tracing::info!(service = %self.config.source(), grpc = %addr, "Serving gRPC.");
            tasks.spawn(async move {
                match server.await {
                    Ok(served) => served.map_err(ServiceError::Grpc),
                    Err(e) => Err(ServiceError::Panicked(e.to_string())),
                }
            });
        }
        if consumer.has_handlers() {
            let stop = stop.clone();
            tasks.spawn(async move { consumer.run(stop).await.map_err(ServiceError::from) });
        }
        self.started
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            // Whichever ends first, for whatever reason, the other must not go on alone.
            stop.cancel();
            let outcome = done
                .map_err(|e| ServiceError::Panicked(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = outcome
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
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

/// Why a service stopped for a reason other than shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Its configuration cannot work (a gRPC server without `[grpc] listen`, a `service` the
    /// program does not have).
    #[error("{0}")]
    Config(String),
    /// Telemetry could not be set up.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The hub refused or failed at start-up.
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// A view could not be opened.
    #[error(transparent)]
    View(#[from] crate::view::ViewError),
    /// The admin endpoint or the gRPC server cannot listen.
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("the gRPC server failed: {0}")]
    Grpc(#[source] tonic::transport::Error),
    /// The consumer stopped.
    #[error(transparent)]
    Consume(#[from] crate::consume::ConsumeError),
    /// A task of the service panicked.
    #[error("a task of the service panicked: {0}")]
    Panicked(String),
    /// What the service's own code failed with.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl ServiceError {
    /// Wraps an error of the service's own code.
    pub fn other(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ServiceError::Other(error.into())
    }
}

/// The prefix of the environment variables that override program `program`'s configuration:
/// its name in capitals, `-` as `_`, and a trailing `_` (`ORDERING_`, `FOOD_DEMO_`). The one
/// rule, for the programs and for the tools that set their variables (`fractal up`).
pub fn env_prefix(program: &str) -> String {
    format!("{}_", program.to_uppercase().replace('-', "_"))
}

/// What runs one service until shutdown: its `run`, boxed
/// (`|service| Box::pin(checkout::run(service))`).
pub type Body =
    fn(Service) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>>;

/// One service of a program: its name (a config's `service` key), what runs it, and the
/// external contracts it publishes and consumes. The declaration is what `<program> --describe`
/// prints and `fractal check` compares with the topology; the platform holds the code to it:
/// the service's publisher refuses other external events, and the service does not start if
/// its consumer handles external contracts other than those it consumes.
#[derive(Clone, Copy)]
pub struct Declaration {
    /// The service's name.
    pub name: &'static str,
    /// What runs it.
    pub run: Body,
    /// The external contracts it publishes.
    pub publishes: &'static [AnyContract],
    /// The external contracts it consumes.
    pub consumes: &'static [AnyContract],
}

impl std::fmt::Debug for Declaration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Declaration")
            .field("name", &self.name)
            .field("publishes", &self.publishes)
            .field("consumes", &self.consumes)
            .finish_non_exhaustive()
    }
}

impl Declaration {
    /// Service `name`, run by `run`, with no external contracts.
    pub const fn service(name: &'static str, run: Body) -> Self {
        Declaration {
            name,
            run,
            publishes: &[],
            consumes: &[],
        }
    }

    /// The external contracts it publishes.
    pub const fn publishes(mut self, contracts: &'static [AnyContract]) -> Self {
        self.publishes = contracts;
        self
    }

    /// The external contracts it consumes.
    pub const fn consumes(mut self, contracts: &'static [AnyContract]) -> Self {
        self.consumes = contracts;
        self
    }

    /// As `--describe` prints it.
    pub fn described(&self) -> DescribedService {
        let all =
            |contracts: &[AnyContract]| contracts.iter().map(AnyContract::described).collect();
        DescribedService {
            service: self.name.to_owned(),
            publishes: all(self.publishes),
            consumes: all(self.consumes),
        }
    }

    /// Whether `consumer` handles exactly the external contracts the service consumes: each
    /// declared one with a typed handler of that contract, no other external contract, and
    /// nothing untyped.
    fn check_consumer(&self, consumer: &Consumer) -> Result<(), String> {
        for declared in self.consumes {
            if !consumer.contracts().contains(declared) {
                return Err(format!(
                    "it declares it consumes {declared:?} but has no handler for it"
                ));
            }
        }
        let typed: Vec<&str> = consumer
            .contracts()
            .iter()
            .map(|c| c.event_type())
            .collect();
        if let Some(untyped) = consumer.event_types().find(|t| !typed.contains(t)) {
            return Err(format!(
                "it handles `{untyped}` untyped (`on_any`); a service its program declares \
                 handles each contract with `on`"
            ));
        }
        for registered in consumer.contracts() {
            let external = registered.scope() == crate::Scope::External;
            if external && !self.consumes.contains(registered) {
                return Err(format!(
                    "it handles {registered:?}, which is not among the external contracts it declares it consumes"
                ));
            }
        }
        Ok(())
    }
}

/// A service as its program describes it (`<program> --describe`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescribedService {
    /// The service's name.
    pub service: String,
    /// The external contracts it publishes.
    pub publishes: Vec<crate::contract::Described>,
    /// The external contracts it consumes.
    pub consumes: Vec<crate::contract::Described>,
}

/// A program and its services, declared once: [`main`] checks that a config's `service` is
/// one of these names and runs the one it names, and the program's name gives its
/// environment prefix ([`env_prefix`]).
///
/// ```no_run
/// # use fractal::service::{Declaration, Service, ServiceError, Subsystem};
/// use fractal::Contract;
/// use fractal::proto::Header as Order;
///
/// const ORDER_PLACED: Contract<Order> = Contract::external("order.placed");
///
/// async fn checkout(service: Service) -> Result<(), ServiceError> {
///     let consumer = service
///         .consumer()
///         .on(ORDER_PLACED, |_order, _event| async { Ok(()) });
///     service.run(consumer).await
/// }
///
/// const ORDERING: Subsystem = Subsystem {
///     program: "ordering",
///     services: &[
///         Declaration::service("checkout", |service| Box::pin(checkout(service)))
///             .consumes(&[ORDER_PLACED.any()]),
///     ],
/// };
///
/// fn main() -> std::process::ExitCode {
///     fractal::service::main(ORDERING)
/// }
/// ```
#[derive(Clone, Copy)]
pub struct Subsystem {
    /// The program's name.
    pub program: &'static str,
    /// Its services.
    pub services: &'static [Declaration],
}

impl std::fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subsystem")
            .field("program", &self.program)
            .field("services", &self.names())
            .finish()
    }
}

impl Subsystem {
    /// The services' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.services.iter().map(|d| d.name).collect()
    }

    /// Its services as `--describe` prints them.
    pub fn described(&self) -> Vec<DescribedService> {
        self.services.iter().map(Declaration::described).collect()
    }

    /// Runs the service `service`'s configuration names until shutdown.
    pub async fn run(self, mut service: Service) -> Result<(), ServiceError> {
        let name = service.config.service.clone();
        match self.services.iter().find(|d| d.name == name) {
            Some(declaration) => {
                service.declaration = Some(*declaration);
                (declaration.run)(service).await
            }
            None => Err(ServiceError::Config(format!(
                "`{name}` is not a service of {}",
                self.program
            ))),
        }
    }
}

/// The whole `main` of a service binary `program --config FILE [--check]`: loads the
/// [`ServiceConfig`] (defaults, the file, then variables prefixed by [`env_prefix`]), checks
/// that it names one of the subsystem's services, and with `--check` stops there; otherwise
/// sets up telemetry, starts the [`Service`] and runs it until SIGTERM or Ctrl-C.
pub fn main(subsystem: Subsystem) -> std::process::ExitCode {
    use std::process::ExitCode;

    let program = subsystem.program;
    let services = subsystem.names();
    let env_prefix = env_prefix(program);
    let env_prefix = env_prefix.as_str();
    let args = clap::Command::new(program)
        .about(format!(
            "Runs one of the services {} (the config's `service` key). Variables prefixed \
             `{env_prefix}` (with `__` for nesting) override the file.",
            services.join(", ")
        ))
        .arg(
            clap::Arg::new("describe")
                .long("describe")
                .action(clap::ArgAction::SetTrue)
                .exclusive(true)
                .help(
                    "Print the services and the external contracts each publishes and consumes, \
                     as JSON, and exit.",
                ),
        )
        .arg(
            clap::Arg::new("config")
                .long("config")
                .short('c')
                .required(true)
                .value_parser(clap::value_parser!(std::path::PathBuf))
                .help("The service's TOML configuration."),
        )
        .arg(
            clap::Arg::new("check")
                .long("check")
                .action(clap::ArgAction::SetTrue)
                .help("Validate the configuration and exit without connecting anywhere."),
        )
        .get_matches();
    if args.get_flag("describe") {
        let described = serde_json::json!({
            "program": program,
            "services": subsystem.described(),
        });
        println!("{described:#}");
        return ExitCode::SUCCESS;
    }
    let Some(file) = args.get_one::<std::path::PathBuf>("config") else {
        return ExitCode::from(2);
    };
    let config: ServiceConfig = match crate::config::load(&crate::config::Sources {
        file: Some(file),
        env_prefix,
    }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    if !services.contains(&config.service.as_str()) {
        let mut problems = crate::config::Problems::default();
        problems.add(
            "service",
            format!(
                "`{}` is not a service of {program}; expected one of {}",
                config.service,
                services.join(", ")
            ),
        );
        eprintln!(
            "{}: {}",
            file.display(),
            crate::config::ConfigError { problems }
        );
        return ExitCode::from(2);
    }
    if args.get_flag("check") {
        println!(
            "{}: service `{}` is valid.",
            file.display(),
            config.source()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), ServiceError> = runtime.block_on(async move {
        let _telemetry = crate::telemetry::init(&config.trace_name(), &config.log)?;
        let shutdown = shutdown_on_signal();
        let source = config.source();
        let Some(service) = Service::start(config, shutdown).await? else {
            return Ok(());
        };
        subsystem.run(service).await?;
        tracing::info!(service = %source, "Service stopped.");
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}
