//! `checkout`: what a customer does. Menus come from the `catalog` view, orders and their
//! timelines from the `orders` view; both are built from events, so answering never calls
//! another subsystem.

use std::time::SystemTime;

use food_contracts::v1::{Order, OrderLine, OrderStatus};
use fractal::grpc::GrpcServer;
use fractal::service::{Service, ServiceError};
use fractal::view::{Record, View, ViewError};
use fractal::{Event, HandlerError, Publisher};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::events::{CATALOG_UPDATED, MENU_BROWSED, ORDER_PROGRESSED, ORDER_SUBMITTED};
use crate::v1::checkout_server::{Checkout, CheckoutServer};
use crate::v1::{
    CatalogEntry, GetMenuRequest, GetOrderRequest, ListMenusRequest, ListMenusResponse,
    MenuBrowsed, MenuSummary, OrderProgressed, OrderStatusResponse, OrderSubmitted,
    PlaceOrderRequest, TimelineStep,
};

/// What delivery costs, whatever the order.
const DELIVERY_FEE_CENTS: i64 = 299;
const CURRENCY: &str = "EUR";
const MAX_QUANTITY: u32 = 50;
const MAX_LINES: usize = 100;

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let catalog = View::<CatalogEntry>::open(&service.hub, "catalog").await?;
    let orders = View::<Order>::open(&service.hub, "orders").await?;
    let consumer = service
        .consumer()
        .with_state(catalog.clone())
        .on(CATALOG_UPDATED, apply_catalog)
        .with_state(orders.clone())
        .on(ORDER_SUBMITTED, apply_submitted)
        .on(ORDER_PROGRESSED, apply_progressed);
    let api = CheckoutApi {
        catalog,
        orders,
        publisher: service.publisher(),
    };
    let grpc = GrpcServer::new()
        .service(CheckoutServer::new(api))
        .descriptors(crate::DESCRIPTORS);
    service.serve(grpc).run(consumer).await
}

/// Keeps the newest menu of each restaurant.
async fn apply_catalog(
    view: View<CatalogEntry>,
    entry: CatalogEntry,
    _event: Event,
) -> Result<(), HandlerError> {
    let time = food_contracts::time(entry.changed_at.as_ref());
    let key = entry.restaurant_id.clone();
    view.update(&key, |current| match current {
        Some(current) if current.time >= time => None,
        _ => Some(Record::new(entry.clone(), time)),
    })
    .await?;
    Ok(())
}

/// A checkout: the order as the customer placed it.
async fn apply_submitted(
    view: View<Order>,
    submitted: OrderSubmitted,
    event: Event,
) -> Result<(), HandlerError> {
    apply_order(view, submitted.order, event).await
}

/// Another subsystem's progress on the order.
async fn apply_progressed(
    view: View<Order>,
    progressed: OrderProgressed,
    event: Event,
) -> Result<(), HandlerError> {
    apply_order(view, progressed.order, event).await
}

async fn apply_order(
    view: View<Order>,
    order: Option<Order>,
    event: Event,
) -> Result<(), HandlerError> {
    let Some(order) = order else {
        return Err(HandlerError::permanent(format!(
            "{} carries no order",
            event.event_type
        )));
    };
    store_order(&view, &order, event.time).await?;
    Ok(())
}

/// Merges a snapshot into the order's entry (see [`Order::merge`]).
async fn store_order(view: &View<Order>, order: &Order, time: SystemTime) -> Result<(), ViewError> {
    view.update(&order.order_id, |current| match current {
        Some(current) => {
            let mut merged = current.value.clone();
            merged.merge(order);
            (merged != current.value).then(|| current.with(merged, time))
        }
        None => Some(Record::new(order.clone(), time)),
    })
    .await?;
    Ok(())
}

struct CheckoutApi {
    catalog: View<CatalogEntry>,
    orders: View<Order>,
    publisher: Publisher,
}

fn invalid(problem: String) -> Status {
    Status::invalid_argument(problem)
}

#[tonic::async_trait]
impl Checkout for CheckoutApi {
    async fn list_menus(
        &self,
        _request: Request<ListMenusRequest>,
    ) -> Result<Response<ListMenusResponse>, Status> {
        let mut menus: Vec<MenuSummary> = self
            .catalog
            .list()
            .await?
            .into_iter()
            .map(|(_, record)| MenuSummary {
                restaurant_id: record.value.restaurant_id,
                restaurant_name: record.value.restaurant_name,
                items: record.value.items.len() as u32,
            })
            .collect();
        menus.sort_by(|a, b| a.restaurant_name.cmp(&b.restaurant_name));
        Ok(Response::new(ListMenusResponse { menus }))
    }

    async fn get_menu(
        &self,
        request: Request<GetMenuRequest>,
    ) -> Result<Response<CatalogEntry>, Status> {
        let request = request.into_inner();
        food_contracts::check_id("restaurant_id", &request.restaurant_id).map_err(invalid)?;
        food_contracts::check_id("customer_id", &request.customer_id).map_err(invalid)?;
        let Some(entry) = self.catalog.get(&request.restaurant_id).await? else {
            return Err(Status::not_found(format!(
                "restaurant `{}` has no menu",
                request.restaurant_id
            )));
        };
        let browsed = MenuBrowsed {
            restaurant_id: request.restaurant_id.clone(),
            customer_id: request.customer_id,
            browsed_at: Some(SystemTime::now().into()),
        };
        self.publisher
            .publish(MENU_BROWSED.event(&request.restaurant_id, &browsed))
            .await?;
        Ok(Response::new(entry.value))
    }

    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let request = request.into_inner();
        food_contracts::check_id("customer_id", &request.customer_id).map_err(invalid)?;
        food_contracts::check_id("restaurant_id", &request.restaurant_id).map_err(invalid)?;
        let Some(menu) = self.catalog.get(&request.restaurant_id).await? else {
            return Err(Status::not_found(format!(
                "restaurant `{}` has no menu",
                request.restaurant_id
            )));
        };
        let menu = menu.value;
        let mut problems = Vec::new();
        if request.lines.is_empty() {
            problems.push("lines: an order needs at least one line".to_owned());
        }
        if request.lines.len() > MAX_LINES {
            problems.push(format!(
                "lines: at most {MAX_LINES} lines, not {}",
                request.lines.len()
            ));
        }
        let mut lines = Vec::new();
        for (i, line) in request.lines.iter().enumerate() {
            let Some(item) = menu.items.iter().find(|item| item.item_id == line.item_id) else {
                problems.push(format!(
                    "lines[{i}].item_id: `{}` is not on the menu of `{}`",
                    line.item_id, menu.restaurant_id
                ));
                continue;
            };
            if line.quantity == 0 || line.quantity > MAX_QUANTITY {
                problems.push(format!(
                    "lines[{i}].quantity: must be 1 to {MAX_QUANTITY}, not {}",
                    line.quantity
                ));
                continue;
            }
            let Some(total_cents) = item.price_cents.checked_mul(i64::from(line.quantity)) else {
                problems.push(format!("lines[{i}]: the line's total is too large"));
                continue;
            };
            lines.push(OrderLine {
                item_id: item.item_id.clone(),
                name: item.name.clone(),
                quantity: line.quantity,
                unit_price_cents: item.price_cents,
                total_cents,
            });
        }
        match &request.delivery_address {
            None => problems.push("delivery_address: missing".to_owned()),
            Some(address) => {
                for (field, value) in [
                    ("street", &address.street),
                    ("city", &address.city),
                    ("postal_code", &address.postal_code),
                ] {
                    if value.trim().is_empty() {
                        problems.push(format!("delivery_address.{field}: must not be empty"));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(invalid(problems.join("; ")));
        }

        let now = SystemTime::now();
        let subtotal = lines
            .iter()
            .try_fold(DELIVERY_FEE_CENTS, |sum, line| {
                sum.checked_add(line.total_cents)
            })
            .map(|total| total - DELIVERY_FEE_CENTS)
            .ok_or_else(|| invalid("lines: the order's total is too large".into()))?;
        let order = Order {
            order_id: ulid::Ulid::new().to_string(),
            customer_id: request.customer_id,
            restaurant_id: menu.restaurant_id,
            restaurant_name: menu.restaurant_name,
            lines,
            subtotal_cents: subtotal,
            delivery_fee_cents: DELIVERY_FEE_CENTS,
            total_cents: subtotal + DELIVERY_FEE_CENTS,
            currency: CURRENCY.to_owned(),
            delivery_address: request.delivery_address,
            status: OrderStatus::Placed.into(),
            placed_at: Some(now.into()),
            ..Default::default()
        };
        // The order's trace starts here: every subsystem's work on it continues this span.
        let span = tracing::info_span!("checkout", order_id = %order.order_id, customer_id = %order.customer_id);
        async {
            let submitted = OrderSubmitted {
                order: Some(order.clone()),
            };
            self.publisher
                .publish(ORDER_SUBMITTED.event(&order.order_id, &submitted).at(now))
                .await?;
            store_order(&self.orders, &order, now).await?;
            tracing::info!(total_cents = order.total_cents, "Order placed.");
            Ok(Response::new(order))
        }
        .instrument(span)
        .await
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<OrderStatusResponse>, Status> {
        let id = request.into_inner().order_id;
        food_contracts::check_id("order_id", &id).map_err(invalid)?;
        let Some(record) = self.orders.get(&id).await? else {
            return Err(Status::not_found(format!("there is no order `{id}`")));
        };
        let order = record.value;
        let timeline = order
            .steps()
            .into_iter()
            .map(|(status, at)| TimelineStep {
                status: status.into(),
                at: Some(at),
            })
            .collect();
        Ok(Response::new(OrderStatusResponse {
            order: Some(order),
            timeline,
        }))
    }
}
