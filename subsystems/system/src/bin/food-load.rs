//! `food-load --system RUNNING_JSON [--rate N] [--duration-secs S] …`: an open-loop load on a
//! running food-delivery system (a benchmark, run on demand; `scripts/load` runs it on release
//! builds). Prints throughput, placed → delivered latency, gRPC latencies, CPU per order of
//! every process and hub, and whether the system kept up. Exits 0 only if every order was
//! delivered.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use food_system::load::LoadOptions;
use fractal_cli::running::RunningSystem;

/// Brings an open-loop load of orders to a running food-delivery system.
#[derive(Debug, Parser)]
struct Args {
    /// The running system's description, as `fractal up` writes it.
    #[arg(long)]
    system: PathBuf,
    /// Orders placed per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// For how many seconds orders arrive.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Drivers on shift.
    #[arg(long, default_value_t = 100)]
    drivers: usize,
    /// Restaurants, each with its menu.
    #[arg(long, default_value_t = 10)]
    restaurants: usize,
    /// Customers placing orders in turn.
    #[arg(long, default_value_t = 1000)]
    customers: usize,
    /// How often each kitchen display asks for tickets (and each driver's app for work, with
    /// --wait-ms 0), in milliseconds.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// How long each driver's `ListAssigned` waits for work, in milliseconds (a long poll, as
    /// a driver's app would); 0 polls every --poll-ms instead.
    #[arg(long, default_value_t = 5000)]
    wait_ms: u64,
    /// How long a kitchen takes to prepare an order, in milliseconds.
    #[arg(long, default_value_t = 0)]
    prep_ms: u64,
    /// How long to wait for the last orders after arrivals stop, in seconds.
    #[arg(long, default_value_t = 60)]
    drain_secs: u64,
    /// How often a customer tries again after a failed call (half a second apart).
    #[arg(long, default_value_t = 0)]
    retries: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.duration_secs > 0.0) || args.drivers == 0 {
        eprintln!("food-load: --rate, --duration-secs and --drivers must be positive");
        return ExitCode::from(2);
    }
    let options = LoadOptions {
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration_secs),
        drivers: args.drivers,
        restaurants: args.restaurants,
        customers: args.customers,
        poll: Duration::from_millis(args.poll_ms),
        wait: Duration::from_millis(args.wait_ms),
        prep: Duration::from_millis(args.prep_ms),
        drain: Duration::from_secs(args.drain_secs),
        retries: args.retries,
        arriving: None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("food-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let system = RunningSystem::load(&args.system)?;
        food_system::load::run(&system, &options).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("food-load: {e}");
            ExitCode::FAILURE
        }
    }
}
