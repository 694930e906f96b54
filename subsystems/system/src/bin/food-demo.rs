//! `food-demo --system RUNNING_JSON [--orders N]`: drives orders end to end through a running
//! food-delivery system (as `fractal demo` does), printing progress and each order's timeline,
//! or a summary for many orders. Exits 0 only if every order was delivered.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use food_system::demo::{Actors, Progress, quantile, timeline};
use fractal_cli::running::RunningSystem;

/// Drives orders end to end through a running food-delivery system.
#[derive(Debug, Parser)]
struct Args {
    /// The running system's description, as `fractal up` writes it.
    #[arg(long)]
    system: PathBuf,
    /// How many orders to place at once.
    #[arg(long, default_value_t = 5)]
    orders: usize,
    /// How many drivers go on shift.
    #[arg(long, default_value_t = 4)]
    drivers: usize,
    /// Seconds to wait for any one step before giving up.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

/// Above this many orders, a summary replaces the timelines.
const TIMELINES_UP_TO: usize = 10;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("food-demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("food-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), food_system::demo::DemoError> {
    let system = RunningSystem::load(&args.system)?;
    let actors = Actors::connect(&system, Duration::from_secs(args.timeout_secs)).await?;
    println!(
        "Driving {} order{} through `{}` with {} driver{}…",
        args.orders,
        if args.orders == 1 { "" } else { "s" },
        system.name,
        args.drivers,
        if args.drivers == 1 { "" } else { "s" }
    );
    let progress = Arc::new(Progress::default());
    let total = args.orders;
    let verbose = total <= TIMELINES_UP_TO;
    let step = {
        let progress = progress.clone();
        Arc::new(move |order_id: &str, step: &str| {
            let (placed, delivered) = progress.count(step);
            if verbose {
                println!("  order {order_id} {step}");
            } else if step == "delivered" && (delivered % 10 == 0 || delivered == total) {
                println!("  {delivered}/{total} delivered ({placed} placed)");
            }
        })
    };
    let delivered = actors.run(args.orders, args.drivers, step).await?;

    if verbose {
        for order in &delivered {
            let o = order.status.order.clone().unwrap_or_default();
            println!(
                "\nOrder {} for {} ({} items, {:.2} {}), driver {}:",
                o.order_id,
                o.customer_id,
                o.lines.iter().map(|l| l.quantity).sum::<u32>(),
                o.total_cents as f64 / 100.0,
                o.currency,
                o.driver.map(|d| d.name).unwrap_or_default()
            );
            print!("{}", timeline(order));
        }
    }
    let took: Vec<Duration> = delivered.iter().map(|d| d.took).collect();
    println!(
        "\n{}/{} orders delivered; placed → delivered p50 {:.2}s, p99 {:.2}s.",
        delivered.len(),
        total,
        quantile(&took, 0.5).as_secs_f64(),
        quantile(&took, 0.99).as_secs_f64()
    );
    println!("Events per hub:");
    for (hub, url) in &system.hubs {
        let config = system
            .hub_config(hub)
            .unwrap_or_else(|| fractal::HubConfig::local(hub, url));
        let count = match fractal::Hub::connect(&config).await {
            Ok(connected) => match connected
                .jetstream()
                .get_stream(connected.events_stream())
                .await
            {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .map(|i| i.state.messages.to_string())
                    .unwrap_or_else(|e| format!("unknown ({e})")),
                Err(e) => format!("unknown ({e})"),
            },
            Err(e) => format!("unknown ({e})"),
        };
        println!("  {hub:<12} {count:>8}  ({url})");
    }
    Ok(())
}
