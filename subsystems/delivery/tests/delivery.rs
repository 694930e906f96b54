//! The delivery subsystem alone, on its own hub: restaurants' `order.ready` events are
//! simulated; no other subsystem runs.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use food_contracts::events::{
    ORDER_DELIVERED, ORDER_DRIVER_ASSIGNED, ORDER_PICKED_UP, ORDER_READY,
};
use food_contracts::v1::{Order, OrderStatus};
use food_delivery::events::{DELIVERY_ASSIGNED, DELIVERY_DELIVERED, DELIVERY_REQUESTED};
use food_delivery::v1::drivers_client::DriversClient;
use food_delivery::v1::{
    Delivery, DeliveryRequest, DeliveryStatus, DriverStatus, ListAssignedRequest, SetStatusRequest,
};
use fractal::NewEvent;
use fractal_testkit::{
    NatsServer, RunningService, events_of_type, eventually, simulate, stream_messages,
    wait_for_events, wait_until_consumed,
};
use tonic::Code;
use tonic::transport::Channel;

struct Subsystem {
    _server: NatsServer,
    hub: fractal::Hub,
    drivers: DriversClient<Channel>,
    _services: Vec<RunningService>,
}

async fn start() -> Subsystem {
    let server = NatsServer::start();
    let hub = server.hub("delivery").await;
    let mut services = Vec::new();
    for service in ["drivers", "dispatch", "gateway"] {
        services.push(
            RunningService::start(&server, "delivery", "delivery", service, |s| {
                food_delivery::SUBSYSTEM.run(s)
            })
            .await,
        );
    }
    let drivers = DriversClient::new(services[0].channel().await);
    Subsystem {
        _server: server,
        hub,
        drivers,
        _services: services,
    }
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

async fn available(client: &mut DriversClient<Channel>, driver_id: &str) {
    client
        .set_status(SetStatusRequest {
            driver_id: driver_id.into(),
            name: format!("Driver {driver_id}"),
            status: DriverStatus::Available.into(),
        })
        .await
        .expect("status set");
}

async fn assigned(client: &DriversClient<Channel>, driver_id: &str) -> Vec<Delivery> {
    client
        .clone()
        .list_assigned(ListAssignedRequest {
            driver_id: driver_id.into(),
            wait_ms: 0,
        })
        .await
        .expect("listed")
        .into_inner()
        .deliveries
}

fn request(driver_id: &str, order_id: &str) -> DeliveryRequest {
    DeliveryRequest {
        driver_id: driver_id.into(),
        order_id: order_id.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_order_waits_for_a_driver_who_picks_it_up_and_delivers_it() {
    // Bound whole: the server and services live until the end of the test.
    let subsystem = start().await;
    let (hub, mut drivers) = (subsystem.hub.clone(), subsystem.drivers.clone());

    // No driver on shift: the order waits.
    simulate(&hub, [ready("o-1")]).await;
    wait_for_events(&hub, DELIVERY_REQUESTED.event_type(), 1).await;
    wait_until_consumed(&hub, "dispatch").await;
    assert!(
        events_of_type(&hub, DELIVERY_ASSIGNED.event_type())
            .await
            .is_empty()
    );

    // A driver becomes available later: dispatch retries and assigns them.
    available(&mut drivers, "d-1").await;
    let delivery = eventually(Duration::from_secs(20), "o-1 assigned to d-1", || {
        let drivers = drivers.clone();
        async move { assigned(&drivers, "d-1").await.into_iter().next() }
    })
    .await;
    assert_eq!(delivery.order_id, "o-1");
    assert_eq!(delivery.status(), DeliveryStatus::Assigned);

    let error = drivers
        .deliver(request("d-1", "o-1"))
        .await
        .expect_err("not picked up");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains("order `o-1` was never picked up"),
        "{}",
        error.message()
    );
    let error = drivers
        .pick_up(request("d-2", "o-1"))
        .await
        .expect_err("someone else's order");
    assert_eq!(error.code(), Code::NotFound);
    drivers
        .pick_up(request("d-1", "o-1"))
        .await
        .expect("picked up");
    let delivered = drivers
        .deliver(request("d-1", "o-1"))
        .await
        .expect("delivered")
        .into_inner();
    assert_eq!(delivered.status(), DeliveryStatus::Delivered);

    let out = wait_for_events(&hub, ORDER_DELIVERED.event_type(), 1).await;
    let order = ORDER_DELIVERED.decode(&out[0]).expect("an Order");
    assert_eq!(order.status(), OrderStatus::Delivered);
    assert_eq!(order.driver.map(|d| d.name).as_deref(), Some("Driver d-1"));
    assert!(order.driver_assigned_at.is_some() && order.picked_up_at.is_some());
    assert_eq!(order.total_cents, 1234, "the full order travels on");
    for contract in [ORDER_DRIVER_ASSIGNED, ORDER_PICKED_UP] {
        wait_for_events(&hub, contract.event_type(), 1).await;
    }

    let error = drivers
        .set_status(SetStatusRequest {
            driver_id: "d 3".into(),
            name: String::new(),
            status: 7,
        })
        .await
        .expect_err("bad status");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("driver_id: `d 3` contains ` `"),
        "{}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_order_gets_one_driver_and_each_driver_one_order_at_a_time() {
    // Bound whole: the server and services live until the end of the test.
    let subsystem = start().await;
    let (hub, mut drivers) = (subsystem.hub.clone(), subsystem.drivers.clone());
    let orders: Vec<String> = (1..=6).map(|i| format!("o-{i}")).collect();
    available(&mut drivers, "d-1").await;
    available(&mut drivers, "d-2").await;
    simulate(&hub, orders.iter().map(|o| ready(o))).await;

    let mut delivered = Vec::new();
    while delivered.len() < orders.len() {
        for driver in ["d-1", "d-2"] {
            let work = assigned(&drivers, driver).await;
            assert!(
                work.len() <= 1,
                "{driver} holds {} orders at once",
                work.len()
            );
            if let Some(delivery) = work.first() {
                drivers
                    .pick_up(request(driver, &delivery.order_id))
                    .await
                    .expect("picked up");
                drivers
                    .deliver(request(driver, &delivery.order_id))
                    .await
                    .expect("delivered");
                delivered.push(delivery.order_id.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    delivered.sort();
    let mut expected = orders.clone();
    expected.sort();
    assert_eq!(delivered, expected);

    let mut assignments: HashMap<String, usize> = HashMap::new();
    for event in events_of_type(&hub, DELIVERY_ASSIGNED.event_type()).await {
        *assignments.entry(event.key.clone()).or_default() += 1;
    }
    assert!(assignments.values().all(|&n| n == 1), "{assignments:?}");
}

/// Many drivers at work at once, as on a busy evening: every order is assigned exactly once,
/// and no driver ever holds two. Read from the event lake, where each driver's assignments
/// and deliveries must alternate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_drivers_and_five_hundred_orders_keep_the_dispatch_invariants() {
    const DRIVERS: usize = 50;
    const ORDERS: usize = 500;
    // Bound whole: the server and services live until the end of the test.
    let subsystem = start().await;
    let (hub, drivers) = (subsystem.hub.clone(), subsystem.drivers.clone());
    let orders: Vec<String> = (0..ORDERS).map(|i| format!("o-{i:03}")).collect();
    for i in 0..DRIVERS {
        available(&mut drivers.clone(), &format!("d-{i:02}")).await;
    }
    // Half the orders wait before the drivers work, half arrive while they do.
    simulate(&hub, orders[..ORDERS / 2].iter().map(|o| ready(o))).await;

    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..DRIVERS {
        let (mut drivers, delivered) = (drivers.clone(), delivered.clone());
        workers.spawn(async move {
            let driver = format!("d-{i:02}");
            let mut mine = Vec::new();
            while delivered.load(std::sync::atomic::Ordering::Relaxed) < ORDERS {
                let work = assigned(&drivers, &driver).await;
                assert!(work.len() <= 1, "{driver} holds {} orders", work.len());
                if let Some(delivery) = work.first() {
                    let order = &delivery.order_id;
                    drivers
                        .pick_up(request(&driver, order))
                        .await
                        .expect("picked up");
                    drivers
                        .deliver(request(&driver, order))
                        .await
                        .expect("delivered");
                    delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    mine.push(order.clone());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            mine
        });
    }
    simulate(&hub, orders[ORDERS / 2..].iter().map(|o| ready(o))).await;
    let all = tokio::time::timeout(Duration::from_secs(240), async {
        let mut all = Vec::new();
        while let Some(mine) = workers.join_next().await {
            all.extend(mine.expect("a driver's work"));
        }
        all
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of {ORDERS} orders delivered in time",
            delivered.load(std::sync::atomic::Ordering::Relaxed)
        )
    });
    let mut all = all;
    all.sort();
    assert_eq!(all, orders, "every order delivered once");

    let assigned_events = events_of_type(&hub, DELIVERY_ASSIGNED.event_type()).await;
    let mut per_order: HashMap<String, usize> = HashMap::new();
    for event in &assigned_events {
        *per_order.entry(event.key.clone()).or_default() += 1;
    }
    assert_eq!(per_order.len(), ORDERS);
    assert!(
        per_order.values().all(|&n| n == 1),
        "an order assigned twice"
    );

    // In the lake, each driver's assignments and deliveries alternate: assigned o, delivered o,
    // assigned o', ...
    let mut holding: HashMap<String, String> = HashMap::new();
    for message in stream_messages(&hub, hub.events_stream()).await {
        let Ok(event) =
            fractal::Event::decode(&message.subject, message.headers.as_ref(), message.payload)
        else {
            continue;
        };
        let (is_assignment, contract) = match event.event_type.as_str() {
            t if t == DELIVERY_ASSIGNED.event_type() => (true, DELIVERY_ASSIGNED),
            t if t == DELIVERY_DELIVERED.event_type() => (false, DELIVERY_DELIVERED),
            _ => continue,
        };
        let delivery = contract.decode(&event).expect("a Delivery");
        let (driver, order) = (delivery.driver_id, event.key.clone());
        if is_assignment {
            if let Some(other) = holding.insert(driver.clone(), order.clone()) {
                panic!("{driver} was given {order} while holding {other}");
            }
        } else {
            assert_eq!(holding.remove(&driver), Some(order), "{driver} delivered");
        }
    }
    assert!(holding.is_empty(), "undelivered: {holding:?}");
}

/// A driver's app long-polls: `ListAssigned` with `wait_ms` answers as soon as an order is
/// assigned, and with nothing once the wait is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_when_an_order_is_assigned() {
    // Bound whole: the server and services live until the end of the test.
    let subsystem = start().await;
    let (hub, mut drivers) = (subsystem.hub.clone(), subsystem.drivers.clone());
    available(&mut drivers, "d-1").await;

    let waited = drivers
        .list_assigned(ListAssignedRequest {
            driver_id: "d-1".into(),
            wait_ms: 300,
        })
        .await
        .expect("listed")
        .into_inner();
    assert!(
        waited.deliveries.is_empty(),
        "nothing to do: an empty answer after the wait"
    );

    let poll = tokio::spawn({
        let drivers = drivers.clone();
        async move {
            drivers
                .clone()
                .list_assigned(ListAssignedRequest {
                    driver_id: "d-1".into(),
                    wait_ms: 30_000,
                })
                .await
                .expect("listed")
                .into_inner()
                .deliveries
        }
    });
    simulate(&hub, [ready("o-1")]).await;
    let deliveries = tokio::time::timeout(Duration::from_secs(25), poll)
        .await
        .expect("answered once the order was assigned, before the wait ran out")
        .expect("the poll");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].order_id, "o-1");

    let error = drivers
        .list_assigned(ListAssignedRequest {
            driver_id: "d-1".into(),
            wait_ms: 30_001,
        })
        .await
        .expect_err("too long a wait");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("wait_ms: at most 30000"),
        "{}",
        error.message()
    );
}

/// Dispatch cut short after it took an order off the queue for a driver and before it
/// announced the match: the redelivered event that made the match completes it.
/// Dispatch's record of driver `d-1`, on shift and claimed for `order_id` (confirmed), or free
/// if it is empty, as a handler cut short could leave it.
async fn seed_driver(hub: &fractal::Hub, order_id: &str) {
    use food_delivery::v1::DispatchDriver;
    use fractal::view::{Record, View};

    let drivers = View::<DispatchDriver>::open(hub, "dispatch_drivers")
        .await
        .expect("the drivers view");
    let driver = DispatchDriver {
        driver_id: "d-1".into(),
        name: "Driver d-1".into(),
        available: true,
        order_id: order_id.into(),
        confirmed: !order_id.is_empty(),
        ..Default::default()
    };
    let created = drivers
        .create("d-1", &Record::new(driver, SystemTime::now()))
        .await
        .expect("the driver is recorded");
    assert!(created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_cut_short_before_its_announcement_is_announced_when_its_event_comes_again() {
    use food_delivery::v1::Assignment;
    use fractal::view::{Record, View};

    let server = NatsServer::start();
    let hub = server.hub("delivery").await;
    // What the cut-short attempt at `delivery.delivered` of o-1 left: d-1 matched with o-2
    // (claim confirmed, assignment recorded, o-2 off the queue), nothing published.
    let now = SystemTime::now();
    seed_driver(&hub, "o-2").await;
    let delivery = |order_id: &str, status: DeliveryStatus| Delivery {
        order_id: order_id.into(),
        driver_id: "d-1".into(),
        driver_name: "Driver d-1".into(),
        status: status.into(),
        ..Default::default()
    };
    let assignments = View::<Assignment>::open(&hub, "dispatch_assignments")
        .await
        .unwrap();
    let assignment = Assignment {
        delivery: Some(delivery("o-2", DeliveryStatus::Assigned)),
        event_id: ulid::Ulid::new().to_string(),
    };
    assert!(
        assignments
            .create("o-2", &Record::new(assignment, now))
            .await
            .unwrap()
    );

    let _dispatch = RunningService::start(&server, "delivery", "delivery", "dispatch", |s| {
        food_delivery::SUBSYSTEM.run(s)
    })
    .await;
    simulate(
        &hub,
        [DELIVERY_DELIVERED.event("o-1", &delivery("o-1", DeliveryStatus::Delivered))],
    )
    .await;
    let announced = wait_for_events(&hub, DELIVERY_ASSIGNED.event_type(), 1).await;
    assert_eq!(announced[0].key, "o-2");
    let announced = DELIVERY_ASSIGNED.decode(&announced[0]).unwrap();
    assert_eq!(announced.driver_id, "d-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_driver_and_a_waiting_order_that_no_event_brought_together_are_matched() {
    use fractal::view::{Record, View};

    let server = NatsServer::start();
    let hub = server.hub("delivery").await;
    // What a handler that looked at a copy behind its bucket can leave: d-1 on shift and free,
    // o-1 waiting, and no event to come for either.
    let now = SystemTime::now();
    seed_driver(&hub, "").await;
    let waiting = View::<Delivery>::open(&hub, "dispatch_waiting")
        .await
        .unwrap();
    let request = Delivery {
        order_id: "o-1".into(),
        status: DeliveryStatus::Requested.into(),
        ..Default::default()
    };
    assert!(
        waiting
            .create("o-1", &Record::new(request, now))
            .await
            .unwrap()
    );

    let _dispatch = RunningService::start(&server, "delivery", "delivery", "dispatch", |s| {
        food_delivery::SUBSYSTEM.run(s)
    })
    .await;
    let announced = wait_for_events(&hub, DELIVERY_ASSIGNED.event_type(), 1).await;
    assert_eq!(announced[0].key, "o-1");
    let announced = DELIVERY_ASSIGNED.decode(&announced[0]).unwrap();
    assert_eq!(announced.driver_id, "d-1");
    assert!(waiting.get("o-1").await.unwrap().is_none(), "off the queue");
}
