//! `revenue`: each city's orders placed and delivered, and what the delivered ones brought
//! in, counted from `order.placed` and `order.delivered` into one view keyed by city and
//! answered over gRPC. The city is where the order was first published: the system part of
//! the event's origin hub (`north` for `north.ordering`).

use food_contracts::events::{ORDER_DELIVERED, ORDER_PLACED};
use food_contracts::v1::Order;
use fractal::grpc::GrpcServer;
use fractal::service::{Service, ServiceError};
use fractal::view::{Record, View};
use fractal::{Event, HandlerError};
use tonic::{Request, Response, Status};

use crate::v1::revenue_server::{Revenue, RevenueServer};
use crate::v1::{CitiesRequest, CitiesResponse, CityTotals};

/// How many counted event ids a city's totals remember to recognise a redelivery.
const RECENT: usize = 1024;

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let cities = View::<CityTotals>::open(&service.hub, "group_cities").await?;
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

/// The city an event comes from: its origin hub's path without the hub (`north` for
/// `north.ordering`, `eu.north` for `eu.north.ordering`), or the hub itself if it is not in
/// a city.
pub fn city_of(origin: &str) -> &str {
    origin.rsplit_once('.').map_or(origin, |(city, _)| city)
}

async fn placed(cities: View<CityTotals>, order: Order, event: Event) -> Result<(), HandlerError> {
    food_contracts::check_id("order_id", &order.order_id).map_err(HandlerError::permanent)?;
    count(&cities, &event, |totals| totals.orders_placed += 1).await
}

async fn delivered(
    cities: View<CityTotals>,
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
/// one compare-and-set, so an event is counted once however often it is delivered.
async fn count(
    cities: &View<CityTotals>,
    event: &Event,
    change: impl Fn(&mut CityTotals),
) -> Result<(), HandlerError> {
    let city = city_of(&event.origin).to_owned();
    cities
        .update(&city, |current| {
            let mut record = current.unwrap_or_else(|| {
                Record::new(
                    CityTotals {
                        city: city.clone(),
                        ..CityTotals::default()
                    },
                    event.time,
                )
            });
            if record.value.recent.iter().any(|id| *id == event.id) {
                return None;
            }
            change(&mut record.value);
            record.value.recent.push(event.id.clone());
            if record.value.recent.len() > RECENT {
                record.value.recent.remove(0);
            }
            Some(record.clone().with(record.value, event.time))
        })
        .await?;
    Ok(())
}

struct RevenueApi {
    cities: View<CityTotals>,
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
            .map(|(_, record)| CityTotals {
                recent: Vec::new(),
                ..record.value
            })
            .collect();
        Ok(Response::new(CitiesResponse { cities }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_city_is_the_origin_hubs_system() {
        assert_eq!(city_of("north.ordering"), "north");
        assert_eq!(city_of("eu.north.ordering"), "eu.north");
        assert_eq!(city_of("ordering"), "ordering");
    }
}
