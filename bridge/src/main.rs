//! `fractal-bridge --config bridge.toml [--check]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use fractal::config::{Sources, load};
use fractal_bridge::{BridgeConfig, Contracts};

// The relay allocates and frees small buffers at a high rate, where mimalloc costs a fraction
// of the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Relays selected external events from one hub to another, checking each against its contract.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The bridge's TOML configuration. Environment variables prefixed `BRIDGE_` (with `__`
    /// for nesting) override it.
    #[arg(long, short)]
    config: PathBuf,
    /// Validate the configuration (loading the contracts and finding every route's among
    /// them) and exit without connecting anywhere.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config: BridgeConfig = match load(&Sources {
        file: Some(&args.config),
        env_prefix: "BRIDGE_",
    }) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let folder = args.config.parent().unwrap_or(std::path::Path::new("."));
    let contracts = match config.load_contracts(folder) {
        Ok(contracts) => contracts,
        Err(e) => {
            eprintln!("{}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!(
            "{}: bridge `{}` from hub `{}` to hub `{}` with {} route{} is valid; contracts from {}.",
            args.config.display(),
            config.name,
            config.source.name,
            config.target.name,
            config.routes.len(),
            if config.routes.len() == 1 { "" } else { "s" },
            contracts
                .source()
                .map_or("the platform only".into(), |p| p.display().to_string())
        );
        return ExitCode::SUCCESS;
    }
    match run(config, contracts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fractal-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// One thread: the routes and both hub connections take turns, so each connection writes what
// the routes queued since its last turn in one system call, instead of one per relay as it
// would with its own thread picking up each publish as it is queued. To use more cores, run
// more bridges.
#[tokio::main(flavor = "current_thread")]
async fn run(config: BridgeConfig, contracts: Contracts) -> anyhow::Result<()> {
    let _telemetry = fractal::telemetry::init(&format!("bridge-{}", config.name), &config.log)
        .map_err(|e| anyhow::anyhow!(e))
        .context("cannot set up telemetry")?;
    let shutdown = fractal::service::shutdown_on_signal();
    fractal_bridge::run(config, contracts, shutdown).await
}
