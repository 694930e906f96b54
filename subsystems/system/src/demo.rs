//! The demo: customers, a restaurant and drivers drive orders end to end through the gRPC APIs
//! of a running system, as they would for real. Used by `food-demo` (which `fractal demo`
//! runs) and by the end-to-end tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use food_contracts::v1::{Address, OrderStatus};
use food_delivery::v1::drivers_client::DriversClient;
use food_delivery::v1::{DeliveryRequest, DriverStatus, ListAssignedRequest, SetStatusRequest};
use food_ordering::v1::checkout_client::CheckoutClient;
use food_ordering::v1::{
    CatalogEntry, GetMenuRequest, GetOrderRequest, LineRequest, ListMenusRequest,
    OrderStatusResponse, PlaceOrderRequest,
};
use food_restaurant::v1::kitchen_client::KitchenClient;
use food_restaurant::v1::menus_client::MenusClient;
use food_restaurant::v1::{Dish, SaveMenuRequest, TicketRequest};
use fractal_cli::running::RunningSystem;
use tonic::Code;
use tonic::transport::Channel;

/// The cities of a running system: the prefix of each food-delivery system in it (`north.`,
/// `south.` when a group includes them; one empty prefix for a food-delivery system on its
/// own), found by their `ordering/checkout` service.
pub fn cities(system: &RunningSystem) -> Vec<String> {
    system
        .services
        .keys()
        .filter_map(|name| name.strip_suffix("ordering/checkout"))
        .filter(|city| city.is_empty() || city.ends_with('.'))
        .map(str::to_owned)
        .collect()
}

/// The restaurant the demo orders from.
pub const RESTAURANT: &str = "r-1";

/// Hears of each step of each order: `(order_id, step)`.
pub type StepListener = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Why the demo did not deliver every order.
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// The actors' handles on the system's gRPC APIs.
#[derive(Debug, Clone)]
pub struct Actors {
    menus: MenusClient<Channel>,
    kitchen: KitchenClient<Channel>,
    checkout: CheckoutClient<Channel>,
    drivers: DriversClient<Channel>,
    timeout: Duration,
}

/// One delivered order as its customer last saw it, and how long it took.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The order and its timeline.
    pub status: OrderStatusResponse,
    /// From placing the order to seeing it delivered.
    pub took: Duration,
}

pub(crate) async fn connect(
    system: &RunningSystem,
    service: &str,
    timeout: Duration,
) -> Result<Channel, DemoError> {
    let endpoint = tonic::transport::Endpoint::from_shared(system.grpc(service)?.to_owned())?;
    let deadline = Instant::now() + timeout;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{service} does not answer at {}: {e}", endpoint.uri()).into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls `check` every 50 ms until it gives a value; fails naming `what` after `timeout`.
async fn wait<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DemoError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("gave up after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Actors {
    /// Connects to the BFFs of `system`, waiting up to `timeout` for each (and for each step of
    /// an order later).
    pub async fn connect(system: &RunningSystem, timeout: Duration) -> Result<Actors, DemoError> {
        Self::connect_in(system, "", timeout).await
    }

    /// [`Actors::connect`] to the city whose services' names start with `city` (`north.`;
    /// empty for a food-delivery system on its own).
    pub async fn connect_in(
        system: &RunningSystem,
        city: &str,
        timeout: Duration,
    ) -> Result<Actors, DemoError> {
        let channel = |service: &str| {
            let name = format!("{city}{service}");
            async move { connect(system, &name, timeout).await }
        };
        Ok(Actors {
            menus: MenusClient::new(channel("restaurant/menus").await?),
            kitchen: KitchenClient::new(channel("restaurant/kitchen").await?),
            checkout: CheckoutClient::new(channel("ordering/checkout").await?),
            drivers: DriversClient::new(channel("delivery/drivers").await?),
            timeout,
        })
    }

    /// The restaurant publishes its menu; returns once customers can see it.
    pub async fn publish_menu(&self) -> Result<(), DemoError> {
        self.menus
            .clone()
            .save_menu(menu(RESTAURANT, "Trattoria Fractale"))
            .await?;
        wait(self.timeout, "the menu to reach ordering", || {
            let mut checkout = self.checkout.clone();
            async move {
                let menus = checkout
                    .list_menus(ListMenusRequest {})
                    .await?
                    .into_inner()
                    .menus;
                Ok(menus
                    .iter()
                    .any(|m| m.restaurant_id == RESTAURANT)
                    .then_some(()))
            }
        })
        .await
    }

    /// `count` drivers go on shift and deliver whatever they are assigned until `done`, then
    /// go off shift; each task returns the orders its driver delivered.
    pub fn start_drivers(
        &self,
        count: usize,
        done: Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<Result<Vec<String>, DemoError>>> {
        (0..count)
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
                        .await?;
                    let mut delivered = Vec::new();
                    while !done.load(Ordering::Relaxed) {
                        let assigned = drivers
                            .list_assigned(ListAssignedRequest {
                                driver_id: driver_id.clone(),
                                // A long poll: answered as soon as an order is assigned.
                                wait_ms: 200,
                            })
                            .await?
                            .into_inner()
                            .deliveries;
                        for delivery in assigned {
                            let request = DeliveryRequest {
                                driver_id: driver_id.clone(),
                                order_id: delivery.order_id.clone(),
                            };
                            drivers.pick_up(request.clone()).await?;
                            drivers.deliver(request).await?;
                            delivered.push(delivery.order_id);
                        }
                    }
                    // Off shift, so that a later run's orders do not wait for this driver.
                    drivers
                        .set_status(SetStatusRequest {
                            driver_id,
                            name: format!("Driver {i}"),
                            status: DriverStatus::Offline.into(),
                        })
                        .await?;
                    Ok(delivered)
                })
            })
            .collect()
    }

    /// One customer's order, from browsing the menu to its delivery, the restaurant working
    /// it as it arrives; `step` hears of each step.
    pub async fn order(
        &self,
        customer: usize,
        step: &(dyn Fn(&str, &str) + Send + Sync),
    ) -> Result<Delivered, DemoError> {
        let (mut checkout, mut kitchen) = (self.checkout.clone(), self.kitchen.clone());
        let customer_id = format!("c-{customer}");
        let menu = checkout
            .get_menu(GetMenuRequest {
                restaurant_id: RESTAURANT.into(),
                customer_id: customer_id.clone(),
            })
            .await?
            .into_inner();
        let started = Instant::now();
        let order = checkout
            .place_order(order_request(customer, customer_id, &menu))
            .await?
            .into_inner();
        step(&order.order_id, "placed");
        let ticket = TicketRequest {
            restaurant_id: RESTAURANT.into(),
            order_id: order.order_id.clone(),
        };
        // The order reaches the kitchen through the hubs and bridges in between.
        wait(self.timeout, "the order to reach the kitchen", || {
            let (mut kitchen, ticket) = (kitchen.clone(), ticket.clone());
            async move {
                match kitchen.accept_order(ticket).await {
                    Ok(_) => Ok(Some(())),
                    Err(e) if e.code() == Code::NotFound => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        })
        .await?;
        step(&order.order_id, "accepted");
        kitchen.mark_ready(ticket).await?;
        step(&order.order_id, "ready");
        let status = wait(self.timeout, "the order to be delivered", || {
            let (mut checkout, order_id) = (checkout.clone(), order.order_id.clone());
            async move {
                let response = checkout
                    .get_order(GetOrderRequest { order_id })
                    .await?
                    .into_inner();
                let delivered = response
                    .order
                    .as_ref()
                    .is_some_and(|o| o.status() == OrderStatus::Delivered);
                Ok(delivered.then_some(response))
            }
        })
        .await?;
        step(&order.order_id, "delivered");
        Ok(Delivered {
            status,
            took: started.elapsed(),
        })
    }

    /// Drives `orders` orders at once with `drivers` drivers; returns each delivered order
    /// (in customer order), or the first failure.
    pub async fn run(
        &self,
        orders: usize,
        drivers: usize,
        step: StepListener,
    ) -> Result<Vec<Delivered>, DemoError> {
        self.publish_menu().await?;
        let done = Arc::new(AtomicBool::new(false));
        let driver_tasks = self.start_drivers(drivers, done.clone());
        let results = futures::future::join_all((0..orders).map(|customer| {
            let step = step.clone();
            async move { self.order(customer, step.as_ref()).await }
        }))
        .await;
        done.store(true, Ordering::Relaxed);
        let mut by_drivers = std::collections::HashSet::new();
        for task in driver_tasks {
            by_drivers.extend(task.await??);
        }
        let delivered: Vec<Delivered> = results.into_iter().collect::<Result<_, _>>()?;
        // Drivers may also have finished orders an interrupted earlier run left behind.
        for order in &delivered {
            let id = order
                .status
                .order
                .as_ref()
                .map(|o| o.order_id.as_str())
                .unwrap_or("");
            if !by_drivers.contains(id) {
                return Err(
                    format!("order {id} reached its customer, but no driver delivered it").into(),
                );
            }
        }
        Ok(delivered)
    }
}

/// The menu every demo restaurant serves: a pizza and a salad.
pub(crate) fn menu(restaurant_id: &str, restaurant_name: &str) -> SaveMenuRequest {
    let dish = |id: &str, name: &str, price_cents: i64| Dish {
        dish_id: id.into(),
        name: name.into(),
        description: format!("The house {name}."),
        price_cents,
        available: true,
    };
    SaveMenuRequest {
        restaurant_id: restaurant_id.into(),
        restaurant_name: restaurant_name.into(),
        dishes: vec![
            dish("pizza", "pizza margherita", 900),
            dish("salad", "green salad", 700),
        ],
    }
}

/// Customer number `customer`'s order of everything on `menu`, one to three of each.
pub(crate) fn order_request(
    customer: usize,
    customer_id: String,
    menu: &CatalogEntry,
) -> PlaceOrderRequest {
    PlaceOrderRequest {
        customer_id,
        restaurant_id: menu.restaurant_id.clone(),
        lines: menu
            .items
            .iter()
            .map(|item| LineRequest {
                item_id: item.item_id.clone(),
                quantity: 1 + (customer % 3) as u32,
            })
            .collect(),
        delivery_address: Some(Address {
            street: format!("{} Main Street", customer + 1),
            city: "Springfield".into(),
            postal_code: "12345".into(),
        }),
    }
}

/// The names of an order's steps as a customer reads them.
pub fn step_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Unspecified => "unknown",
        OrderStatus::Placed => "placed",
        OrderStatus::Accepted => "accepted",
        OrderStatus::Ready => "ready",
        OrderStatus::DriverAssigned => "driver assigned",
        OrderStatus::PickedUp => "picked up",
        OrderStatus::Delivered => "delivered",
    }
}

/// The customer's timeline of a delivered order, one step per line, with seconds since it was
/// placed.
pub fn timeline(delivered: &Delivered) -> String {
    let placed = delivered
        .status
        .timeline
        .first()
        .map(|s| food_contracts::time(s.at.as_ref()))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut text = String::new();
    for step in &delivered.status.timeline {
        let at = food_contracts::time(step.at.as_ref());
        let since = at.duration_since(placed).unwrap_or_default();
        text.push_str(&format!(
            "    +{:>7.3}s  {}\n",
            since.as_secs_f64(),
            step_name(step.status())
        ));
    }
    text
}

/// A counter of orders at each step, for progress lines.
#[derive(Debug, Default)]
pub struct Progress {
    placed: AtomicUsize,
    delivered: AtomicUsize,
}

impl Progress {
    /// Counts a step; returns `(placed, delivered)` so far.
    pub fn count(&self, step: &str) -> (usize, usize) {
        match step {
            "placed" => {
                self.placed.fetch_add(1, Ordering::Relaxed);
            }
            "delivered" => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        (
            self.placed.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
        )
    }
}

/// The `q`-quantile (0..=1) of `durations`.
pub fn quantile(durations: &[Duration], q: f64) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
