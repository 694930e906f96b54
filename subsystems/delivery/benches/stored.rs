//! What one event costs dispatch, and what one `ListAssigned` costs a driver, as the deliveries
//! stored grow: the delivery subsystem alone (release build of its services, as processes) on
//! a hub that already holds 1,000, 10,000 and 100,000 finished deliveries.
//!
//! `cargo bench -p food-delivery --bench stored [-- STORED,STORED,… [ORDERS]]`
//!
//! For each store size: a fresh hub is filled through the services' own views (each finished
//! delivery as its handlers would leave it: delivered, indexed and removed from the index,
//! queued and taken off the queue, assigned), then `drivers`, `dispatch` and `gateway` start,
//! 100 drivers go on shift and ORDERS ready orders (default 1,000) arrive at 200 a second while
//! the drivers poll for work every 100 ms. Prints, side by side: dispatch's CPU per event it
//! handled, `ListAssigned` latency as the drivers saw it, and ready → assigned latency.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use food_contracts::events::ORDER_READY;
use food_contracts::v1::{Order, OrderStatus};
use food_delivery::events::{DELIVERY_ASSIGNED, DELIVERY_REQUESTED};
use food_delivery::v1::drivers_client::DriversClient;
use food_delivery::v1::{
    Assignment, Delivery, DeliveryRequest, DeliveryStatus, DriverStatus, ListAssignedRequest,
    SetStatusRequest,
};
use fractal::NewEvent;
use fractal::view::{Index, Record, View, key};
use fractal_testkit::{NatsServer, Process, free_port, http_get, simulate, stream_messages};
use futures::StreamExt as _;

const DRIVERS: usize = 100;
const RATE: f64 = 200.0;

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn finished(i: usize) -> Delivery {
    let now = Some(SystemTime::now().into());
    Delivery {
        order_id: format!("old-{i}"),
        order: Some(Order {
            order_id: format!("old-{i}"),
            customer_id: format!("c-{}", i % 1000),
            restaurant_id: "r-1".into(),
            total_cents: 1234,
            status: OrderStatus::Ready.into(),
            ..Default::default()
        }),
        status: DeliveryStatus::Delivered.into(),
        driver_id: format!("old-d-{}", i % 100),
        driver_name: "An earlier driver".into(),
        requested_at: now,
        assigned_at: now,
        picked_up_at: now,
        delivered_at: now,
    }
}

/// Fills the hub with `stored` finished deliveries, as the services' handlers leave them.
async fn fill(hub: &fractal::Hub, stored: usize) {
    let by_driver = Index::open(hub, "deliveries_by_driver", |order_id, d: &Delivery| {
        key(&[&d.driver_id, order_id])
    })
    .await
    .unwrap()
    .only(|d| d.status() != DeliveryStatus::Delivered);
    let deliveries = View::<Delivery>::open(hub, "deliveries")
        .await
        .unwrap()
        .indexed_by(by_driver);
    let waiting = View::<Delivery>::open(hub, "dispatch_waiting")
        .await
        .unwrap();
    let assignments = View::<Assignment>::open(hub, "dispatch_assignments")
        .await
        .unwrap();
    futures::stream::iter(0..stored)
        .for_each_concurrent(256, |i| {
            let (deliveries, waiting, assignments) =
                (deliveries.clone(), waiting.clone(), assignments.clone());
            async move {
                let done = finished(i);
                let mut requested = done.clone();
                requested.set_status(DeliveryStatus::Requested);
                let mut assigned = done.clone();
                assigned.set_status(DeliveryStatus::Assigned);
                let now = SystemTime::now();
                let key = done.order_id.clone();
                waiting
                    .create(&key, &Record::new(requested, now))
                    .await
                    .unwrap();
                let assignment = Assignment {
                    delivery: Some(assigned.clone()),
                    event_id: ulid::Ulid::new().to_string(),
                };
                assignments
                    .create(&key, &Record::new(assignment, now))
                    .await
                    .unwrap();
                waiting.delete(&key).await.unwrap();
                for step in [assigned, done] {
                    deliveries
                        .update(&key, |_| Some(Record::new(step.clone(), now)))
                        .await
                        .unwrap();
                }
            }
        })
        .await;
}

fn ready(order_id: &str) -> NewEvent {
    let order = Order {
        order_id: order_id.into(),
        customer_id: "c-1".into(),
        restaurant_id: "r-1".into(),
        total_cents: 1234,
        status: OrderStatus::Ready.into(),
        placed_at: Some(SystemTime::now().into()),
        ready_at: Some(SystemTime::now().into()),
        ..Default::default()
    };
    ORDER_READY.event(order_id, &order)
}

struct Row {
    stored: usize,
    fill: Duration,
    start: Duration,
    cpu_per_event: Duration,
    events: usize,
    list_p50: Duration,
    list_p99: Duration,
    assign_p50: Duration,
    assign_p99: Duration,
}

async fn measure(stored: usize, orders: usize) -> Row {
    let server = NatsServer::start();
    let hub = server.hub("delivery").await;
    let started = Instant::now();
    fill(&hub, stored).await;
    let fill_took = started.elapsed();

    let logs = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let grpc = format!("127.0.0.1:{}", free_port());
    let mut processes = Vec::new();
    let mut admins = Vec::new();
    let started = Instant::now();
    for service in ["drivers", "dispatch", "gateway"] {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut env = vec![
            (
                "DELIVERY_HUB__URLS".to_owned(),
                format!("[\"{}\"]", server.url()),
            ),
            ("DELIVERY_ADMIN__LISTEN".to_owned(), admin.clone()),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
        ];
        if service == "drivers" {
            env.push(("DELIVERY_GRPC__LISTEN".to_owned(), grpc.clone()));
        }
        let config = format!("{root}/{service}.toml");
        processes.push(Process::spawn(
            service,
            std::path::Path::new(env!("CARGO_BIN_EXE_delivery")),
            &["--config", &config],
            &env,
            logs.path(),
        ));
        admins.push(admin);
    }
    for (admin, process) in admins.iter().zip(&processes) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !http_get(admin.as_str(), "/readyz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(Instant::now() < deadline, "not ready: {}", process.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let start_took = started.elapsed();
    let dispatch_pid = processes[1].pid().expect("dispatch runs");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let drivers = DriversClient::new(channel);
    let cpu_before = cpu_of(dispatch_pid);
    let done = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..DRIVERS {
        let (mut drivers, done, delivered) = (drivers.clone(), done.clone(), delivered.clone());
        tasks.spawn(async move {
            let driver_id = format!("d-{i}");
            drivers
                .set_status(SetStatusRequest {
                    driver_id: driver_id.clone(),
                    name: format!("Driver {i}"),
                    status: DriverStatus::Available.into(),
                })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2 * i as u64)).await;
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let assigned = drivers
                    .list_assigned(ListAssignedRequest {
                        driver_id: driver_id.clone(),
                        wait_ms: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .deliveries;
                latencies.push(asked.elapsed());
                for delivery in assigned {
                    let request = DeliveryRequest {
                        driver_id: driver_id.clone(),
                        order_id: delivery.order_id,
                    };
                    drivers.pick_up(request.clone()).await.unwrap();
                    drivers.deliver(request).await.unwrap();
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            latencies
        });
    }
    let arrivals = Instant::now();
    for i in 0..orders {
        let at = arrivals + Duration::from_secs_f64(i as f64 / RATE);
        tokio::time::sleep_until(at.into()).await;
        simulate(&hub, [ready(&format!("new-{i}"))]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(Ordering::Relaxed) < orders {
        assert!(Instant::now() < deadline, "orders not delivered in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let dispatch handle the last deliveries' events.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = cpu_of(dispatch_pid).saturating_sub(cpu_before);
    done.store(true, Ordering::Relaxed);
    let mut list = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        list.extend(latencies.unwrap());
    }

    // Ready → assigned, from the lake: when each order was requested and when assigned.
    let mut requested_at = std::collections::HashMap::new();
    let mut assign = Vec::new();
    for message in stream_messages(&hub, hub.events_stream()).await {
        let Ok(event) =
            fractal::Event::decode(&message.subject, message.headers.as_ref(), message.payload)
        else {
            continue;
        };
        match event.event_type.as_str() {
            t if t == DELIVERY_REQUESTED.event_type() => {
                requested_at.insert(event.key.clone(), event.time);
            }
            t if t == DELIVERY_ASSIGNED.event_type() => {
                if let Some(at) = requested_at.get(&event.key) {
                    assign.push(event.time.duration_since(*at).unwrap_or_default());
                }
            }
            _ => {}
        }
    }
    for process in &mut processes {
        process.terminate();
    }
    // Events dispatch handled: each order's request and delivery, each driver's shift.
    let events = 2 * orders + DRIVERS;
    Row {
        stored,
        fill: fill_took,
        start: start_took,
        cpu_per_event: cpu / events as u32,
        events,
        list_p50: quantile(&mut list, 0.5),
        list_p99: quantile(&mut list, 0.99),
        assign_p50: quantile(&mut assign, 0.5),
        assign_p99: quantile(&mut assign, 0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let sizes: Vec<usize> = args
        .first()
        .map(|s| s.split(',').map(|n| n.parse().expect("a number")).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let orders: usize = args.get(1).map_or(1_000, |n| n.parse().expect("a number"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows: Vec<Row> = sizes
        .iter()
        .map(|&stored| {
            let row = runtime.block_on(measure(stored, orders));
            eprintln!("  {stored} stored: done");
            row
        })
        .collect();
    println!(
        "\nDelivery subsystem alone, {DRIVERS} drivers polling every 100 ms, {orders} orders at {RATE}/s (release build):\n"
    );
    println!(
        "| stored deliveries | fill (s) | services ready (s) | dispatch CPU per event (µs) | events | ListAssigned p50 (ms) | p99 (ms) | ready → assigned p50 (ms) | p99 (ms) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {} | {} |",
            row.stored,
            row.fill.as_secs_f64(),
            row.start.as_secs_f64(),
            row.cpu_per_event.as_secs_f64() * 1e6,
            row.events,
            ms(row.list_p50),
            ms(row.list_p99),
            ms(row.assign_p50),
            ms(row.assign_p99),
        );
    }
}
