//! The restaurant subsystem alone, on its own hub: upstream `order.placed` events are
//! simulated; no other subsystem runs.

use std::time::{Duration, SystemTime};

use food_contracts::events::{MENU_CHANGED, ORDER_ACCEPTED, ORDER_PLACED, ORDER_READY};
use food_contracts::v1::{Address, Menu, Order, OrderLine, OrderStatus};
use food_restaurant::events::{TICKET_ACCEPTED, TICKET_READY, TICKET_RECEIVED};
use food_restaurant::v1::kitchen_client::KitchenClient;
use food_restaurant::v1::menus_client::MenusClient;
use food_restaurant::v1::{
    Dish, GetMenuRequest, ListTicketsRequest, SaveMenuRequest, Ticket, TicketRequest, TicketStatus,
};
use fractal::NewEvent;
use fractal_testkit::{
    NatsServer, RunningService, eventually, faults, simulate, wait_for_events, wait_until_consumed,
};
use tonic::Code;
use tonic::transport::Channel;

fn order(order_id: &str, restaurant_id: &str) -> Order {
    Order {
        order_id: order_id.into(),
        customer_id: "c-1".into(),
        restaurant_id: restaurant_id.into(),
        restaurant_name: "Trattoria".into(),
        lines: vec![OrderLine {
            item_id: "pizza".into(),
            name: "Pizza".into(),
            quantity: 2,
            unit_price_cents: 900,
            total_cents: 1800,
        }],
        subtotal_cents: 1800,
        delivery_fee_cents: 299,
        total_cents: 2099,
        currency: "EUR".into(),
        delivery_address: Some(Address {
            street: "1 Main St".into(),
            city: "Springfield".into(),
            postal_code: "12345".into(),
        }),
        status: OrderStatus::Placed.into(),
        placed_at: Some(SystemTime::now().into()),
        ..Default::default()
    }
}

/// Restaurant r-1's tickets, if the kitchen answers.
async fn tickets(client: &KitchenClient<Channel>) -> Option<Vec<Ticket>> {
    list(client, false).await
}

/// Restaurant r-1's tickets (only those still to work with `open_only`).
async fn list(client: &KitchenClient<Channel>, open_only: bool) -> Option<Vec<Ticket>> {
    let response = client
        .clone()
        .list_tickets(ListTicketsRequest {
            restaurant_id: "r-1".into(),
            open_only,
        })
        .await
        .ok()?;
    Some(response.into_inner().tickets)
}

async fn start(server: &NatsServer, service: &str) -> RunningService {
    RunningService::start(server, "restaurant", "restaurant", service, |s| {
        food_restaurant::SUBSYSTEM.run(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_menu_is_published_with_the_dishes_customers_can_order() {
    let server = NatsServer::start();
    let hub = server.hub("restaurant").await;
    let menus = start(&server, "menus").await;
    let _gateway = start(&server, "gateway").await;
    let mut client = MenusClient::new(menus.channel().await);

    let dish = |id: &str, price_cents: i64, available: bool| Dish {
        dish_id: id.into(),
        name: id.to_uppercase(),
        description: String::new(),
        price_cents,
        available,
    };
    client
        .save_menu(SaveMenuRequest {
            restaurant_id: "r-1".into(),
            restaurant_name: "Trattoria".into(),
            dishes: vec![dish("pizza", 900, true), dish("tiramisu", 500, false)],
        })
        .await
        .expect("menu saved");
    let saved = client
        .get_menu(GetMenuRequest {
            restaurant_id: "r-1".into(),
        })
        .await
        .expect("menu read")
        .into_inner();
    assert_eq!(saved.dishes.len(), 2);

    let changed = wait_for_events(&hub, MENU_CHANGED.event_type(), 1).await;
    let menu = MENU_CHANGED.decode(&changed[0]).expect("a Menu");
    assert_eq!(changed[0].scope, fractal::Scope::External);
    assert_eq!(menu.restaurant_name, "Trattoria");
    let items: Vec<&str> = menu.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(items, ["pizza"], "unavailable dishes are not offered");

    // Every problem of a bad menu is named, with where it is.
    let error = client
        .save_menu(SaveMenuRequest {
            restaurant_id: "r-1".into(),
            restaurant_name: " ".into(),
            dishes: vec![dish("pizza", 0, true), dish("pizza", 100, true)],
        })
        .await
        .expect_err("rejected");
    assert_eq!(error.code(), Code::InvalidArgument);
    for problem in [
        "restaurant_name: must not be empty",
        "dishes[0].price_cents: must be more than 0",
        "dishes[1].dish_id: `pizza` appears twice",
    ] {
        assert!(
            error.message().contains(problem),
            "{problem} in {}",
            error.message()
        );
    }
    let error = client
        .get_menu(GetMenuRequest {
            restaurant_id: "nowhere".into(),
        })
        .await
        .expect_err("no such menu");
    assert_eq!(error.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_accepted_and_made_ready_in_the_kitchen() {
    let server = NatsServer::start();
    let hub = server.hub("restaurant").await;
    let kitchen = start(&server, "kitchen").await;
    let _gateway = start(&server, "gateway").await;
    let mut client = KitchenClient::new(kitchen.channel().await);

    // Simulated upstream: ordering placed an order, and one malformed event (off the contract,
    // so built by hand) came along.
    simulate(
        &hub,
        [
            NewEvent::external(ORDER_PLACED.event_type(), "bad", &Menu::default()),
            ORDER_PLACED.event("o-1", &order("o-1", "r-1")),
        ],
    )
    .await;
    let request = TicketRequest {
        restaurant_id: "r-1".into(),
        order_id: "o-1".into(),
    };
    let tickets = eventually(Duration::from_secs(20), "the ticket in the kitchen", || {
        let client = client.clone();
        async move {
            let tickets = tickets(&client).await?;
            (!tickets.is_empty()).then_some(tickets)
        }
    })
    .await;
    assert_eq!(tickets[0].status(), TicketStatus::Received);
    assert_eq!(tickets[0].lines[0].quantity, 2);

    let error = client
        .mark_ready(request.clone())
        .await
        .expect_err("not accepted yet");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error
            .message()
            .contains("order `o-1` is received; it must be accepted to become ready"),
        "{}",
        error.message()
    );
    let accepted = client
        .accept_order(request.clone())
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(accepted.status(), TicketStatus::Accepted);
    let error = client
        .accept_order(request.clone())
        .await
        .expect_err("accepted twice");
    assert_eq!(error.code(), Code::FailedPrecondition);
    let open = list(&client, true).await.expect("listed");
    assert_eq!(open.len(), 1, "an accepted ticket is still open");
    client.mark_ready(request.clone()).await.expect("ready");
    // A ready ticket leaves the open list and stays in the full one.
    assert_eq!(list(&client, true).await.expect("listed"), vec![]);
    let all = list(&client, false).await.expect("listed");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status(), TicketStatus::Ready);
    let error = client
        .accept_order(TicketRequest {
            restaurant_id: "r-2".into(),
            order_id: "o-1".into(),
        })
        .await
        .expect_err("another restaurant's order");
    assert_eq!(error.code(), Code::NotFound);

    let ready = wait_for_events(&hub, ORDER_READY.event_type(), 1).await;
    let ready = ORDER_READY.decode(&ready[0]).expect("an Order");
    assert_eq!(ready.status(), OrderStatus::Ready);
    assert!(ready.accepted_at.is_some() && ready.ready_at.is_some());
    assert_eq!(ready.total_cents, 2099, "the full order travels on");
    wait_for_events(&hub, ORDER_ACCEPTED.event_type(), 1).await;

    // The malformed event became a fault of the gateway, not a crash or a silent drop.
    let faults = eventually(Duration::from_secs(20), "the fault", || {
        let hub = hub.clone();
        async move {
            let faults = faults(&hub).await;
            (!faults.is_empty()).then_some(faults)
        }
    })
    .await;
    assert_eq!(faults[0].service, "gateway");
    assert!(
        faults[0]
            .reason
            .contains("expected a `food.contracts.v1.Order`"),
        "{}",
        faults[0].reason
    );
}

/// The kitchen's view of the same events, delivered in order once, or shuffled and twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tickets_view_ignores_repeats_and_arrival_order() {
    let ticket = |status: TicketStatus, minute: u64| Ticket {
        order_id: "o-1".into(),
        restaurant_id: "r-1".into(),
        status: status.into(),
        received_at: Some((SystemTime::UNIX_EPOCH + Duration::from_secs(60)).into()),
        accepted_at: (minute >= 2)
            .then(|| (SystemTime::UNIX_EPOCH + Duration::from_secs(120)).into()),
        ready_at: (minute >= 3).then(|| (SystemTime::UNIX_EPOCH + Duration::from_secs(180)).into()),
        order: Some(order("o-1", "r-1")),
        ..Default::default()
    };
    let events = [
        (TICKET_RECEIVED, ticket(TicketStatus::Received, 1)),
        (TICKET_ACCEPTED, ticket(TicketStatus::Accepted, 2)),
        (TICKET_READY, ticket(TicketStatus::Ready, 3)),
    ];
    let make = |i: usize| {
        let (contract, ticket) = &events[i];
        contract.event("o-1", ticket)
    };
    let mut views = Vec::new();
    for order in [vec![0, 1, 2], vec![2, 0, 2, 1, 0, 1]] {
        let server = NatsServer::start();
        let hub = server.hub("restaurant").await;
        simulate(&hub, order.iter().map(|&i| make(i))).await;
        let kitchen = start(&server, "kitchen").await;
        let client = KitchenClient::new(kitchen.channel().await);
        let view = eventually(Duration::from_secs(20), "the ticket ready", || {
            let client = client.clone();
            async move {
                tickets(&client)
                    .await?
                    .first()
                    .filter(|t| t.status() == TicketStatus::Ready)
                    .cloned()
            }
        })
        .await;
        // Every repeat handled, the view is still the same.
        wait_until_consumed(&hub, "kitchen").await;
        let again = tickets(&client).await.expect("listed");
        assert_eq!(again, vec![view.clone()]);
        views.push(view);
    }
    assert_eq!(views[0], views[1]);
}

/// Operators' tools find the service through the standard health and reflection services,
/// both reflection versions (older clients, Python's grpcio-reflection among them, ask only
/// v1alpha), each listing the API, health and reflection itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kitchen_answers_health_checks_and_describes_itself() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::{v1, v1alpha};

    let server = NatsServer::start();
    let kitchen = start(&server, "kitchen").await;
    let channel = kitchen.channel().await;

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "food.restaurant.v1.Kitchen".into(),
        })
        .await
        .expect("health checked")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let response = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1")
        .into_inner()
        .message()
        .await
        .expect("a response")
        .expect("one");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a service list: {response:?}");
    };
    let v1_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let response = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha")
        .into_inner()
        .message()
        .await
        .expect("a response")
        .expect("one");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a service list: {response:?}");
    };
    let v1alpha_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();

    for names in [&v1_names, &v1alpha_names] {
        for expected in [
            "food.restaurant.v1.Kitchen",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} not in {names:?}"
            );
        }
    }
}
