//! The whole food-delivery system as it runs for real: one nats-server per hub, every service
//! and bridge as its own process with the checked-in configs, spans exported over OTLP to a
//! receiver in this test. Customers, restaurants and drivers act through the gRPC APIs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use food_contracts::v1::{Address, OrderStatus};
use food_delivery::v1::drivers_client::DriversClient;
use food_delivery::v1::{DeliveryRequest, DriverStatus, ListAssignedRequest, SetStatusRequest};
use food_ordering::v1::checkout_client::CheckoutClient;
use food_ordering::v1::{
    GetMenuRequest, GetOrderRequest, LineRequest, ListMenusRequest, OrderStatusResponse,
    PlaceOrderRequest,
};
use food_restaurant::v1::kitchen_client::KitchenClient;
use food_restaurant::v1::menus_client::MenusClient;
use food_restaurant::v1::{Dish, SaveMenuRequest, TicketRequest};
use food_system::v1::insights_client::InsightsClient;
use food_system::v1::{MenuViewsRequest, OrdersPerMinuteRequest};
use fractal_bridge::BridgeConfig;
use fractal_testkit::{
    NatsServer, Process, eventually, free_port, http_get, metric, workspace_binary,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

const ORDERS: usize = 20;
const DRIVERS: usize = 6;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A span as the OTLP receiver got it.
#[derive(Debug, Clone)]
struct Collected {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// An OTLP/gRPC trace receiver, as Jaeger or a collector would run it.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Collected>>>,
}

fn string(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("the spans");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| string(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Collected {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), string(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Hubs, services and bridges, each its own process; stopped (and their logs shown, on
/// failure) when dropped.
struct System {
    _hubs: HashMap<String, NatsServer>,
    processes: Vec<(String, Process)>,
    grpc: HashMap<String, String>,
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
        let mut grpc = HashMap::new();
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
            grpc.insert(
                format!("{subsystem}/{service}"),
                format!("http://127.0.0.1:{port}"),
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
            grpc,
            admins,
            _logs: logs,
        }
    }

    async fn channel(&self, service: &str) -> Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(self.grpc[service].clone())
            .expect("an endpoint");
        eventually(
            Duration::from_secs(30),
            &format!("{service} to listen"),
            || {
                let endpoint = endpoint.clone();
                async move { endpoint.connect().await.ok() }
            },
        )
        .await
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

struct Actors {
    menus: MenusClient<Channel>,
    kitchen: KitchenClient<Channel>,
    checkout: CheckoutClient<Channel>,
    drivers: DriversClient<Channel>,
}

impl Actors {
    async fn connect(system: &System) -> Actors {
        Actors {
            menus: MenusClient::new(system.channel("restaurant/menus").await),
            kitchen: KitchenClient::new(system.channel("restaurant/kitchen").await),
            checkout: CheckoutClient::new(system.channel("ordering/checkout").await),
            drivers: DriversClient::new(system.channel("delivery/drivers").await),
        }
    }

    /// The restaurant publishes its menu; customers see it once it crossed the hubs.
    async fn publish_menu(&mut self) {
        let dish = |id: &str, price_cents: i64| Dish {
            dish_id: id.into(),
            name: id.to_uppercase(),
            description: format!("The house {id}."),
            price_cents,
            available: true,
        };
        self.menus
            .save_menu(SaveMenuRequest {
                restaurant_id: "r-1".into(),
                restaurant_name: "Trattoria".into(),
                dishes: vec![dish("pizza", 900), dish("salad", 700)],
            })
            .await
            .expect("menu saved");
        eventually(Duration::from_secs(60), "the menu at ordering", || {
            let mut checkout = self.checkout.clone();
            async move {
                let menus = checkout
                    .list_menus(ListMenusRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .menus;
                menus.iter().any(|m| m.restaurant_id == "r-1").then_some(())
            }
        })
        .await;
    }

    /// Drivers go on shift and work whatever they are assigned until `done`.
    fn start_drivers(&self, done: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<usize>> {
        (0..DRIVERS)
            .map(|i| {
                let mut drivers = self.drivers.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    let driver_id = format!("d-{i}");
                    drivers
                        .set_status(SetStatusRequest {
                            driver_id: driver_id.clone(),
                            name: format!("Driver {i}"),
                            status: DriverStatus::Available.into(),
                        })
                        .await
                        .expect("on shift");
                    let mut delivered = 0;
                    while !done.load(Ordering::Relaxed) {
                        let assigned = drivers
                            .list_assigned(ListAssignedRequest {
                                driver_id: driver_id.clone(),
                            })
                            .await
                            .expect("assigned orders")
                            .into_inner()
                            .deliveries;
                        for delivery in assigned {
                            let request = DeliveryRequest {
                                driver_id: driver_id.clone(),
                                order_id: delivery.order_id.clone(),
                            };
                            drivers.pick_up(request.clone()).await.expect("picked up");
                            drivers.deliver(request).await.expect("delivered");
                            delivered += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    delivered
                })
            })
            .collect()
    }

    /// One customer's order, from browsing the menu to its delivery; the restaurant works it
    /// as it arrives. Returns the customer's last look at it.
    async fn order(&self, customer: usize) -> OrderStatusResponse {
        let (mut checkout, mut kitchen) = (self.checkout.clone(), self.kitchen.clone());
        let customer_id = format!("c-{customer}");
        let menu = checkout
            .get_menu(GetMenuRequest {
                restaurant_id: "r-1".into(),
                customer_id: customer_id.clone(),
            })
            .await
            .expect("menu")
            .into_inner();
        let order = checkout
            .place_order(PlaceOrderRequest {
                customer_id,
                restaurant_id: menu.restaurant_id,
                lines: menu
                    .items
                    .iter()
                    .map(|item| LineRequest {
                        item_id: item.item_id.clone(),
                        quantity: 1 + (customer % 3) as u32,
                    })
                    .collect(),
                delivery_address: Some(Address {
                    street: format!("{customer} Main St"),
                    city: "Springfield".into(),
                    postal_code: "12345".into(),
                }),
            })
            .await
            .expect("order placed")
            .into_inner();
        let ticket = TicketRequest {
            restaurant_id: "r-1".into(),
            order_id: order.order_id.clone(),
        };
        // The order reaches the kitchen through three hubs and two bridges.
        eventually(Duration::from_secs(60), "the order in the kitchen", || {
            let (mut kitchen, ticket) = (kitchen.clone(), ticket.clone());
            async move {
                match kitchen.accept_order(ticket).await {
                    Ok(_) => Some(()),
                    Err(e) if e.code() == Code::NotFound => None,
                    Err(e) => panic!("accepting failed: {e}"),
                }
            }
        })
        .await;
        kitchen.mark_ready(ticket).await.expect("ready");
        eventually(Duration::from_secs(60), "the order delivered", || {
            let (mut checkout, order_id) = (checkout.clone(), order.order_id.clone());
            async move {
                let response = checkout
                    .get_order(GetOrderRequest { order_id })
                    .await
                    .ok()?
                    .into_inner();
                (response.order.as_ref()?.status() == OrderStatus::Delivered).then_some(response)
            }
        })
        .await
    }
}

async fn otlp_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    (receiver, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_orders_cross_every_hub_and_each_is_one_trace() {
    let (receiver, endpoint) = otlp_receiver().await;
    let mut system = System::start(
        &["restaurant", "ordering", "delivery", "system"],
        &SERVICES,
        "subsystems/system/bridges",
        Some(&endpoint),
    );
    let mut actors = Actors::connect(&system).await;
    let started = Instant::now();
    actors.publish_menu().await;

    let done = Arc::new(AtomicBool::new(false));
    let drivers = actors.start_drivers(done.clone());
    let actors = Arc::new(actors);
    let orders: Vec<OrderStatusResponse> = futures::future::join_all((0..ORDERS).map(|customer| {
        let actors = actors.clone();
        async move { actors.order(customer).await }
    }))
    .await;
    done.store(true, Ordering::Relaxed);
    let mut delivered_by_drivers = 0;
    for driver in drivers {
        delivered_by_drivers += driver.await.expect("driver ran");
    }
    eprintln!("{ORDERS} orders delivered in {:?}", started.elapsed());
    assert_eq!(delivered_by_drivers, ORDERS);

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
    let insights = InsightsClient::new(system.channel("system/insights").await);
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
        metric(&metrics, "insights_menu_views_total{restaurant_id=\"r-1\"}"),
        Some(ORDERS as f64),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "insights_orders_placed_total"),
        Some(ORDERS as f64)
    );

    // One order is one trace: its checkout, the relays, and the restaurant's and delivery's
    // handling all share its trace id.
    let order_id = orders[0].order.as_ref().expect("an order").order_id.clone();
    let services = eventually(Duration::from_secs(30), "the order's spans", || {
        let spans = receiver.spans.lock().expect("the spans").clone();
        let order_id = order_id.clone();
        async move {
            let checkout = spans.iter().find(|s| {
                s.name == "checkout" && s.attributes.get("order_id") == Some(&order_id)
            })?;
            let services: BTreeSet<String> = spans
                .iter()
                .filter(|s| s.trace_id == checkout.trace_id)
                .map(|s| s.service.clone())
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
    let mut actors = Actors::connect(&system).await;
    actors.publish_menu().await;
    let done = Arc::new(AtomicBool::new(false));
    let drivers = actors.start_drivers(done.clone());
    let actors = Arc::new(actors);
    let orders = futures::future::join_all((0..3).map(|customer| {
        let actors = actors.clone();
        async move { actors.order(customer).await }
    }))
    .await;
    done.store(true, Ordering::Relaxed);
    for driver in drivers {
        driver.await.expect("driver ran");
    }
    assert!(orders.iter().all(|o| o.timeline.len() == 6));
    system.stop();
}
