//! The whole food-delivery system as it runs for real: one nats-server per hub, every service
//! and bridge as its own process with the checked-in configs, spans exported over OTLP to a
//! receiver in this test. Customers, restaurants and drivers act through the gRPC APIs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use food_contracts::v1::OrderStatus;
use food_ordering::v1::OrderStatusResponse;
use food_system::demo::Actors;
use food_system::v1::insights_client::InsightsClient;
use food_system::v1::{MenuViewsRequest, OrdersPerMinuteRequest};
use fractal_bridge::BridgeConfig;
use fractal_cli::running::{RunningProcess, RunningSystem};
use fractal_testkit::{
    NatsServer, OtlpReceiver, Process, eventually, free_port, http_get, metric, workspace_binary,
};

const ORDERS: usize = 20;
const DRIVERS: usize = 6;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Hubs, services and bridges, each its own process; stopped (and their logs shown, on
/// failure) when dropped.
struct System {
    _hubs: HashMap<String, NatsServer>,
    processes: Vec<(String, Process)>,
    running: RunningSystem,
    admins: HashMap<String, u16>,
    _logs: tempfile::TempDir,
}

impl System {
    fn start(
        hubs: &[&str],
        services: &[(&str, &str)],
        bridges: &str,
        otlp: Option<&str>,
    ) -> System {
        let logs = tempfile::tempdir().expect("a log folder");
        let hub_servers: HashMap<String, NatsServer> = hubs
            .iter()
            .map(|name| (name.to_string(), NatsServer::start()))
            .collect();
        let urls = |hub: &str| format!("[\"{}\"]", hub_servers[hub].url());
        let mut telemetry = vec![("RUST_LOG".to_owned(), "info".to_owned())];
        if let Some(endpoint) = otlp {
            telemetry.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.into()));
            telemetry.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
        }
        let mut processes = Vec::new();
        let mut running = RunningSystem {
            name: "food-delivery".into(),
            hubs: hub_servers
                .iter()
                .map(|(name, server)| (name.clone(), server.url()))
                .collect(),
            ..Default::default()
        };
        let mut admins = HashMap::new();
        for (subsystem, service) in services {
            let prefix = subsystem.to_uppercase();
            let (port, admin) = (free_port(), free_port());
            let mut env = telemetry.clone();
            env.extend([
                (format!("{prefix}_HUB__URLS"), urls(subsystem)),
                (
                    format!("{prefix}_GRPC__LISTEN"),
                    format!("127.0.0.1:{port}"),
                ),
                (
                    format!("{prefix}_ADMIN__LISTEN"),
                    format!("127.0.0.1:{admin}"),
                ),
            ]);
            let config = root().join(format!("subsystems/{subsystem}/config/{service}.toml"));
            let name = format!("{subsystem}-{service}");
            let process = Process::spawn(
                &name,
                &workspace_binary(subsystem),
                &["--config", config.to_str().expect("a UTF-8 path")],
                &env,
                logs.path(),
            );
            processes.push((name, process));
            running.services.insert(
                format!("{subsystem}/{service}"),
                RunningProcess {
                    hub: subsystem.to_string(),
                    grpc: Some(format!("http://127.0.0.1:{port}")),
                    admin: format!("127.0.0.1:{admin}"),
                    ..Default::default()
                },
            );
            admins.insert(format!("{subsystem}/{service}"), admin);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(bridges))
            .expect("the bridges folder")
            .map(|e| e.expect("an entry").path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a bridge config");
            let config: BridgeConfig = fractal::config::from_toml(&text).expect("a valid bridge");
            let mut env = telemetry.clone();
            env.extend([
                ("BRIDGE_SOURCE__URLS".to_owned(), urls(&config.source.name)),
                ("BRIDGE_TARGET__URLS".to_owned(), urls(&config.target.name)),
                ("BRIDGE_ADMIN__LISTEN".to_owned(), "127.0.0.1:0".into()),
            ]);
            let name = format!("bridge-{}", config.name);
            let process = Process::spawn(
                &name,
                &workspace_binary("fractal-bridge"),
                &["--config", file.to_str().expect("a UTF-8 path")],
                &env,
                logs.path(),
            );
            processes.push((name, process));
        }
        System {
            _hubs: hub_servers,
            processes,
            running,
            admins,
            _logs: logs,
        }
    }

    async fn actors(&self) -> Actors {
        Actors::connect(&self.running, Duration::from_secs(60))
            .await
            .expect("the BFFs answer")
    }

    /// Stops every process with SIGTERM; each must exit cleanly.
    fn stop(&mut self) {
        for (name, process) in &mut self.processes {
            assert!(
                process.terminate(),
                "{name} did not stop cleanly:\n{}",
                process.log()
            );
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, process) in &self.processes {
                let log = process.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("----- {name} (last lines) -----");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

const SERVICES: [(&str, &str); 9] = [
    ("restaurant", "menus"),
    ("restaurant", "kitchen"),
    ("restaurant", "gateway"),
    ("ordering", "checkout"),
    ("ordering", "gateway"),
    ("delivery", "drivers"),
    ("delivery", "dispatch"),
    ("delivery", "gateway"),
    ("system", "insights"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_orders_cross_every_hub_and_each_is_one_trace() {
    let (receiver, endpoint) = OtlpReceiver::start().await;
    let mut system = System::start(
        &["restaurant", "ordering", "delivery", "system"],
        &SERVICES,
        "subsystems/system/bridges",
        Some(&endpoint),
    );
    let started = Instant::now();
    let delivered = system
        .actors()
        .await
        .run(ORDERS, DRIVERS, Arc::new(|_: &str, _: &str| {}))
        .await
        .expect("every order delivered");
    eprintln!("{ORDERS} orders delivered in {:?}", started.elapsed());
    let orders: Vec<OrderStatusResponse> = delivered.into_iter().map(|d| d.status).collect();

    // Every customer's timeline shows every step, in order.
    for response in &orders {
        let steps: Vec<OrderStatus> = response.timeline.iter().map(|s| s.status()).collect();
        assert_eq!(
            steps,
            [
                OrderStatus::Placed,
                OrderStatus::Accepted,
                OrderStatus::Ready,
                OrderStatus::DriverAssigned,
                OrderStatus::PickedUp,
                OrderStatus::Delivered
            ]
        );
        let times: Vec<_> = response
            .timeline
            .iter()
            .map(|s| food_contracts::time(s.at.as_ref()))
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert!(
            response
                .order
                .as_ref()
                .and_then(|o| o.driver.as_ref())
                .is_some()
        );
    }

    // Insights, added at the system hub without touching a producer, counted every fact.
    let insights = InsightsClient::connect(
        system
            .running
            .grpc("system/insights")
            .expect("insights serves gRPC")
            .to_owned(),
    )
    .await
    .expect("insights answers");
    eventually(
        Duration::from_secs(30),
        "insights to count every view and order",
        || {
            let mut insights = insights.clone();
            async move {
                let views = insights
                    .menu_views(MenuViewsRequest {})
                    .await
                    .ok()?
                    .into_inner();
                let per_minute = insights
                    .orders_per_minute(OrdersPerMinuteRequest { minutes: 0 })
                    .await
                    .ok()?
                    .into_inner();
                let orders: u64 = per_minute.minutes.iter().map(|m| m.orders).sum();
                let r1 = views
                    .restaurants
                    .iter()
                    .find(|r| r.restaurant_id == "r-1")?;
                (r1.views == ORDERS as u64 && orders == ORDERS as u64).then_some(())
            }
        },
    )
    .await;
    let metrics = http_get(("127.0.0.1", system.admins["system/insights"]), "/metrics")
        .await
        .expect("metrics served");
    assert_eq!(
        metric(
            &metrics,
            "food_insights_menu_views_total{restaurant_id=\"r-1\"}"
        ),
        Some(ORDERS as f64),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "food_insights_orders_placed_total"),
        Some(ORDERS as f64)
    );

    // One order is one trace: its checkout, the relays, and the restaurant's and delivery's
    // handling all share its trace id.
    let order_id = orders[0].order.as_ref().expect("an order").order_id.clone();
    let services = eventually(Duration::from_secs(30), "the order's spans", || {
        let spans = receiver.spans();
        let order_id = order_id.clone();
        async move {
            let checkout = spans.iter().find(|s| {
                s.name == "checkout" && s.attributes.get("order_id") == Some(&order_id)
            })?;
            let services: BTreeSet<String> = spans
                .iter()
                .filter(|s| s.trace_id == checkout.trace_id)
                .map(|s| s.service().to_owned())
                .collect();
            let wanted = [
                "ordering-checkout",
                "ordering-gateway",
                "bridge-ordering-to-system",
                "bridge-system-to-restaurant",
                "restaurant-gateway",
                "restaurant-kitchen",
                "bridge-restaurant-to-system",
                "bridge-system-to-ordering",
                "bridge-system-to-delivery",
                "delivery-gateway",
                "delivery-dispatch",
                "delivery-drivers",
                "bridge-delivery-to-system",
            ];
            wanted
                .iter()
                .all(|w| services.contains(*w))
                .then_some(services)
        }
    })
    .await;
    let subsystems: BTreeSet<&str> = services
        .iter()
        .filter_map(|s| s.split_once('-').map(|(first, _)| first))
        .filter(|s| *s != "bridge")
        .collect();
    assert!(subsystems.len() >= 3, "{subsystems:?}");

    system.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_bridges_join_the_subsystems_without_a_system_hub() {
    let services: Vec<(&str, &str)> = SERVICES
        .iter()
        .copied()
        .filter(|(subsystem, _)| *subsystem != "system")
        .collect();
    let mut system = System::start(
        &["restaurant", "ordering", "delivery"],
        &services,
        "subsystems/system/bridges-direct",
        None,
    );
    let orders = system
        .actors()
        .await
        .run(3, 2, Arc::new(|_: &str, _: &str| {}))
        .await
        .expect("every order delivered");
    assert!(orders.iter().all(|o| o.status.timeline.len() == 6));
    system.stop();
}
