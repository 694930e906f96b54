//! `drivers`: what a driver does. The `deliveries` view is built from `delivery.*` events; a
//! command checks the delivery's status, publishes the next fact and applies it at once.
//!
//! The view is indexed by driver (`deliveries_by_driver`, `<driver>.<order>`, holding only
//! deliveries not yet delivered), and the service keeps a live copy of that index in memory:
//! `ListAssigned` reads one driver's entries from it, at a cost that does not grow with the
//! deliveries stored. A command waits until the copy holds its own write, so a driver who
//! delivered an order never sees it listed again.

use std::time::{Duration, Instant, SystemTime};

use fractal::grpc::GrpcServer;
use fractal::service::{Service, ServiceError};
use fractal::view::{Index, LiveView, Record, View, ViewError, key};
use fractal::{Event, HandlerError, Publisher, telemetry};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::events::{
    DELIVERY_ASSIGNED, DELIVERY_DELIVERED, DELIVERY_PICKED_UP, DRIVER_STATUS_CHANGED,
};
use crate::v1::drivers_server::{Drivers, DriversServer};
use crate::v1::{
    Delivery, DeliveryRequest, DeliveryStatus, DriverStatus, DriverStatusChanged,
    ListAssignedRequest, ListAssignedResponse, SetStatusRequest,
};

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let by_driver = Index::open(
        &service.hub,
        "deliveries_by_driver",
        |order_id, d: &Delivery| key(&[&d.driver_id, order_id]),
    )
    .await?
    .only(|d| d.status() != DeliveryStatus::Delivered);
    let assigned = by_driver.view().live().await?;
    let view = View::<Delivery>::open(&service.hub, "deliveries")
        .await?
        .indexed_by(by_driver.clone());
    let consumer = service
        .consumer()
        .with_state(view.clone())
        .on(DELIVERY_ASSIGNED, apply)
        .on(DELIVERY_PICKED_UP, apply)
        .on(DELIVERY_DELIVERED, apply);
    let api = DriversApi {
        view,
        by_driver,
        assigned,
        publisher: service.publisher(),
    };
    let grpc = GrpcServer::new()
        .service(DriversServer::new(api))
        .descriptors(crate::DESCRIPTORS);
    service.serve(grpc).run(consumer).await
}

async fn apply(view: View<Delivery>, delivery: Delivery, event: Event) -> Result<(), HandlerError> {
    for (field, id) in [
        ("order_id", &delivery.order_id),
        ("driver_id", &delivery.driver_id),
    ] {
        food_contracts::check_id(field, id).map_err(HandlerError::permanent)?;
    }
    store(&view, delivery, event.time).await?;
    Ok(())
}

/// A delivery only moves forward (assigned → picked up → delivered): the furthest wins.
async fn store(
    view: &View<Delivery>,
    delivery: Delivery,
    time: SystemTime,
) -> Result<(), ViewError> {
    let key = delivery.order_id.clone();
    view.update(&key, |current| match current {
        Some(current) if current.value.status >= delivery.status => None,
        Some(current) => Some(current.with(delivery.clone(), time)),
        None => Some(Record::new(delivery.clone(), time)),
    })
    .await?;
    Ok(())
}

/// The longest a `ListAssigned` long poll may wait, in milliseconds.
const MAX_WAIT_MS: u32 = 30_000;

struct DriversApi {
    view: View<Delivery>,
    by_driver: Index<Delivery>,
    /// The live copy of `deliveries_by_driver`.
    assigned: LiveView<Delivery>,
    publisher: Publisher,
}

fn invalid(problem: String) -> Status {
    Status::invalid_argument(problem)
}

fn name(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Unspecified => "unknown",
        DeliveryStatus::Requested => "waiting for a driver",
        DeliveryStatus::Assigned => "assigned",
        DeliveryStatus::PickedUp => "picked up",
        DeliveryStatus::Delivered => "delivered",
    }
}

impl DriversApi {
    /// Moves the driver's delivery from `from` to `to`, traced as part of its order's trace.
    async fn advance(
        &self,
        request: DeliveryRequest,
        from: DeliveryStatus,
        to: DeliveryStatus,
    ) -> Result<Delivery, Status> {
        food_contracts::check_id("driver_id", &request.driver_id).map_err(invalid)?;
        food_contracts::check_id("order_id", &request.order_id).map_err(invalid)?;
        let record = match self.view.get(&request.order_id).await? {
            Some(record) if record.value.driver_id == request.driver_id => record,
            _ => {
                return Err(Status::not_found(format!(
                    "order `{}` is not assigned to driver `{}`",
                    request.order_id, request.driver_id
                )));
            }
        };
        let status = record.value.status();
        if status != from {
            let problem = match (status, to) {
                (DeliveryStatus::Assigned, DeliveryStatus::Delivered) => {
                    format!("order `{}` was never picked up", request.order_id)
                }
                _ => format!(
                    "order `{}` is {}; it must be {} first",
                    request.order_id,
                    name(status),
                    name(from)
                ),
            };
            return Err(Status::failed_precondition(problem));
        }
        let span = tracing::info_span!("drivers", otel.name = format!("driver {}", name(to)), order_id = %request.order_id, driver_id = %request.driver_id);
        telemetry::continue_from(&span, &record.trace);
        async {
            let now = SystemTime::now();
            let mut delivery = record.value;
            delivery.set_status(to);
            let contract = if to == DeliveryStatus::PickedUp {
                delivery.picked_up_at = Some(now.into());
                DELIVERY_PICKED_UP
            } else {
                delivery.delivered_at = Some(now.into());
                DELIVERY_DELIVERED
            };
            // One id per delivery and step: a retry, or two taps at once, store it once.
            let id = fractal::event::stable_id(
                food_contracts::millis(delivery.assigned_at.as_ref()),
                &[&delivery.order_id, contract.event_type()],
            );
            let published = self
                .publisher
                .publish(
                    contract
                        .event(&delivery.order_id, &delivery)
                        .at(now)
                        .with_id(id),
                )
                .await?;
            // A retry whose first try was stored: the lake holds that one, with its time, and
            // the view takes it from there (this service consumes its own steps); writing this
            // try's time would make the view disagree with the lake.
            if !published.duplicate {
                store(&self.view, delivery.clone(), now).await?;
                // The driver's next `ListAssigned` shows this step.
                self.assigned.wait_for(self.by_driver.written()).await?;
            }
            Ok(delivery)
        }
        .instrument(span)
        .await
    }
}

#[tonic::async_trait]
impl Drivers for DriversApi {
    async fn set_status(
        &self,
        request: Request<SetStatusRequest>,
    ) -> Result<Response<DriverStatusChanged>, Status> {
        let request = request.into_inner();
        food_contracts::check_id("driver_id", &request.driver_id).map_err(invalid)?;
        if request.name.trim().is_empty() {
            return Err(invalid("name: must not be empty".into()));
        }
        let status = match DriverStatus::try_from(request.status) {
            Ok(status @ (DriverStatus::Available | DriverStatus::Offline)) => status,
            _ => {
                return Err(invalid(format!(
                    "status: must be DRIVER_STATUS_AVAILABLE or DRIVER_STATUS_OFFLINE, not {}",
                    request.status
                )));
            }
        };
        let changed = DriverStatusChanged {
            driver_id: request.driver_id,
            name: request.name,
            status: status.into(),
            changed_at: Some(SystemTime::now().into()),
        };
        self.publisher
            .publish(DRIVER_STATUS_CHANGED.event(&changed.driver_id, &changed))
            .await?;
        Ok(Response::new(changed))
    }

    async fn list_assigned(
        &self,
        request: Request<ListAssignedRequest>,
    ) -> Result<Response<ListAssignedResponse>, Status> {
        let request = request.into_inner();
        let driver = request.driver_id;
        food_contracts::check_id("driver_id", &driver).map_err(invalid)?;
        if request.wait_ms > MAX_WAIT_MS {
            return Err(invalid(format!(
                "wait_ms: at most {MAX_WAIT_MS}, not {}",
                request.wait_ms
            )));
        }
        let deadline = Instant::now() + Duration::from_millis(request.wait_ms.into());
        let prefix = key(&[&driver]);
        loop {
            // Watch before reading, so that nothing assigned in between is missed.
            let mut changes = self.assigned.watch_prefix(&prefix);
            let mut deliveries: Vec<Delivery> = self
                .assigned
                .scan(&prefix)
                .into_iter()
                .map(|(_, record)| record.value)
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if !deliveries.is_empty() || left.is_zero() {
                deliveries.sort_by_key(|d| food_contracts::time(d.assigned_at.as_ref()));
                return Ok(Response::new(ListAssignedResponse { deliveries }));
            }
            // A long poll: look again when this driver's entries change.
            changes.changed(left).await;
        }
    }

    async fn pick_up(
        &self,
        request: Request<DeliveryRequest>,
    ) -> Result<Response<Delivery>, Status> {
        self.advance(
            request.into_inner(),
            DeliveryStatus::Assigned,
            DeliveryStatus::PickedUp,
        )
        .await
        .map(Response::new)
    }

    async fn deliver(
        &self,
        request: Request<DeliveryRequest>,
    ) -> Result<Response<Delivery>, Status> {
        self.advance(
            request.into_inner(),
            DeliveryStatus::PickedUp,
            DeliveryStatus::Delivered,
        )
        .await
        .map(Response::new)
    }
}
