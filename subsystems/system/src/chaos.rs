//! Chaos: orders flow through a running food-delivery system while its services, bridges and
//! hub nodes are killed with SIGKILL at random, one every interval; `fractal up` starts each
//! again. A hub node is killed only while all of its hub's nodes are up, so every hub keeps
//! its quorum. Afterwards every order placed must have been delivered, each exactly once in the
//! lake, no hub may hold a fault, and the views checked must hold what the lake says.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use fractal_cli::running::RunningSystem;
use futures::StreamExt as _;

use crate::demo::DemoError;
use crate::load::{self, LoadOptions};

/// What chaos to bring.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The orders.
    pub load: LoadOptions,
    /// How often something is killed.
    pub kill_every: Duration,
    /// Seeds the choice of what to kill, so a run can be repeated.
    pub seed: u64,
}

/// What was killed, by kind.
#[derive(Debug, Default)]
struct Kills(BTreeMap<&'static str, usize>);

/// Runs the orders and the killing on the system `fractal up` describes in `running`; prints
/// what was killed and the figures; fails naming what did not hold.
pub async fn run(running: &Path, options: &ChaosOptions) -> Result<(), DemoError> {
    let system = RunningSystem::load(running)?;
    let state = running.parent().unwrap_or(Path::new(".")).to_path_buf();
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // The killing starts with the orders, once the menus are out and the drivers on shift.
    let arriving = Arc::new(tokio::sync::Notify::new());
    let killer = tokio::spawn({
        let (running, done, options) = (running.to_path_buf(), done.clone(), options.clone());
        let arriving = arriving.clone();
        async move {
            arriving.notified().await;
            kill(&running, &state, &options, &done).await
        }
    });
    let load = LoadOptions {
        arriving: Some(arriving),
        ..options.load.clone()
    };
    let outcome = load::run(&system, &load).await;
    done.store(true, Ordering::Relaxed);
    let kills = killer.await.unwrap_or_default();
    let outcome = outcome?;
    let took = started.elapsed();

    // Every hub node back and current before the lake is read: one killed last may still be
    // rejoining its cluster, and a read meanwhile would time out rather than fail the checks.
    let system = RunningSystem::load(running)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for monitors in system.monitors.values() {
        while !all_healthy(monitors).await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Views follow the lake: read them once every consumer has handled what the lake holds
    // (a service restarted late may still be catching up).
    for hub in system.hubs.keys() {
        let config = system.hub_config(hub).ok_or("a hub of the system")?;
        let connected = fractal::Hub::connect(&config).await?;
        while !caught_up(&connected).await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // The lake: one `order.delivered` per order, for every order placed.
    let delivered = delivered_per_order(&system).await?;
    let twice: Vec<&String> = delivered
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    let missing = outcome
        .placed
        .iter()
        .filter(|id| !delivered.contains_key(*id))
        .count();
    let mut events = 0;
    let mut faults = BTreeMap::new();
    for hub in system.hubs.keys() {
        let config = system.hub_config(hub).ok_or("a hub of the system")?;
        let connected = fractal::Hub::connect(&config).await?;
        for (stream, into) in [
            (connected.events_stream().to_owned(), None),
            (connected.faults_stream().to_owned(), Some(&mut faults)),
        ] {
            let mut stream = connected.jetstream().get_stream(&stream).await?;
            let messages = stream.info().await?.state.messages;
            match into {
                Some(faults) => {
                    faults.insert(hub.clone(), messages);
                }
                None => events += messages,
            }
        }
    }
    let restarts: u32 = system
        .services
        .values()
        .chain(system.bridges.values())
        .map(|p| p.restarts)
        .sum();
    println!("\nChaos on `{}` for {took:.0?}:", system.name);
    println!(
        "  killed: {} ({})",
        kills.0.values().sum::<usize>(),
        kills
            .0
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  services and bridges started again: {restarts}");
    println!(
        "  orders placed {}, delivered {}, missing {missing}, delivered twice {}",
        outcome.placed.len(),
        delivered.len(),
        twice.len()
    );
    println!("  events stored on all hubs: {events}");
    println!(
        "  faults: {}",
        faults
            .iter()
            .map(|(hub, n)| format!("{hub} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let differences = views_against_lake(&system).await?;
    println!(
        "  views (orders, deliveries, deliveries_by_driver) differing from the lake: {} entries",
        differences.len()
    );
    for line in differences.iter().take(10) {
        println!("    {line}");
    }
    let faulted: u64 = faults.values().sum();
    if missing > 0 || !twice.is_empty() || faulted > 0 || !differences.is_empty() {
        return Err(format!(
            "{missing} orders not delivered, {} delivered twice, {faulted} faults, {} view \
             entries differing from the lake",
            twice.len(),
            differences.len()
        )
        .into());
    }
    Ok(())
}

/// How many `order.delivered` events the ordering hub's lake holds for each order.
async fn delivered_per_order(system: &RunningSystem) -> Result<HashMap<String, usize>, DemoError> {
    let mut counts = HashMap::new();
    let types = [food_contracts::events::ORDER_DELIVERED.event_type()];
    for event in lake(system, "ordering", &types).await? {
        *counts.entry(event.key.clone()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Every event of `types` in `hub`'s lake, in the order it was stored.
async fn lake(
    system: &RunningSystem,
    hub: &str,
    types: &[&str],
) -> Result<Vec<fractal::Event>, DemoError> {
    let hub = connect(system, hub).await?;
    let stream = hub.jetstream().get_stream(hub.events_stream()).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: types
                .iter()
                .map(|t| fractal::wire::event_filter(t))
                .collect(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut events = Vec::new();
    // Until the stream has nothing more for a while: everything is stored by now.
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let message = message?;
        events.push(fractal::Event::decode(
            &message.subject,
            message.headers.as_ref(),
            message.payload.clone(),
        )?);
    }
    Ok(events)
}

/// Compares two views with what their lakes say, folding each key's events in stream order
/// the way the view's service does: checkout's `orders` (every snapshot merged) and the
/// drivers' `deliveries` (the furthest status wins), with its index of deliveries not yet
/// delivered. Returns one line per entry that differs, is missing or should not be there.
async fn views_against_lake(system: &RunningSystem) -> Result<Vec<String>, DemoError> {
    use food_contracts::v1::Order;
    use food_delivery::events::{DELIVERY_ASSIGNED, DELIVERY_DELIVERED, DELIVERY_PICKED_UP};
    use food_delivery::v1::{Delivery, DeliveryStatus};
    use food_ordering::events::{ORDER_PROGRESSED, ORDER_SUBMITTED};

    let mut differences = Vec::new();

    let mut orders: BTreeMap<String, Order> = BTreeMap::new();
    let types = [ORDER_SUBMITTED.event_type(), ORDER_PROGRESSED.event_type()];
    for event in lake(system, "ordering", &types).await? {
        let order = if event.event_type == ORDER_SUBMITTED.event_type() {
            ORDER_SUBMITTED.decode(&event)?.order
        } else {
            ORDER_PROGRESSED.decode(&event)?.order
        };
        if let Some(order) = order {
            orders
                .entry(order.order_id.clone())
                .and_modify(|known| known.merge(&order))
                .or_insert(order);
        }
    }
    let hub = connect(system, "ordering").await?;
    let view = fractal::view::View::<Order>::open(&hub, "orders").await?;
    compare("orders", &orders, view.list().await?, &mut differences);

    let mut deliveries: BTreeMap<String, Delivery> = BTreeMap::new();
    let types = [
        DELIVERY_ASSIGNED.event_type(),
        DELIVERY_PICKED_UP.event_type(),
        DELIVERY_DELIVERED.event_type(),
    ];
    for event in lake(system, "delivery", &types).await? {
        let delivery: Delivery = event.payload()?;
        match deliveries.get(&delivery.order_id) {
            Some(known) if known.status >= delivery.status => {}
            _ => {
                deliveries.insert(delivery.order_id.clone(), delivery);
            }
        }
    }
    let hub = connect(system, "delivery").await?;
    let view = fractal::view::View::<Delivery>::open(&hub, "deliveries").await?;
    compare(
        "deliveries",
        &deliveries,
        view.list().await?,
        &mut differences,
    );
    let open: BTreeMap<String, Delivery> = deliveries
        .into_values()
        .filter(|d| d.status() != DeliveryStatus::Delivered)
        .map(|d| (fractal::view::key(&[&d.driver_id, &d.order_id]), d))
        .collect();
    let index = fractal::view::View::<Delivery>::open(&hub, "deliveries_by_driver").await?;
    compare(
        "deliveries_by_driver",
        &open,
        index.list().await?,
        &mut differences,
    );
    Ok(differences)
}

async fn connect(system: &RunningSystem, hub: &str) -> Result<fractal::Hub, DemoError> {
    let config = system
        .hub_config(hub)
        .ok_or_else(|| format!("the running system has no `{hub}` hub"))?;
    Ok(fractal::Hub::connect(&config).await?)
}

/// Adds a line to `differences` for each key where `view` and `lake` disagree.
fn compare<T: PartialEq + std::fmt::Debug>(
    name: &str,
    lake: &BTreeMap<String, T>,
    view: Vec<(String, fractal::view::Record<T>)>,
    differences: &mut Vec<String>,
) {
    let view: BTreeMap<String, T> = view.into_iter().map(|(k, r)| (k, r.value)).collect();
    for (key, expected) in lake {
        match view.get(key) {
            Some(found) if found == expected => {}
            Some(found) => differences.push(format!(
                "view {name}, `{key}`: {found:?}, the lake says {expected:?}"
            )),
            None => differences.push(format!("view {name}, `{key}`: missing")),
        }
    }
    for key in view.keys().filter(|k| !lake.contains_key(*k)) {
        differences.push(format!("view {name}, `{key}`: not in the lake"));
    }
}

/// Kills something every interval until `done`.
async fn kill(running: &Path, state: &Path, options: &ChaosOptions, done: &AtomicBool) -> Kills {
    let mut kills = Kills::default();
    let mut random = options.seed.max(1);
    let started = Instant::now();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(options.kill_every).await;
        if done.load(Ordering::Relaxed) {
            break;
        }
        let Ok(system) = RunningSystem::load(running) else {
            continue;
        };
        let mut candidates: Vec<(&'static str, String, u32)> = Vec::new();
        for (name, p) in &system.services {
            if p.state.is_empty() || p.state == "running" {
                candidates.push(("services", name.clone(), p.pid));
            }
        }
        for (name, p) in &system.bridges {
            if p.state.is_empty() || p.state == "running" {
                candidates.push(("bridges", format!("bridge {name}"), p.pid));
            }
        }
        for (hub, monitors) in &system.monitors {
            if monitors.len() < 3 || !all_healthy(monitors).await {
                continue;
            }
            for i in 0..monitors.len() {
                let node = format!("{hub}-{i}");
                if let Some(pid) = pid_of(&state.join("hubs").join(format!("{node}.conf"))) {
                    candidates.push(("hub nodes", format!("hub node {node}"), pid));
                }
            }
        }
        if candidates.is_empty() {
            continue;
        }
        // xorshift64: enough to pick, and repeatable from the seed.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let (kind, name, pid) = &candidates[(random % candidates.len() as u64) as usize];
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if killed {
            println!(
                "{:>6.1}s  killed {name} (pid {pid})",
                started.elapsed().as_secs_f64()
            );
            *kills.0.entry(kind).or_insert(0) += 1;
        }
    }
    kills
}

/// Whether every durable consumer of the hub's events has handled all it was given: nothing
/// waiting, nothing unacknowledged.
async fn caught_up(hub: &fractal::Hub) -> bool {
    use futures::StreamExt as _;
    let Ok(stream) = hub.jetstream().get_stream(hub.events_stream()).await else {
        return false;
    };
    let mut consumers = stream.consumers();
    while let Some(info) = consumers.next().await {
        match info {
            Ok(info) if info.config.durable_name.is_some() => {
                if info.num_pending > 0 || info.num_ack_pending > 0 {
                    return false;
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Whether every node answers healthy on its monitoring endpoint.
async fn all_healthy(monitors: &[String]) -> bool {
    for monitor in monitors {
        if !fractal_cli::running::answers_ok(monitor, "/healthz").await {
            return false;
        }
    }
    true
}

/// The process running a server with the configuration `conf`.
fn pid_of(conf: &Path) -> Option<u32> {
    let conf = conf.to_string_lossy();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(conf.as_ref())
            .then_some(pid)
    })
}
