//! `food-demo --system RUNNING_JSON [--orders N]`: drives orders end to end through a running
//! food-delivery system (as `fractal demo` does), printing progress and each order's timeline,
//! or a summary for many orders. Exits 0 only if every order was delivered.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use food_group::v1::revenue_client::RevenueClient;
use food_group::v1::{CitiesRequest, CityTotals};
use food_system::demo::{Actors, Delivered, Progress, cities, quantile, timeline};
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

/// The group level's service, when the running system is a group of cities.
const GROUP: &str = "group/revenue";

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
    let cities = cities(&system);
    if cities.is_empty() {
        return Err(format!("`{}` runs no ordering/checkout service", system.name).into());
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    println!(
        "Driving {} order{} through `{}`{} with {} driver{}…",
        args.orders,
        if args.orders == 1 { "" } else { "s" },
        system.name,
        match cities.as_slice() {
            [only] if only.is_empty() => String::new(),
            all => format!(
                " in each of {}",
                all.iter()
                    .map(|c| c.trim_end_matches('.'))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        args.drivers,
        if args.drivers == 1 { "" } else { "s" }
    );
    let total = args.orders * cities.len();
    let verbose = total <= TIMELINES_UP_TO;
    // What the group had counted before this run, if the system is a group of cities.
    let group = match system.services.contains_key(GROUP) {
        true => Some(group_totals(&system).await?),
        false => None,
    };
    let progress = Arc::new(Progress::default());
    let per_city = futures::future::try_join_all(cities.iter().map(|city| {
        let (system, progress) = (&system, progress.clone());
        async move {
            let actors = Actors::connect_in(system, city, timeout).await?;
            let label = city.clone();
            let step = Arc::new(move |order_id: &str, step: &str| {
                let (placed, delivered) = progress.count(step);
                if verbose {
                    println!("  {label}order {order_id} {step}");
                } else if step == "delivered" && (delivered % 10 == 0 || delivered == total) {
                    println!("  {delivered}/{total} delivered ({placed} placed)");
                }
            });
            let delivered = actors.run(args.orders, args.drivers, step).await?;
            Ok::<_, food_system::demo::DemoError>((city.clone(), delivered))
        }
    }))
    .await?;

    let delivered: Vec<&food_system::demo::Delivered> =
        per_city.iter().flat_map(|(_, d)| d).collect();
    if verbose {
        for (city, orders) in &per_city {
            for order in orders {
                let o = order.status.order.clone().unwrap_or_default();
                println!(
                    "\nOrder {city}{} for {} ({} items, {:.2} {}), driver {}:",
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
    }
    let took: Vec<Duration> = delivered.iter().map(|d| d.took).collect();
    println!(
        "\n{}/{} orders delivered; placed → delivered p50 {:.2}s, p99 {:.2}s.",
        delivered.len(),
        total,
        quantile(&took, 0.5).as_secs_f64(),
        quantile(&took, 0.99).as_secs_f64()
    );
    if let Some(before) = group {
        group_summary(&system, &before, &per_city, timeout).await?;
    }
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

/// Each city's totals as the group level counts them.
async fn group_totals(
    system: &RunningSystem,
) -> Result<Vec<CityTotals>, food_system::demo::DemoError> {
    let channel = tonic::transport::Endpoint::from_shared(system.grpc(GROUP)?.to_owned())?
        .connect()
        .await?;
    Ok(RevenueClient::new(channel)
        .cities(CitiesRequest {})
        .await?
        .into_inner()
        .cities)
}

/// What the group level saw of each city: waits until its totals count every order the demo
/// delivered there on top of what it had counted `before` (the bridges up bring them), then
/// prints them; fails naming the city whose totals do not match.
async fn group_summary(
    system: &RunningSystem,
    before: &[CityTotals],
    per_city: &[(String, Vec<Delivered>)],
    timeout: Duration,
) -> Result<(), food_system::demo::DemoError> {
    let had = |city: &str| {
        before
            .iter()
            .find(|c| c.city == city)
            .cloned()
            .unwrap_or_default()
    };
    let expected: Vec<(String, u64, i64)> = per_city
        .iter()
        .map(|(city, delivered)| {
            let city = city.trim_end_matches('.').to_owned();
            let revenue: i64 = delivered
                .iter()
                .map(|d| d.status.order.as_ref().map_or(0, |o| o.total_cents))
                .sum();
            (city, delivered.len() as u64, revenue)
        })
        .collect();
    let deadline = std::time::Instant::now() + timeout;
    let seen = loop {
        let seen = group_totals(system).await?;
        let complete = expected.iter().all(|(city, orders, _)| {
            seen.iter().any(|c| {
                &c.city == city && c.orders_delivered >= had(city).orders_delivered + orders
            })
        });
        if complete || std::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("What the group level saw ({GROUP}), in all:");
    for city in &seen {
        println!(
            "  {:<10} {:>6} placed {:>6} delivered {:>10.2} revenue",
            city.city,
            city.orders_placed,
            city.orders_delivered,
            city.revenue_cents as f64 / 100.0
        );
    }
    for (city, orders, cents) in &expected {
        let had = had(city);
        let totals = seen.iter().find(|c| &c.city == city);
        let counted = totals.map(|t| {
            (
                t.orders_placed.saturating_sub(had.orders_placed),
                t.orders_delivered.saturating_sub(had.orders_delivered),
                t.revenue_cents - had.revenue_cents,
            )
        });
        if counted != Some((*orders, *orders, *cents)) {
            return Err(format!(
                "the group counted (placed, delivered, cents) {counted:?} more for {city}, not the {orders} orders ({cents} cents) the demo delivered there"
            )
            .into());
        }
    }
    Ok(())
}
