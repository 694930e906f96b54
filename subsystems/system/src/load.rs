//! The load generator (`food-load`): an open-loop benchmark of a running system. Orders arrive
//! at a fixed rate whether or not earlier ones are done, from many customers, for several
//! restaurants; drivers poll for work as they would in their app. It measures what users feel
//! (placed → delivered, gRPC latencies), what it costs (CPU per order of every process and
//! hub) and whether the system kept up (orders in flight over time).
//!
//! Completion is observed, not polled: the generator listens to `order.delivered` on the
//! ordering hub, whose `Order` snapshot carries both `placed_at` and `delivered_at`, so the
//! figures do not depend on how often anyone polls.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use food_contracts::events::ORDER_DELIVERED;
use food_contracts::v1::Order;
use food_delivery::v1::drivers_client::DriversClient;
use food_delivery::v1::{
    DeliveryRequest, DeliveryStatus, DriverStatus, ListAssignedRequest, SetStatusRequest,
};
use food_ordering::v1::checkout_client::CheckoutClient;
use food_ordering::v1::{GetMenuRequest, GetOrderRequest};
use food_restaurant::v1::kitchen_client::KitchenClient;
use food_restaurant::v1::menus_client::MenusClient;
use food_restaurant::v1::{ListTicketsRequest, TicketRequest, TicketStatus};
use fractal_cli::running::RunningSystem;
use futures::StreamExt as _;
use tonic::transport::Channel;

use crate::demo::{DemoError, connect, menu, order_request, quantile};

/// What load to bring.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Orders placed per second.
    pub rate: f64,
    /// For how long orders arrive.
    pub duration: Duration,
    /// Drivers on shift.
    pub drivers: usize,
    /// Restaurants, each with its own menu.
    pub restaurants: usize,
    /// Customers placing the orders in turn.
    pub customers: usize,
    /// How often a driver's app asks for work (when it does not long-poll), and a kitchen
    /// display for tickets.
    pub poll: Duration,
    /// How long a driver's `ListAssigned` waits for work (a long poll); zero to poll.
    pub wait: Duration,
    /// How long a kitchen takes from accepting an order to having it ready.
    pub prep: Duration,
    /// How long to wait for the last orders after arrivals stop.
    pub drain: Duration,
    /// How often a customer tries browsing and placing an order again after an error (half a
    /// second apart), as an app would while a service restarts; 0 for never.
    pub retries: u32,
    /// Told when the menus are out and the drivers on shift, as the first orders arrive.
    pub arriving: Option<Arc<tokio::sync::Notify>>,
}

/// The orders of a load run.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every order placed, by id.
    pub placed: HashSet<String>,
    /// Every order seen delivered, by id.
    pub delivered: HashSet<String>,
}

/// gRPC latencies by method.
#[derive(Debug, Default)]
struct Latencies(Mutex<BTreeMap<&'static str, Vec<Duration>>>);

impl Latencies {
    fn record(&self, method: &'static str, took: Duration) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(method)
            .or_default()
            .push(took);
    }
}

/// Times one gRPC call as `method`.
async fn timed<T>(
    latencies: &Latencies,
    method: &'static str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let started = Instant::now();
    let result = call.await;
    latencies.record(method, started.elapsed());
    result.map(tonic::Response::into_inner)
}

struct Clients {
    menus: MenusClient<Channel>,
    kitchen: KitchenClient<Channel>,
    checkout: CheckoutClient<Channel>,
    drivers: DriversClient<Channel>,
}

/// Shared between the generator's tasks.
#[derive(Default)]
struct Tally {
    latencies: Latencies,
    /// Orders placed, by id.
    placed: Mutex<HashSet<String>>,
    /// Placed → delivered, from each delivered order's snapshot.
    took: Mutex<Vec<Duration>>,
    /// When each order was seen delivered, since the start.
    delivered_at: Mutex<Vec<Duration>>,
    delivered: Mutex<HashSet<String>>,
    /// Orders heard delivered before their `PlaceOrder` call returned (a slow answer while a
    /// hub fails over), with when: counted once it does.
    early: Mutex<HashMap<String, (Order, Duration)>>,
    /// Calls that failed, by method and code.
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    /// Counts `order`, heard delivered `at` since the start, if this run placed it and it
    /// was not counted yet; keeps it for later if its `PlaceOrder` call has not returned.
    /// Whether it was counted now.
    fn delivered(&self, order: &Order, at: Duration) -> bool {
        {
            let placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
            if !placed.contains(&order.order_id) {
                // Under the `placed` lock, so that `placed` cannot miss it.
                self.early
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(order.order_id.clone(), (order.clone(), at));
                return false;
            }
        }
        if !self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(order.order_id.clone())
        {
            return false;
        }
        let took = food_contracts::time(order.delivered_at.as_ref())
            .duration_since(food_contracts::time(order.placed_at.as_ref()))
            .unwrap_or_default();
        self.took
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(took);
        self.delivered_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(at);
        true
    }

    /// Records an order this run placed, and counts it if it was heard delivered already.
    fn placed(&self, order_id: String) {
        let early = {
            let mut placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
            placed.insert(order_id.clone());
            self.early
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&order_id)
        };
        if let Some((order, at)) = early {
            self.delivered(&order, at);
        }
    }

    fn error(&self, what: &str, status: &tonic::Status) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(format!("{what}: {:?}", status.code()))
            .or_default() += 1;
    }

    fn placed_count(&self) -> usize {
        self.placed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn delivered_count(&self) -> usize {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// CPU time used by a process so far, from `/proc/<pid>/stat` (user + system).
fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, in USER_HZ (100) ticks.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Every process of the running system by name: services, bridges, and the hubs' servers
/// (children of `fractal up` started with `-c …/hubs/<hub>.conf`), and the generator itself.
fn processes(system: &RunningSystem) -> BTreeMap<String, u32> {
    let mut found = BTreeMap::new();
    for (name, process) in &system.services {
        found.insert(name.clone(), process.pid);
    }
    for (name, process) in &system.bridges {
        found.insert(format!("bridge {name}"), process.pid);
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_hub = args.first().is_some_and(|a| a.ends_with("nats-server"));
            let conf = args.windows(2).find(|w| w[0] == "-c").map(|w| w[1].clone());
            if let (true, Some(conf)) = (is_hub, conf) {
                let path = Path::new(&conf);
                let in_state = path.parent().and_then(|p| p.parent()).is_some_and(|state| {
                    system
                        .services
                        .values()
                        .next()
                        .is_none_or(|s| Path::new(&s.log).starts_with(state))
                });
                if let (true, Some(hub)) = (in_state, path.file_stem()) {
                    found.insert(format!("hub {}", hub.to_string_lossy()), pid);
                }
            }
        }
    }
    found.insert("load generator".into(), std::process::id());
    found
}

/// Runs the load against `system` and prints what it measured; fails if an order was not
/// delivered.
pub async fn run(system: &RunningSystem, options: &LoadOptions) -> Result<Outcome, DemoError> {
    let timeout = Duration::from_secs(30);
    let clients = Clients {
        menus: MenusClient::new(connect(system, "restaurant/menus", timeout).await?),
        kitchen: KitchenClient::new(connect(system, "restaurant/kitchen", timeout).await?),
        checkout: CheckoutClient::new(connect(system, "ordering/checkout", timeout).await?),
        drivers: DriversClient::new(connect(system, "delivery/drivers", timeout).await?),
    };
    let total = (options.rate * options.duration.as_secs_f64()).round() as usize;
    println!(
        "Load on `{}`: {total} orders at {}/s for {:?} from {} customers, {} restaurants polling every {:?}, {} drivers {}.",
        system.name,
        options.rate,
        options.duration,
        options.customers,
        options.restaurants,
        options.poll,
        options.drivers,
        if options.wait.is_zero() {
            format!("polling every {:?}", options.poll)
        } else {
            format!("long-polling up to {:?}", options.wait)
        }
    );
    let restaurants = publish_menus(&clients, options.restaurants).await?;
    let tally = Arc::new(Tally::default());

    // Completion, as the ordering hub hears of it.
    let ordering = system
        .hub_config("ordering")
        .ok_or("the running system has no `ordering` hub")?;
    let hub = fractal::Hub::connect(&ordering).await?;
    // Read from the lake, not a plain subscription: an ordered consumer picks up where it was
    // after a lost connection (a hub node gone), where a subscription would miss what passed.
    let mut delivered_events = hub
        .jetstream()
        .get_stream(hub.events_stream())
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: fractal::wire::event_subject(
                ORDER_DELIVERED.scope(),
                ORDER_DELIVERED.event_type(),
            ),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let start = Instant::now();
    let watcher = {
        let (tally, checkout) = (tally.clone(), clients.checkout.clone());
        tokio::spawn(async move {
            while let Some(message) = delivered_events.next().await {
                let Ok(message) = message else {
                    continue;
                };
                let Ok(event) = fractal::Event::decode(
                    &message.subject,
                    message.headers.as_ref(),
                    message.payload.clone(),
                ) else {
                    continue;
                };
                let Ok(order) = ORDER_DELIVERED.decode(&event) else {
                    continue;
                };
                if !tally.delivered(&order, start.elapsed()) {
                    continue;
                }
                // The customer looks once, as their app would on a notification.
                let (tally, mut checkout) = (tally.clone(), checkout.clone());
                tokio::spawn(async move {
                    let request = GetOrderRequest {
                        order_id: order.order_id,
                    };
                    if let Err(e) =
                        timed(&tally.latencies, "GetOrder", checkout.get_order(request)).await
                    {
                        tally.error("GetOrder", &e);
                    }
                });
            }
        })
    };

    let before: BTreeMap<String, (u32, Option<Duration>)> = processes(system)
        .into_iter()
        .map(|(name, pid)| (name, (pid, cpu_of(pid))))
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let drivers = start_drivers(&clients, options, &tally, &done).await?;
    let kitchens: Vec<_> = restaurants
        .iter()
        .map(|restaurant| {
            tokio::spawn(kitchen_staff(
                tally.clone(),
                clients.kitchen.clone(),
                restaurant.clone(),
                options.poll,
                options.prep,
                done.clone(),
            ))
        })
        .collect();

    if let Some(arriving) = &options.arriving {
        arriving.notify_one();
    }
    // Orders in flight, once a second.
    let sampler = {
        let tally = tally.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let placed = tally.placed_count();
                let delivered = tally.delivered_count();
                let in_flight = placed.saturating_sub(delivered);
                println!(
                    "  {:>4.0}s  placed {placed:>6}  delivered {delivered:>6}  in flight {in_flight:>5}",
                    start.elapsed().as_secs_f64()
                );
                samples.push(in_flight);
            }
            samples
        })
    };

    // Open loop: order i arrives at i / rate, however the earlier ones fare.
    let mut orders = tokio::task::JoinSet::new();
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / options.rate);
        tokio::time::sleep_until(at.into()).await;
        let restaurant = restaurants[i % restaurants.len()].clone();
        let customer = i % options.customers.max(1);
        let (tally, checkout, retries) = (tally.clone(), clients.checkout.clone(), options.retries);
        orders.spawn(async move {
            for attempt in 0..=retries {
                if order(&tally, checkout.clone(), customer, restaurant.clone()).await {
                    break;
                }
                if attempt < retries {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }
    let arrivals_ended = start.elapsed();
    let deadline = Instant::now() + options.drain;
    while tally.delivered_count() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finished = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let after: BTreeMap<String, Option<Duration>> = before
        .iter()
        .map(|(name, (pid, _))| (name.clone(), cpu_of(*pid)))
        .collect();
    orders.abort_all();
    for task in drivers.into_iter().chain(kitchens) {
        let _ = task.await;
    }
    watcher.abort();
    let samples = sampler.await.unwrap_or_default();

    report(
        &tally,
        total,
        arrivals_ended,
        finished,
        options,
        &samples,
        &before,
        &after,
    );
    let delivered = tally.delivered_count();
    if delivered < total {
        return Err(format!(
            "{delivered} of {total} orders delivered within {:?} of the last arrival",
            options.drain
        )
        .into());
    }
    let take = |set: &Mutex<HashSet<String>>| {
        std::mem::take(&mut *set.lock().unwrap_or_else(PoisonError::into_inner))
    };
    Ok(Outcome {
        placed: take(&tally.placed),
        delivered: take(&tally.delivered),
    })
}

/// Each restaurant publishes its menu; returns their ids once customers see every menu.
async fn publish_menus(clients: &Clients, count: usize) -> Result<Vec<String>, DemoError> {
    let ids: Vec<String> = (1..=count.max(1)).map(|i| format!("r-{i}")).collect();
    for id in &ids {
        clients
            .menus
            .clone()
            .save_menu(menu(id, &format!("Restaurant {id}")))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let menus = clients
            .checkout
            .clone()
            .list_menus(food_ordering::v1::ListMenusRequest {})
            .await?
            .into_inner()
            .menus;
        let seen: HashSet<&str> = menus.iter().map(|m| m.restaurant_id.as_str()).collect();
        if ids.iter().all(|id| seen.contains(id.as_str())) {
            return Ok(ids);
        }
        if Instant::now() > deadline {
            return Err("the menus did not reach ordering within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One customer's order: browse the menu, place the order. False if a call failed.
async fn order(
    tally: &Tally,
    mut checkout: CheckoutClient<Channel>,
    customer: usize,
    restaurant: String,
) -> bool {
    let customer_id = format!("c-{customer}");
    let menu = match timed(
        &tally.latencies,
        "GetMenu",
        checkout.get_menu(GetMenuRequest {
            restaurant_id: restaurant.clone(),
            customer_id: customer_id.clone(),
        }),
    )
    .await
    {
        Ok(menu) => menu,
        Err(e) => {
            tally.error("GetMenu", &e);
            return false;
        }
    };
    let placed = timed(
        &tally.latencies,
        "PlaceOrder",
        checkout.place_order(order_request(customer, customer_id, &menu)),
    )
    .await;
    let order = match placed {
        Ok(order) => order,
        Err(e) => {
            tally.error("PlaceOrder", &e);
            return false;
        }
    };
    tally.placed(order.order_id);
    true
}

/// A restaurant's kitchen display: every `poll` it lists the open tickets, accepts each new
/// one and marks it ready after `prep`, until `done`.
async fn kitchen_staff(
    tally: Arc<Tally>,
    kitchen: KitchenClient<Channel>,
    restaurant: String,
    poll: Duration,
    prep: Duration,
    done: Arc<AtomicBool>,
) {
    // Tickets being worked on; one whose call failed is taken up again at the next look.
    let working = Arc::new(Mutex::new(HashSet::new()));
    while !done.load(Ordering::Relaxed) {
        let request = ListTicketsRequest {
            restaurant_id: restaurant.clone(),
            open_only: true,
        };
        let listed = timed(
            &tally.latencies,
            "ListTickets",
            kitchen.clone().list_tickets(request),
        )
        .await;
        let tickets = match listed {
            Ok(response) => response.tickets,
            Err(e) => {
                tally.error("ListTickets", &e);
                Vec::new()
            }
        };
        for ticket in tickets {
            let new = working
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ticket.order_id.clone());
            if !new {
                continue;
            }
            let received = ticket.status() == TicketStatus::Received;
            let (tally, mut kitchen, working) = (tally.clone(), kitchen.clone(), working.clone());
            let request = TicketRequest {
                restaurant_id: restaurant.clone(),
                order_id: ticket.order_id,
            };
            let forget = |working: &Mutex<HashSet<String>>, order_id: &str| {
                working
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(order_id);
            };
            tokio::spawn(async move {
                let accepted = if received {
                    let accept = kitchen.accept_order(request.clone());
                    timed(&tally.latencies, "AcceptOrder", accept)
                        .await
                        .map(|_| ())
                } else {
                    Ok(())
                };
                if let Err(e) = accepted {
                    forget(&working, &request.order_id);
                    return tally.error("AcceptOrder", &e);
                }
                tokio::time::sleep(prep).await;
                let order_id = request.order_id.clone();
                if let Err(e) =
                    timed(&tally.latencies, "MarkReady", kitchen.mark_ready(request)).await
                {
                    forget(&working, &order_id);
                    tally.error("MarkReady", &e);
                }
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// The drivers go on shift and work until `done`, then go off shift.
async fn start_drivers(
    clients: &Clients,
    options: &LoadOptions,
    tally: &Arc<Tally>,
    done: &Arc<AtomicBool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, DemoError> {
    let mut tasks = Vec::new();
    for i in 0..options.drivers {
        let driver_id = format!("load-d-{i}");
        let status = |status: DriverStatus| SetStatusRequest {
            driver_id: driver_id.clone(),
            name: format!("Driver {i}"),
            status: status.into(),
        };
        let mut drivers = clients.drivers.clone();
        timed(
            &tally.latencies,
            "SetStatus",
            drivers.set_status(status(DriverStatus::Available)),
        )
        .await?;
        let off = status(DriverStatus::Offline);
        let (tally, done, poll, wait) = (tally.clone(), done.clone(), options.poll, options.wait);
        let method = if wait.is_zero() {
            "ListAssigned"
        } else {
            "ListAssigned (long poll)"
        };
        tasks.push(tokio::spawn(async move {
            // Spread the polls over the interval, as real drivers' apps are.
            tokio::time::sleep(poll.mul_f64(i as f64 / 97.0 % 1.0)).await;
            while !done.load(Ordering::Relaxed) {
                let request = ListAssignedRequest {
                    driver_id: driver_id.clone(),
                    wait_ms: wait.as_millis().try_into().unwrap_or(u32::MAX),
                };
                let assigned =
                    match timed(&tally.latencies, method, drivers.list_assigned(request)).await {
                        Ok(response) => response.deliveries,
                        Err(e) => {
                            tally.error("ListAssigned", &e);
                            Vec::new()
                        }
                    };
                for delivery in assigned {
                    // Picked up already when a call to deliver it failed: only deliver it.
                    let picked_up = delivery.status() == DeliveryStatus::PickedUp;
                    let request = DeliveryRequest {
                        driver_id: driver_id.clone(),
                        order_id: delivery.order_id,
                    };
                    if !picked_up
                        && let Err(e) =
                            timed(&tally.latencies, "PickUp", drivers.pick_up(request.clone()))
                                .await
                    {
                        tally.error("PickUp", &e);
                        continue;
                    }
                    if let Err(e) =
                        timed(&tally.latencies, "Deliver", drivers.deliver(request)).await
                    {
                        tally.error("Deliver", &e);
                    }
                }
                if wait.is_zero() {
                    tokio::time::sleep(poll).await;
                }
            }
            let _ = drivers.set_status(off).await;
        }));
    }
    Ok(tasks)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[allow(clippy::too_many_arguments)]
fn report(
    tally: &Tally,
    total: usize,
    arrivals_ended: Duration,
    finished: Duration,
    options: &LoadOptions,
    samples: &[usize],
    before: &BTreeMap<String, (u32, Option<Duration>)>,
    after: &BTreeMap<String, Option<Duration>>,
) {
    let took = tally
        .took
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut delivered_at = tally
        .delivered_at
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    delivered_at.sort();
    let delivered = took.len();
    println!("\nDelivered {delivered}/{total} orders.");
    // Sustained rate: deliveries per second between the first second and the end of arrivals,
    // when the system is neither filling up nor draining.
    let window = (Duration::from_secs(1), arrivals_ended);
    let in_window = delivered_at
        .iter()
        .filter(|t| **t >= window.0 && **t <= window.1)
        .count();
    let span = window.1.saturating_sub(window.0).as_secs_f64();
    if span > 0.0 {
        println!(
            "Sustained: {:.1} orders/s delivered while {:.1}/s arrived (from 1 s to {:.1} s); all done {:.1} s after the last arrival.",
            in_window as f64 / span,
            options.rate,
            arrivals_ended.as_secs_f64(),
            finished.saturating_sub(arrivals_ended).as_secs_f64()
        );
    }
    println!(
        "Placed → delivered: p50 {} ms, p99 {} ms, max {} ms.",
        ms(quantile(&took, 0.5)),
        ms(quantile(&took, 0.99)),
        ms(took.iter().max().copied().unwrap_or_default())
    );
    // Kept up: deliveries went out as fast as orders came in, and every order arrived.
    let sustained = if span > 0.0 {
        in_window as f64 / span
    } else {
        0.0
    };
    let kept_up = delivered == total && sustained >= 0.95 * options.rate;
    let peak = samples.iter().copied().max().unwrap_or(0);
    let last = samples
        .get(arrivals_ended.as_secs() as usize)
        .or(samples.last())
        .copied()
        .unwrap_or(0);
    println!(
        "Kept up: {} (orders in flight: peak {peak}, {last} when arrivals stopped).",
        if kept_up { "yes" } else { "no" }
    );
    println!("\ngRPC latency (ms):");
    println!(
        "  {:<14} {:>8} {:>8} {:>8} {:>8}",
        "method", "calls", "p50", "p99", "max"
    );
    let latencies = tally
        .latencies
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (method, samples) in latencies.iter() {
        println!(
            "  {method:<14} {:>8} {:>8} {:>8} {:>8}",
            samples.len(),
            ms(quantile(samples, 0.5)),
            ms(quantile(samples, 0.99)),
            ms(samples.iter().max().copied().unwrap_or_default())
        );
    }
    let errors = tally.errors.lock().unwrap_or_else(PoisonError::into_inner);
    if !errors.is_empty() {
        println!("Failed calls:");
        for (what, count) in errors.iter() {
            println!("  {what}: {count}");
        }
    }

    println!("\nCPU per delivered order (ms), over the whole run:");
    let mut system_total = Duration::ZERO;
    let per_order = |d: Duration| d.as_secs_f64() * 1000.0 / delivered.max(1) as f64;
    for (name, (_, cpu_before)) in before {
        let (Some(cpu_before), Some(Some(cpu_after))) = (cpu_before, after.get(name)) else {
            println!("  {name:<34} (exited)");
            continue;
        };
        let used = cpu_after.saturating_sub(*cpu_before);
        if name != "load generator" {
            system_total += used;
        }
        println!("  {name:<34} {:>8.3}", per_order(used));
    }
    println!(
        "  {:<34} {:>8.3}  ({:.0}% of one core over {:.1} s)",
        "system (all but the generator)",
        per_order(system_total),
        system_total.as_secs_f64() * 100.0 / finished.as_secs_f64(),
        finished.as_secs_f64()
    );
}
