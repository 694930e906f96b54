//! The ordering subsystem alone, on its own hub: menus and the other subsystems' progress on
//! orders are simulated; no other subsystem runs.

use std::time::{Duration, SystemTime};

use food_contracts::events::{
    MENU_CHANGED, MENU_VIEWED, ORDER_ACCEPTED, ORDER_DELIVERED, ORDER_DRIVER_ASSIGNED,
    ORDER_PICKED_UP, ORDER_PLACED, ORDER_READY,
};
use food_contracts::v1::{Address, Driver, Menu, MenuItem, Order, OrderStatus};
use food_ordering::events::{ORDER_PROGRESSED, ORDER_SUBMITTED};
use food_ordering::v1::checkout_client::CheckoutClient;
use food_ordering::v1::{
    GetMenuRequest, GetOrderRequest, LineRequest, ListMenusRequest, OrderProgressed,
    OrderStatusResponse, OrderSubmitted, PlaceOrderRequest,
};
use fractal::Contract;
use fractal_testkit::{
    NatsServer, RunningService, eventually, simulate, wait_for_events, wait_until_consumed,
};
use tonic::Code;
use tonic::transport::Channel;

async fn start(server: &NatsServer, service: &str) -> RunningService {
    RunningService::start(server, "ordering", "ordering", service, |s| {
        food_ordering::SUBSYSTEM.run(s)
    })
    .await
}

fn menu() -> Menu {
    let item = |id: &str, price_cents: i64| MenuItem {
        item_id: id.into(),
        name: id.to_uppercase(),
        description: String::new(),
        price_cents,
    };
    Menu {
        restaurant_id: "r-1".into(),
        restaurant_name: "Trattoria".into(),
        items: vec![item("pizza", 900), item("salad", 700)],
        changed_at: Some(SystemTime::now().into()),
    }
}

fn address() -> Address {
    Address {
        street: "1 Main St".into(),
        city: "Springfield".into(),
        postal_code: "12345".into(),
    }
}

/// The order as the subsystem that moved it to `status` would publish it.
fn progressed(placed: &Order, status: OrderStatus) -> Order {
    let mut order = placed.clone();
    let at =
        |s: u64| Some((SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)).into());
    order.set_status(status);
    let rank = status as u64;
    order.accepted_at = (rank >= 2).then(|| at(2)).flatten();
    order.ready_at = (rank >= 3).then(|| at(3)).flatten();
    order.driver_assigned_at = (rank >= 4).then(|| at(4)).flatten();
    order.picked_up_at = (rank >= 5).then(|| at(5)).flatten();
    order.delivered_at = (rank >= 6).then(|| at(6)).flatten();
    if rank >= 4 {
        order.driver = Some(Driver {
            driver_id: "d-1".into(),
            name: "Dee".into(),
        });
    }
    order
}

const PROGRESS: [(Contract<Order>, OrderStatus); 5] = [
    (ORDER_ACCEPTED, OrderStatus::Accepted),
    (ORDER_READY, OrderStatus::Ready),
    (ORDER_DRIVER_ASSIGNED, OrderStatus::DriverAssigned),
    (ORDER_PICKED_UP, OrderStatus::PickedUp),
    (ORDER_DELIVERED, OrderStatus::Delivered),
];

async fn order_status(
    client: &CheckoutClient<Channel>,
    order_id: &str,
    status: OrderStatus,
) -> OrderStatusResponse {
    eventually(
        Duration::from_secs(20),
        &format!("order {order_id} {status:?}"),
        || {
            let mut client = client.clone();
            async move {
                let response = client
                    .get_order(GetOrderRequest {
                        order_id: order_id.into(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                (response.order.as_ref()?.status() == status).then_some(response)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_browses_orders_and_follows_the_order() {
    let server = NatsServer::start();
    let hub = server.hub("ordering").await;
    let checkout = start(&server, "checkout").await;
    let _gateway = start(&server, "gateway").await;
    let mut client = CheckoutClient::new(checkout.channel().await);

    simulate(&hub, [MENU_CHANGED.event("r-1", &menu())]).await;
    eventually(Duration::from_secs(20), "the menu listed", || {
        let mut client = client.clone();
        async move {
            let menus = client
                .list_menus(ListMenusRequest {})
                .await
                .ok()?
                .into_inner()
                .menus;
            (menus.len() == 1 && menus[0].items == 2).then_some(())
        }
    })
    .await;
    let seen = client
        .get_menu(GetMenuRequest {
            restaurant_id: "r-1".into(),
            customer_id: "c-1".into(),
        })
        .await
        .expect("menu")
        .into_inner();
    assert_eq!(seen.restaurant_name, "Trattoria");
    let viewed = wait_for_events(&hub, MENU_VIEWED.event_type(), 1).await;
    let viewed = MENU_VIEWED.decode(&viewed[0]).expect("a MenuViewed");
    assert_eq!(
        (viewed.restaurant_id.as_str(), viewed.customer_id.as_str()),
        ("r-1", "c-1")
    );

    // Bad orders are refused with every problem named, and nothing is published.
    let error = client
        .place_order(PlaceOrderRequest {
            customer_id: "c-1".into(),
            restaurant_id: "nowhere".into(),
            lines: vec![LineRequest {
                item_id: "pizza".into(),
                quantity: 1,
            }],
            delivery_address: Some(address()),
        })
        .await
        .expect_err("unknown restaurant");
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .place_order(PlaceOrderRequest {
            customer_id: "c-1".into(),
            restaurant_id: "r-1".into(),
            lines: vec![],
            delivery_address: Some(address()),
        })
        .await
        .expect_err("empty order");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error
            .message()
            .contains("lines: an order needs at least one line")
    );
    let error = client
        .place_order(PlaceOrderRequest {
            customer_id: "c-1".into(),
            restaurant_id: "r-1".into(),
            lines: vec![
                LineRequest {
                    item_id: "sushi".into(),
                    quantity: 1,
                },
                LineRequest {
                    item_id: "pizza".into(),
                    quantity: 0,
                },
            ],
            delivery_address: None,
        })
        .await
        .expect_err("bad lines");
    for problem in [
        "lines[0].item_id: `sushi` is not on the menu of `r-1`",
        "lines[1].quantity: must be 1 to 50, not 0",
        "delivery_address: missing",
    ] {
        assert!(
            error.message().contains(problem),
            "{problem} in {}",
            error.message()
        );
    }
    assert!(submitted(&hub).await.is_empty());

    let placed = client
        .place_order(PlaceOrderRequest {
            customer_id: "c-1".into(),
            restaurant_id: "r-1".into(),
            lines: vec![
                LineRequest {
                    item_id: "pizza".into(),
                    quantity: 2,
                },
                LineRequest {
                    item_id: "salad".into(),
                    quantity: 1,
                },
            ],
            delivery_address: Some(address()),
        })
        .await
        .expect("placed")
        .into_inner();
    assert_eq!((placed.subtotal_cents, placed.total_cents), (2500, 2799));
    let published = wait_for_events(&hub, ORDER_PLACED.event_type(), 1).await;
    let published = ORDER_PLACED.decode(&published[0]).expect("an Order");
    assert_eq!(published, placed, "the contract carries the whole order");

    // The other subsystems move it on (simulated), and the customer sees every step in order.
    simulate(
        &hub,
        PROGRESS.map(|(contract, status)| {
            contract.event(&placed.order_id, &progressed(&placed, status))
        }),
    )
    .await;
    let response = order_status(&client, &placed.order_id, OrderStatus::Delivered).await;
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
    assert_eq!(
        response
            .order
            .and_then(|o| o.driver)
            .map(|d| d.name)
            .as_deref(),
        Some("Dee")
    );
}

async fn submitted(hub: &fractal::Hub) -> Vec<fractal::Event> {
    fractal_testkit::events_of_type(hub, ORDER_SUBMITTED.event_type()).await
}

/// The customer's view of the same events, delivered in order once, or shuffled and twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_view_ignores_repeats_and_arrival_order() {
    let placed = Order {
        order_id: "o-1".into(),
        customer_id: "c-1".into(),
        restaurant_id: "r-1".into(),
        status: OrderStatus::Placed.into(),
        placed_at: Some((SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_001)).into()),
        total_cents: 999,
        ..Default::default()
    };
    let event = |i: usize| match i {
        0 => ORDER_SUBMITTED.event(
            "o-1",
            &OrderSubmitted {
                order: Some(placed.clone()),
            },
        ),
        i => ORDER_PROGRESSED.event(
            "o-1",
            &OrderProgressed {
                order: Some(progressed(&placed, PROGRESS[i - 1].1)),
            },
        ),
    };
    let mut views = Vec::new();
    for order in [vec![0, 1, 2, 3, 4, 5], vec![5, 3, 0, 4, 1, 5, 2, 0, 3]] {
        let server = NatsServer::start();
        let hub = server.hub("ordering").await;
        simulate(&hub, order.iter().map(|&i| event(i))).await;
        let checkout = start(&server, "checkout").await;
        let client = CheckoutClient::new(checkout.channel().await);
        order_status(&client, "o-1", OrderStatus::Delivered).await;
        wait_until_consumed(&hub, "checkout").await;
        let view = order_status(&client, "o-1", OrderStatus::Delivered).await;
        assert_eq!(view.timeline.len(), 6);
        views.push(view);
    }
    assert_eq!(views[0], views[1]);
}

/// Kubernetes sets `<SERVICE>_PORT…` variables for every Service of a namespace: a Service named
/// `ordering-gateway` gives this program `ORDERING_GATEWAY_PORT`, which is not configuration.
/// A mistyped key is still an error.
#[test]
fn kubernetes_service_links_are_not_configuration_and_typos_still_are_errors() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/checkout.toml");
    let check = |variables: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ordering"))
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .envs(variables.iter().copied())
            .output()
            .unwrap()
    };
    let linked = check(&[
        ("ORDERING_GATEWAY_PORT", "tcp://10.0.0.1:50071"),
        ("ORDERING_GATEWAY_SERVICE_HOST", "10.0.0.1"),
        ("ORDERING_GATEWAY_SERVICE_PORT", "50071"),
        ("ORDERING_GATEWAY_PORT_50071_TCP", "tcp://10.0.0.1:50071"),
        ("ORDERING_GATEWAY_PORT_50071_TCP_PROTO", "tcp"),
        ("ORDERING_GATEWAY_PORT_50071_TCP_PORT", "50071"),
        ("ORDERING_GATEWAY_PORT_50071_TCP_ADDR", "10.0.0.1"),
    ]);
    assert!(
        linked.status.success(),
        "{}",
        String::from_utf8_lossy(&linked.stderr)
    );
    let typo = check(&[
        ("ORDERING_GATEWAY_PORT", "tcp://10.0.0.1:50071"),
        ("ORDERING_HUB__URLZ", "nats://127.0.0.1:4222"),
    ]);
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("1 problem"), "{stderr}");
    assert!(stderr.contains("hub.urlz: unknown key"), "{stderr}");
}
