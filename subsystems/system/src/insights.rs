//! `insights`: menu views per restaurant and orders placed per minute, counted from the facts
//! (`menu.viewed`, `order.placed`) into two views, answered over gRPC and exported as metrics.

use std::time::{Duration, SystemTime};

use food_contracts::events::{MENU_VIEWED, ORDER_PLACED};
use food_contracts::v1::{MenuViewed, Order};
use fractal::grpc::GrpcServer;
use fractal::service::{Service, ServiceError};
use fractal::view::{Record, View};
use fractal::{Event, HandlerError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::{Request, Response, Status};

use crate::v1::insights_server::{Insights, InsightsServer};
use crate::v1::{
    Count, MenuViewsRequest, MenuViewsResponse, MinuteCount, OrdersPerMinuteRequest,
    OrdersPerMinuteResponse, RestaurantViews,
};

/// How many counted event ids a count remembers to recognise a redelivery.
const RECENT: usize = 1024;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestaurantLabel {
    restaurant_id: String,
}

#[derive(Clone)]
struct Metrics {
    menu_views: Family<RestaurantLabel, Counter>,
    orders_placed: Counter,
}

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let menu_views = View::<Count>::open(&service.hub, "insights_menu_views").await?;
    let orders = View::<Count>::open(&service.hub, "insights_orders_per_minute").await?;
    let metrics = Metrics {
        menu_views: Family::default(),
        orders_placed: Counter::default(),
    };
    fractal::metrics::register(
        "food_insights_menu_views",
        "Menu views counted, per restaurant.",
        metrics.menu_views.clone(),
    );
    fractal::metrics::register(
        "food_insights_orders_placed",
        "Orders placed counted.",
        metrics.orders_placed.clone(),
    );
    let counts = Counts {
        menu_views: menu_views.clone(),
        orders: orders.clone(),
        metrics,
    };
    let consumer = service
        .consumer()
        .with_state(counts)
        .on(MENU_VIEWED, menu_viewed)
        .on(ORDER_PLACED, order_placed);
    let grpc = GrpcServer::new()
        .service(InsightsServer::new(InsightsApi { menu_views, orders }))
        .descriptors(crate::DESCRIPTORS);
    service.serve(grpc).run(consumer).await
}

/// What the handlers count into.
#[derive(Clone)]
struct Counts {
    menu_views: View<Count>,
    orders: View<Count>,
    metrics: Metrics,
}

/// Counts a menu view for its restaurant.
async fn menu_viewed(counts: Counts, viewed: MenuViewed, event: Event) -> Result<(), HandlerError> {
    food_contracts::check_id("restaurant_id", &viewed.restaurant_id)
        .map_err(HandlerError::permanent)?;
    if count(&counts.menu_views, &viewed.restaurant_id, &event).await? {
        counts
            .metrics
            .menu_views
            .get_or_create(&RestaurantLabel {
                restaurant_id: viewed.restaurant_id,
            })
            .inc();
    }
    Ok(())
}

/// Counts an order placed in the minute it was placed.
async fn order_placed(counts: Counts, order: Order, event: Event) -> Result<(), HandlerError> {
    let Some(placed_at) = order.placed_at.as_ref() else {
        return Err(HandlerError::permanent(format!(
            "order `{}` was placed at no time",
            order.order_id
        )));
    };
    let placed = food_contracts::time(Some(placed_at));
    if count(&counts.orders, &minute_key(placed), &event).await? {
        counts.metrics.orders_placed.inc();
    }
    Ok(())
}

/// Counts `event` under `key` unless it was counted already; returns whether it was.
async fn count(view: &View<Count>, key: &str, event: &Event) -> Result<bool, HandlerError> {
    let mut counted = false;
    view.update(key, |current| {
        counted = false;
        let mut record = current.unwrap_or_else(|| Record::new(Count::default(), event.time));
        if record.value.recent.iter().any(|id| *id == event.id) {
            return None;
        }
        record.value.count += 1;
        record.value.recent.push(event.id.clone());
        if record.value.recent.len() > RECENT {
            record.value.recent.remove(0);
        }
        counted = true;
        Some(record.clone().with(record.value, event.time))
    })
    .await?;
    Ok(counted)
}

/// The key of the minute `time` falls in: `m<minutes since the epoch>`.
fn minute_key(time: SystemTime) -> String {
    let minutes = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 60;
    format!("m{minutes:010}")
}

fn minute_of(key: &str) -> Option<SystemTime> {
    let minutes: u64 = key.strip_prefix('m')?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(minutes * 60))
}

struct InsightsApi {
    menu_views: View<Count>,
    orders: View<Count>,
}

#[tonic::async_trait]
impl Insights for InsightsApi {
    async fn menu_views(
        &self,
        _request: Request<MenuViewsRequest>,
    ) -> Result<Response<MenuViewsResponse>, Status> {
        let mut restaurants: Vec<RestaurantViews> = self
            .menu_views
            .list()
            .await?
            .into_iter()
            .map(|(restaurant_id, record)| RestaurantViews {
                restaurant_id,
                views: record.value.count,
            })
            .collect();
        restaurants.sort_by(|a, b| {
            b.views
                .cmp(&a.views)
                .then(a.restaurant_id.cmp(&b.restaurant_id))
        });
        Ok(Response::new(MenuViewsResponse { restaurants }))
    }

    async fn orders_per_minute(
        &self,
        request: Request<OrdersPerMinuteRequest>,
    ) -> Result<Response<OrdersPerMinuteResponse>, Status> {
        let wanted = match request.into_inner().minutes {
            0 => 60,
            n => n as usize,
        };
        let mut minutes: Vec<MinuteCount> = self
            .orders
            .list()
            .await?
            .into_iter()
            .filter_map(|(key, record)| {
                Some(MinuteCount {
                    minute: Some(minute_of(&key)?.into()),
                    orders: record.value.count,
                })
            })
            .collect();
        // Keys sort by minute; newest first.
        minutes.reverse();
        minutes.truncate(wanted);
        Ok(Response::new(OrdersPerMinuteResponse { minutes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_keys_round_trip_and_sort_by_time() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_123);
        let key = minute_key(t);
        assert_eq!(
            minute_of(&key),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_120))
        );
        let later = minute_key(t + Duration::from_secs(600));
        assert!(later > key);
    }
}
