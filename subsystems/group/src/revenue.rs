//! `revenue`: each city's orders placed and delivered, and what the delivered ones brought
//! in, counted from `order.placed` and `order.delivered` into one view keyed by city and
//! answered over gRPC. The city is the system an event came up from: the system of the hub
//! that relayed it to the group (`north` for `north.system`).
//!
//! Each event is counted in one compare-and-set with the ids of the city's last 1,024 events,
//! so a redelivery (a retried relay, a restarted consumer) counts once. An event replayed or
//! resubmitted after more than 1,024 newer ones of its city would count again.

use food_contracts::events::{ORDER_DELIVERED, ORDER_PLACED};
use food_contracts::v1::Order;
use fractal::grpc::GrpcServer;
use fractal::service::{Service, ServiceError};
use fractal::view::{Record, View};
use fractal::{Event, HandlerError};
use tonic::{Request, Response, Status};

use crate::v1::revenue_server::{Revenue, RevenueServer};
use crate::v1::{CitiesRequest, CitiesResponse, CityRecord, CityTotals};

/// How many counted event ids a city's totals remember to recognise a redelivery.
const RECENT: usize = 1024;

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let cities = View::<CityRecord>::open(&service.hub, "group_cities").await?;
    let consumer = service
        .consumer()
        .with_state(cities.clone())
        .on(ORDER_PLACED, placed)
        .on(ORDER_DELIVERED, delivered);
    let grpc = GrpcServer::new()
        .service(RevenueServer::new(RevenueApi { cities }))
        .descriptors(crate::DESCRIPTORS);
    service.serve(grpc).run(consumer).await
}

/// The city an event comes from, by its path of hubs: the system of the hub before the last
/// (`north` for `[north.ordering, north.system, group]`), or that hub itself if it is not in a
/// system.
fn city_of(path: &[String]) -> &str {
    let relayed_by = match path {
        [.., before, _last] => before.as_str(),
        [only] => only.as_str(),
        [] => "",
    };
    relayed_by
        .rsplit_once('.')
        .map_or(relayed_by, |(city, _)| city)
}

async fn placed(cities: View<CityRecord>, order: Order, event: Event) -> Result<(), HandlerError> {
    food_contracts::check_id("order_id", &order.order_id).map_err(HandlerError::permanent)?;
    count(&cities, &event, |totals| totals.orders_placed += 1).await
}

async fn delivered(
    cities: View<CityRecord>,
    order: Order,
    event: Event,
) -> Result<(), HandlerError> {
    food_contracts::check_id("order_id", &order.order_id).map_err(HandlerError::permanent)?;
    count(&cities, &event, |totals| {
        totals.orders_delivered += 1;
        totals.revenue_cents += order.total_cents;
    })
    .await
}

/// Applies `change` to the totals of the event's city unless the event was counted already:
/// one compare-and-set, so an event is counted once however often it is delivered (within the
/// city's last [`RECENT`] events).
async fn count(
    cities: &View<CityRecord>,
    event: &Event,
    change: impl Fn(&mut CityTotals),
) -> Result<(), HandlerError> {
    let city = city_of(&event.path).to_owned();
    cities
        .update(&city, |current| {
            let mut record = current.unwrap_or_else(|| {
                let totals = CityTotals {
                    city: city.clone(),
                    ..CityTotals::default()
                };
                Record::new(
                    CityRecord {
                        totals: Some(totals),
                        recent: Vec::new(),
                    },
                    event.time,
                )
            });
            let value = &mut record.value;
            if value.recent.iter().any(|id| *id == event.id) {
                return None;
            }
            change(value.totals.get_or_insert_with(CityTotals::default));
            if value.recent.len() >= RECENT {
                value.recent.drain(..=value.recent.len() - RECENT);
            }
            value.recent.push(event.id.clone());
            Some(record.clone().with(record.value, event.time))
        })
        .await?;
    Ok(())
}

struct RevenueApi {
    cities: View<CityRecord>,
}

#[tonic::async_trait]
impl Revenue for RevenueApi {
    async fn cities(
        &self,
        _request: Request<CitiesRequest>,
    ) -> Result<Response<CitiesResponse>, Status> {
        let cities = self
            .cities
            .list()
            .await?
            .into_iter()
            .filter_map(|(_, record)| record.value.totals)
            .collect();
        Ok(Response::new(CitiesResponse { cities }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_city_is_the_system_of_the_hub_that_relayed_the_event() {
        let path = |hubs: &[&str]| hubs.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            city_of(&path(&["north.ordering", "north.system", "group"])),
            "north"
        );
        assert_eq!(
            city_of(&path(&["eu.north.delivery", "eu.north.system", "group"])),
            "eu.north"
        );
        // A city whose hubs are not named by their path: the relaying hub stands for it.
        assert_eq!(city_of(&path(&["ordering", "system", "group"])), "system");
        assert_eq!(city_of(&path(&["group"])), "group");
    }
}
