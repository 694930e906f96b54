//! `dispatch`: the control service that gives each ready order a driver. It correlates two
//! flows: orders waiting for a driver (`delivery.requested`) and drivers free to take one
//! (`driver.status.changed`, `delivery.delivered`). Whichever arrives second makes the match.
//!
//! Its state lives in three views on the delivery hub: `dispatch_drivers`, `dispatch_waiting`
//! and `dispatch_assignments`. A driver is claimed with a compare-and-set on their entry and an
//! order by creating its assignment, so two handlers running at once never give one driver two
//! orders or one order two drivers. Both sides write before they look at the other, so a
//! driver freed while an order is queued is never missed.

use std::sync::Arc;
use std::time::SystemTime;

use fractal::service::{Service, ServiceError};
use fractal::view::{Record, View, ViewError};
use fractal::{Event, HandlerError, NewEvent, Publisher, telemetry};
use tracing::Instrument as _;

use crate::events::{
    DELIVERY_ASSIGNED, DELIVERY_DELIVERED, DELIVERY_REQUESTED, DRIVER_STATUS_CHANGED,
};
use crate::v1::{
    Assignment, Delivery, DeliveryStatus, DispatchDriver, DriverStatus, DriverStatusChanged,
};

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let dispatch = Arc::new(Dispatch {
        drivers: View::open(&service.hub, "dispatch_drivers").await?,
        waiting: View::open(&service.hub, "dispatch_waiting").await?,
        assignments: View::open(&service.hub, "dispatch_assignments").await?,
        publisher: service.publisher(),
    });
    let consumer = service
        .consumer()
        .on(DELIVERY_REQUESTED, {
            let dispatch = dispatch.clone();
            move |event| {
                let dispatch = dispatch.clone();
                async move { dispatch.requested(event).await }
            }
        })
        .on(DRIVER_STATUS_CHANGED, {
            let dispatch = dispatch.clone();
            move |event| {
                let dispatch = dispatch.clone();
                async move { dispatch.driver_changed(event).await }
            }
        })
        .on(DELIVERY_DELIVERED, {
            let dispatch = dispatch.clone();
            move |event| {
                let dispatch = dispatch.clone();
                async move { dispatch.delivered(event).await }
            }
        });
    service.run(Some(consumer), None).await
}

struct Dispatch {
    drivers: View<DispatchDriver>,
    waiting: View<Delivery>,
    assignments: View<Assignment>,
    publisher: Publisher,
}

/// What came of trying to give an order to a driver.
#[derive(Debug, PartialEq, Eq)]
enum Match {
    Assigned,
    /// The driver is not free (any more).
    DriverTaken,
    /// The order is not waiting (any more).
    OrderTaken,
}

impl Dispatch {
    /// A ready order: queue it, then look for a free driver.
    async fn requested(&self, event: Event) -> Result<(), HandlerError> {
        let delivery: Delivery = event.payload()?;
        food_contracts::check_id("order_id", &delivery.order_id)
            .map_err(HandlerError::permanent)?;
        let order_id = delivery.order_id.clone();
        if self.assignments.get(&order_id).await?.is_some() {
            // Redelivered after the match was made: make sure it was announced.
            return self.announce(&order_id).await;
        }
        self.waiting
            .create(&order_id, &Record::new(delivery, event.time))
            .await?;
        for driver in self.free_drivers().await? {
            match self.try_assign(&order_id, &driver).await? {
                Match::DriverTaken => continue,
                Match::Assigned | Match::OrderTaken => break,
            }
        }
        Ok(())
    }

    /// A driver went on or off shift: record it; a free driver takes the oldest waiting order.
    async fn driver_changed(&self, event: Event) -> Result<(), HandlerError> {
        let changed: DriverStatusChanged = event.payload()?;
        food_contracts::check_id("driver_id", &changed.driver_id)
            .map_err(HandlerError::permanent)?;
        let time = food_contracts::time(changed.changed_at.as_ref());
        let available = changed.status() == DriverStatus::Available;
        let next = |order_id: String| DispatchDriver {
            driver_id: changed.driver_id.clone(),
            name: changed.name.clone(),
            available,
            order_id,
            status_changed_at: changed.changed_at,
        };
        let stored = self
            .drivers
            .update(&changed.driver_id, |current| match current {
                Some(current) if current.time >= time => None,
                Some(current) => {
                    let order_id = current.value.order_id.clone();
                    Some(current.with(next(order_id), time))
                }
                None => Some(Record::new(next(String::new()), time)),
            })
            .await?;
        match stored {
            Some(driver) if !driver.value.order_id.is_empty() => {
                // Redelivered after the match was made: make sure it was announced.
                self.announce(&driver.value.order_id).await
            }
            Some(driver) if driver.value.available => {
                self.find_order_for(&driver.value.driver_id).await
            }
            _ => Ok(()),
        }
    }

    /// A delivery is done: its driver is free again.
    async fn delivered(&self, event: Event) -> Result<(), HandlerError> {
        let delivery: Delivery = event.payload()?;
        self.release(&delivery.driver_id, &delivery.order_id)
            .await?;
        self.find_order_for(&delivery.driver_id).await
    }

    async fn free_drivers(&self) -> Result<Vec<String>, ViewError> {
        Ok(self
            .drivers
            .list()
            .await?
            .into_iter()
            .filter(|(_, d)| d.value.available && d.value.order_id.is_empty())
            .map(|(id, _)| id)
            .collect())
    }

    /// Offers the waiting orders, oldest first, to a driver until one is taken.
    async fn find_order_for(&self, driver_id: &str) -> Result<(), HandlerError> {
        let mut waiting = self.waiting.list().await?;
        waiting.sort_by_key(|(_, request)| request.time);
        for (order_id, _) in waiting {
            match self.try_assign(&order_id, driver_id).await? {
                Match::OrderTaken => continue,
                Match::Assigned | Match::DriverTaken => break,
            }
        }
        Ok(())
    }

    /// Claims the driver, then the order; announces the match if both were free.
    async fn try_assign(&self, order_id: &str, driver_id: &str) -> Result<Match, HandlerError> {
        let mut claimed = None;
        self.drivers
            .update(driver_id, |current| {
                claimed = None;
                let current = current?;
                if !current.value.available || !current.value.order_id.is_empty() {
                    return None;
                }
                let mut driver = current.value.clone();
                driver.order_id = order_id.to_owned();
                claimed = Some(driver.clone());
                Some(current.with(driver, SystemTime::UNIX_EPOCH))
            })
            .await?;
        let Some(driver) = claimed else {
            return Ok(Match::DriverTaken);
        };
        let Some(request) = self.waiting.get(order_id).await? else {
            self.release(driver_id, order_id).await?;
            return Ok(Match::OrderTaken);
        };
        let now = SystemTime::now();
        let mut delivery = request.value;
        delivery.set_status(DeliveryStatus::Assigned);
        delivery.driver_id = driver.driver_id;
        delivery.driver_name = driver.name;
        delivery.assigned_at = Some(now.into());
        let assignment = Record {
            value: Assignment {
                delivery: Some(delivery),
                event_id: ulid::Ulid::new().to_string(),
            },
            time: now,
            // The order's trace, not the driver's: one order is one trace.
            trace: request.trace,
        };
        if !self.assignments.create(order_id, &assignment).await? {
            self.release(driver_id, order_id).await?;
            return Ok(Match::OrderTaken);
        }
        self.waiting.delete(order_id).await?;
        self.announce(order_id).await?;
        Ok(Match::Assigned)
    }

    /// Frees the driver if they are still on `order_id`.
    async fn release(&self, driver_id: &str, order_id: &str) -> Result<(), ViewError> {
        self.drivers
            .update(driver_id, |current| {
                let current = current?;
                if current.value.order_id != order_id {
                    return None;
                }
                let mut driver = current.value.clone();
                driver.order_id.clear();
                Some(current.with(driver, SystemTime::UNIX_EPOCH))
            })
            .await?;
        Ok(())
    }

    /// Publishes the assignment of `order_id`, always with the same event id.
    async fn announce(&self, order_id: &str) -> Result<(), HandlerError> {
        let Some(record) = self.assignments.get(order_id).await? else {
            return Ok(());
        };
        let Some(delivery) = record.value.delivery else {
            return Err(HandlerError::permanent(format!(
                "the assignment of `{order_id}` carries no delivery"
            )));
        };
        let id = ulid::Ulid::from_string(&record.value.event_id).map_err(|e| {
            HandlerError::permanent(format!(
                "the assignment of `{order_id}` has a bad event id: {e}"
            ))
        })?;
        let span = tracing::info_span!("dispatch", otel.name = "dispatch assign", order_id = %order_id, driver_id = %delivery.driver_id);
        telemetry::continue_from(&span, &record.trace);
        self.publisher
            .publish(
                NewEvent::new(DELIVERY_ASSIGNED, order_id, &delivery)
                    .at(record.time)
                    .with_id(id),
            )
            .instrument(span)
            .await?;
        tracing::info!(order_id, driver_id = %delivery.driver_id, "Driver assigned.");
        Ok(())
    }
}
