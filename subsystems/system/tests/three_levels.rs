//! Three levels as `fractal up` runs them from `subsystems/group/fractal.toml`: two cities,
//! `north` and `south`, each the food-delivery system unchanged (4 hubs, 9 services, 6
//! bridges), and the group above them (its hub, `revenue`, and a bridge up from each city's
//! system hub). Spans go over OTLP to a receiver in this test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use food_group::v1::CitiesRequest;
use food_group::v1::revenue_client::RevenueClient;
use food_system::demo::{Actors, Delivered};
use fractal_cli::running::RunningSystem;
use fractal_testkit::{OtlpReceiver, eventually, nats_server_binary, workspace_binary};

const ORDERS: usize = 8;
const DRIVERS: usize = 4;

fn group() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../group/fractal.toml")
}

/// One tree at a time: each runs dozens of processes.
async fn one_tree_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// A port offset at which the group's own ports and both cities' are free.
fn free_offset() -> u16 {
    let ports = [4300u16, 8300, 9301, 50101, 9401, 9402];
    let cities = [1000u16, 2000]
        .iter()
        .flat_map(|city| [4222u16, 4225, 8222, 8225, 9161, 9206, 50061, 50091].map(|p| p + city));
    let all: Vec<u16> = ports.into_iter().chain(cities).collect();
    (0..40)
        .map(|i| 9000 + i * 100)
        .find(|offset| {
            all.iter()
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", p + offset)).is_ok())
        })
        .expect("a free port offset")
}

/// `fractal up` of the group topology (or part of it), stopped with SIGTERM when dropped.
struct Tree {
    up: Child,
    state: tempfile::TempDir,
}

impl Tree {
    fn up(args: &[&str], otlp: &str) -> Tree {
        let state = tempfile::tempdir().expect("a state folder");
        let offset = free_offset().to_string();
        let log = std::fs::File::create(state.path().join("up.log")).expect("a log file");
        let up = Command::new(workspace_binary("fractal"))
            .arg("up")
            .args(args)
            .arg("--topology")
            .arg(group())
            .args(["--port-offset", &offset, "--state"])
            .arg(state.path())
            .env("NATS_SERVER_BIN", nats_server_binary())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .stdout(Stdio::from(log.try_clone().expect("the log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("fractal up starts");
        let mut tree = Tree { up, state };
        let deadline = Instant::now() + Duration::from_secs(180);
        while !tree.state.path().join("running.json").is_file() {
            assert!(
                tree.up.try_wait().expect("waits").is_none(),
                "fractal up stopped:\n{}",
                tree.log()
            );
            assert!(
                Instant::now() < deadline,
                "the tree did not come up:\n{}",
                tree.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        tree
    }

    /// What `fractal up` said.
    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("up.log")).unwrap_or_default()
    }

    fn running(&self) -> RunningSystem {
        RunningSystem::load(&self.state.path().join("running.json")).expect("running.json")
    }

    /// Stops the tree as Ctrl-C would; it must stop cleanly.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.up.id().to_string()])
            .status();
        let status = self.up.wait().expect("fractal up exits");
        assert!(status.success(), "fractal up stopped with {status}");
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Ok(None) = self.up.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.up.id().to_string()])
                .status();
            let _ = self.up.wait();
        }
    }
}

/// Drives `ORDERS` orders through the city whose services are named `city.…`.
async fn orders_in(running: &RunningSystem, city: &str) -> Vec<Delivered> {
    Actors::connect_in(running, &format!("{city}."), Duration::from_secs(60))
        .await
        .expect("the city's BFFs answer")
        .run(ORDERS, DRIVERS, Arc::new(|_: &str, _: &str| {}))
        .await
        .unwrap_or_else(|e| panic!("every order delivered in {city}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_in_both_cities_reach_the_group_once_each_in_one_trace_per_order() {
    let _turn = one_tree_at_a_time().await;
    let (receiver, endpoint) = OtlpReceiver::start().await;
    let tree = tokio::task::block_in_place(|| Tree::up(&[], &endpoint));
    let running = tree.running();
    assert_eq!(running.hubs.len(), 9, "{:?}", running.hubs.keys());
    assert_eq!(running.services.len(), 19);
    assert_eq!(running.bridges.len(), 14);

    let (north, south) = tokio::join!(orders_in(&running, "north"), orders_in(&running, "south"));

    // The group counts each city's orders once, and what the delivered ones brought in.
    let revenue = RevenueClient::connect(
        running
            .grpc("group/revenue")
            .expect("revenue serves gRPC")
            .to_owned(),
    )
    .await
    .expect("revenue answers");
    let cents = |delivered: &[Delivered]| -> i64 {
        delivered
            .iter()
            .map(|d| d.status.order.as_ref().map_or(0, |o| o.total_cents))
            .sum()
    };
    let expected = [("north", cents(&north)), ("south", cents(&south))];
    let cities = eventually(
        Duration::from_secs(60),
        "the group to count both cities",
        || {
            let mut revenue = revenue.clone();
            async move {
                let cities = revenue
                    .cities(CitiesRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .cities;
                expected
                    .iter()
                    .all(|(city, _)| {
                        cities
                            .iter()
                            .any(|c| c.city == *city && c.orders_delivered >= ORDERS as u64)
                    })
                    .then_some(cities)
            }
        },
    )
    .await;
    // Let any late duplicate arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cities = revenue
        .clone()
        .cities(CitiesRequest {})
        .await
        .map(|r| r.into_inner().cities)
        .unwrap_or(cities);
    for (city, cents) in expected {
        let totals = cities
            .iter()
            .find(|c| c.city == city)
            .unwrap_or_else(|| panic!("no totals for {city}: {cities:?}"));
        assert_eq!(totals.orders_placed, ORDERS as u64, "{totals:?}");
        assert_eq!(totals.orders_delivered, ORDERS as u64, "{totals:?}");
        assert_eq!(totals.revenue_cents, cents, "{totals:?}");
    }
    assert_eq!(cities.len(), 2, "{cities:?}");

    // One order is one trace, from the city's checkout through its subsystems and its
    // system hub up to the group's service.
    let order_id = north[0]
        .status
        .order
        .as_ref()
        .expect("an order")
        .order_id
        .clone();
    let services = eventually(Duration::from_secs(30), "the order's spans", || {
        let spans = receiver.spans();
        let order_id = order_id.clone();
        async move {
            let checkout = spans.iter().find(|s| {
                s.service() == "north.ordering-checkout"
                    && s.attributes.get("order_id") == Some(&order_id)
            })?;
            let services: BTreeSet<String> = spans
                .iter()
                .filter(|s| s.trace_id == checkout.trace_id)
                .map(|s| s.service().to_owned())
                .collect();
            [
                "north.ordering-gateway",
                "bridge-north-ordering-to-system",
                "north.restaurant-kitchen",
                "north.delivery-dispatch",
                "bridge-north-to-group",
                "group-revenue",
            ]
            .iter()
            .all(|w| services.contains(*w))
            .then_some(services)
        }
    })
    .await;
    assert!(
        services.iter().all(|s| !s.starts_with("south.")),
        "a north order stays in north: {services:?}"
    );

    // At the group level, an event shows its whole way: the city's subsystem, the city's
    // system hub, the group. The tools take path names.
    let export = tokio::task::block_in_place(|| {
        Command::new(workspace_binary("fractal"))
            .args(["lake", "export", "group", "--topology"])
            .arg(group())
            .arg("--state")
            .arg(tree.state.path())
            .output()
            .expect("fractal lake export runs")
    });
    assert!(export.status.success(), "{export:?}");
    let first: serde_json::Value = serde_json::from_slice(
        export
            .stdout
            .split(|b| *b == b'\n')
            .next()
            .expect("an event"),
    )
    .expect("a JSON line");
    let origin = first["origin"].as_str().unwrap_or_default();
    let city = origin.split('.').next().unwrap_or_default();
    assert_eq!(
        first["path"],
        serde_json::json!([
            format!("{city}.ordering"),
            format!("{city}.system"),
            "group"
        ]),
        "{first}"
    );
    let tail = tokio::task::block_in_place(|| {
        Command::new(workspace_binary("fractal"))
            .args(["tail", "north.ordering", "--type", "order.placed", "--all"])
            .args(["--count", "1", "--topology"])
            .arg(group())
            .arg("--state")
            .arg(tree.state.path())
            .output()
            .expect("fractal tail runs")
    });
    assert!(
        String::from_utf8_lossy(&tail.stdout).contains("origin=north.ordering"),
        "{tail:?}"
    );

    // The demo program drives orders in every city at once, and shows what the group saw.
    let demo = tokio::task::block_in_place(|| {
        Command::new(workspace_binary("fractal"))
            .arg("demo")
            .arg("--topology")
            .arg(group())
            .arg("--state")
            .arg(tree.state.path())
            .args(["--", "--orders", "2"])
            .output()
            .expect("fractal demo runs")
    });
    let said = String::from_utf8_lossy(&demo.stdout).into_owned();
    assert!(
        demo.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    assert!(said.contains("4/4 orders delivered"), "{said}");
    assert!(said.contains("What the group level saw"), "{said}");

    tokio::task::block_in_place(|| tree.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_city_runs_alone_from_the_group_topology() {
    let _turn = one_tree_at_a_time().await;
    let (_receiver, endpoint) = OtlpReceiver::start().await;
    let tree = tokio::task::block_in_place(|| Tree::up(&["--subsystem", "north"], &endpoint));
    let running = tree.running();
    let hubs: Vec<&String> = running.hubs.keys().collect();
    assert_eq!(
        hubs,
        [
            "north.delivery",
            "north.ordering",
            "north.restaurant",
            "north.system"
        ]
    );
    assert_eq!(running.services.len(), 9);
    // The bridge up to the group is not part of a city alone.
    assert_eq!(running.bridges.len(), 6);
    let delivered = orders_in(&running, "north").await;
    assert_eq!(delivered.len(), ORDERS);
    tokio::task::block_in_place(|| tree.stop());
}
