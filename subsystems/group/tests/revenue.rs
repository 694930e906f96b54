//! The group level alone, on its own hub: the orders each city's system hub would bridge up
//! are simulated, published as if from each city's hubs (a publisher names the hub it writes
//! to, which becomes the events' path); no city runs.

use std::time::Duration;

use food_contracts::events::{ORDER_DELIVERED, ORDER_PLACED};
use food_contracts::v1::Order;
use food_group::v1::revenue_client::RevenueClient;
use food_group::v1::{CitiesRequest, CityTotals};
use fractal::{NewEvent, Publisher};
use fractal_testkit::{NatsServer, RunningService, eventually};

fn order(order_id: &str, total_cents: i64) -> Order {
    Order {
        order_id: order_id.into(),
        customer_id: "c-1".into(),
        restaurant_id: "r-1".into(),
        total_cents,
        currency: "EUR".into(),
        ..Default::default()
    }
}

/// A publisher whose events come from `hub` (their origin), written to the test's hub.
async fn from(server: &NatsServer, hub: &str) -> Publisher {
    let connected = fractal::Hub::connect(&server.hub_config(hub))
        .await
        .expect("connects");
    Publisher::new(&connected, &format!("{hub}/gateway"))
}

async fn cities(client: &RevenueClient<tonic::transport::Channel>) -> Vec<CityTotals> {
    let mut cities = client
        .clone()
        .cities(CitiesRequest {})
        .await
        .map(|r| r.into_inner().cities)
        .unwrap_or_default();
    cities.sort_by(|a, b| a.city.cmp(&b.city));
    cities
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_citys_orders_are_counted_once_by_where_they_were_placed() {
    let server = NatsServer::start();
    let _hub = server.hub("group").await;
    let revenue = RunningService::start(&server, "group", "group", "revenue", |s| {
        food_group::SUBSYSTEM.run(s)
    })
    .await;
    let client = RevenueClient::new(revenue.channel().await);

    let (north, south) = (
        from(&server, "north.ordering").await,
        from(&server, "south.ordering").await,
    );
    let north_delivery = from(&server, "north.delivery").await;
    let placed: Vec<NewEvent> = ["n-1", "n-2", "n-3"]
        .iter()
        .map(|id| ORDER_PLACED.event(*id, &order(id, 2099)))
        .collect();
    north.publish_all(placed.clone()).await.expect("published");
    south
        .publish_all(vec![
            ORDER_PLACED.event("s-1", &order("s-1", 1500)),
            ORDER_PLACED.event("s-2", &order("s-2", 1500)),
        ])
        .await
        .expect("published");
    north_delivery
        .publish(ORDER_DELIVERED.event("n-1", &order("n-1", 2099)))
        .await
        .expect("published");
    // The same fact again (a retried relay) is stored once and counted once.
    north
        .publish(placed[0].clone())
        .await
        .expect("published again");

    let totals = eventually(Duration::from_secs(20), "both cities counted", || {
        let client = client.clone();
        async move {
            let cities = cities(&client).await;
            let counted: u64 = cities
                .iter()
                .map(|c| c.orders_placed + c.orders_delivered)
                .sum();
            (counted == 6).then_some(cities)
        }
    })
    .await;
    let summary: Vec<(&str, u64, u64, i64)> = totals
        .iter()
        .map(|c| {
            (
                c.city.as_str(),
                c.orders_placed,
                c.orders_delivered,
                c.revenue_cents,
            )
        })
        .collect();
    // The city is the system of the hub the event comes from: `north.delivery` counts for
    // `north` too.
    assert_eq!(summary, [("north", 3, 1, 2099), ("south", 2, 0, 0)]);
}
