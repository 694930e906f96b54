//! `food-chaos --system RUNNING_JSON [--rate N] [--duration-secs S] [--kill-every-ms K]`: orders
//! through a running food-delivery system while its services, bridges and hub nodes are killed
//! at random (run on demand; `scripts/chaos` runs it on hubs of three nodes). Prints what was
//! killed and the figures; exits 0 only if every order was delivered exactly once and no fault
//! was recorded.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use food_system::chaos::ChaosOptions;
use food_system::load::LoadOptions;

/// Kills services, bridges and hub nodes at random while orders flow.
#[derive(Debug, Parser)]
struct Args {
    /// The running system's description, as `fractal up` writes it.
    #[arg(long)]
    system: PathBuf,
    /// Orders placed per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// For how many seconds orders arrive.
    #[arg(long, default_value_t = 60.0)]
    duration_secs: f64,
    /// Drivers on shift.
    #[arg(long, default_value_t = 20)]
    drivers: usize,
    /// How often something is killed, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    kill_every_ms: u64,
    /// Seeds the choice of what to kill.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long to wait for the last orders after arrivals stop, in seconds.
    #[arg(long, default_value_t = 120)]
    drain_secs: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.duration_secs > 0.0)
        || args.drivers == 0
        || args.kill_every_ms == 0
    {
        eprintln!(
            "food-chaos: --rate, --duration-secs, --drivers and --kill-every-ms must be positive"
        );
        return ExitCode::from(2);
    }
    let options = ChaosOptions {
        load: LoadOptions {
            rate: args.rate,
            duration: Duration::from_secs_f64(args.duration_secs),
            drivers: args.drivers,
            restaurants: 5,
            customers: 500,
            poll: Duration::from_millis(200),
            wait: Duration::from_millis(2000),
            prep: Duration::ZERO,
            drain: Duration::from_secs(args.drain_secs),
            retries: 60,
            arriving: None,
        },
        kill_every: Duration::from_millis(args.kill_every_ms),
        seed: args.seed,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("food-chaos: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(food_system::chaos::run(&args.system, &options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("food-chaos: {e}");
            ExitCode::FAILURE
        }
    }
}
