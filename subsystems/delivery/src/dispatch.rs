//! `dispatch`: the control service that gives each ready order a driver. It correlates two
//! flows: orders waiting for a driver (`delivery.requested`) and drivers free to take one
//! (`driver.status.changed`, `delivery.delivered`). Whichever arrives second makes the match.
//!
//! Its state lives in three views on the delivery hub: `dispatch_drivers`, `dispatch_waiting`
//! and `dispatch_assignments`. It looks for a free driver or the oldest waiting order in live
//! copies of the first two, kept in memory, so handling an event costs the same however many
//! deliveries are stored. The views themselves decide: a driver is claimed with a
//! compare-and-set on their entry and an order by creating its assignment, so two handlers
//! running at once never give one driver two orders or one order two drivers. Both sides write
//! before they look at the other (and bring the copy up to date first), and a driver whose
//! claim is undone (another handler took the order) reads the queue again, so a free driver and
//! a waiting order always meet. A claim is confirmed once its assignment is recorded; an
//! unconfirmed claim left by a handler that failed midway is recognised as stale and does not
//! keep the driver busy.

use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fractal::service::{Service, ServiceError};
use fractal::view::{LiveView, Record, View, ViewError};
use fractal::{Event, HandlerError, NewEvent, Publisher, telemetry};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::events::{
    DELIVERY_ASSIGNED, DELIVERY_DELIVERED, DELIVERY_REQUESTED, DRIVER_STATUS_CHANGED,
};
use crate::v1::{
    Assignment, Delivery, DeliveryStatus, DispatchDriver, DriverStatus, DriverStatusChanged,
};

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let drivers = View::open(&service.hub, "dispatch_drivers").await?;
    let waiting = View::open(&service.hub, "dispatch_waiting").await?;
    let dispatch = Arc::new(Dispatch {
        roster: drivers.live().await?,
        queue: waiting.live().await?,
        drivers,
        waiting,
        assignments: View::open(&service.hub, "dispatch_assignments").await?,
        publisher: service.publisher(),
    });
    let consumer = service
        .consumer()
        .with_state(dispatch.clone())
        .on(
            DELIVERY_REQUESTED,
            |dispatch: Arc<Dispatch>, event| async move { dispatch.requested(event).await },
        )
        .on(
            DRIVER_STATUS_CHANGED,
            |dispatch: Arc<Dispatch>, event| async move { dispatch.driver_changed(event).await },
        )
        .on(
            DELIVERY_DELIVERED,
            |dispatch: Arc<Dispatch>, event| async move { dispatch.delivered(event).await },
        );
    let sweeping = tokio::spawn(sweep_every(dispatch, SWEEP_EVERY, service.shutdown.clone()));
    let ran = service.run(consumer).await;
    sweeping.abort();
    ran
}

/// How often dispatch looks for a free driver and a waiting order that never met.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The timer of the saga: every `every`, matches free drivers with waiting orders that no
/// event brought together (see [`Dispatch::sweep`]).
async fn sweep_every(dispatch: Arc<Dispatch>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match dispatch.sweep().await {
            Ok(0) => {}
            Ok(matched) => {
                tracing::warn!(
                    matched,
                    "Matched waiting orders with free drivers no event had brought together."
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "The sweep for unmatched orders failed; trying again later.")
            }
        }
    }
}

/// How often a driver's search reads the queue again after losing orders to other handlers.
const MAX_PASSES: usize = 16;

struct Dispatch {
    drivers: View<DispatchDriver>,
    /// The live copy of `drivers`.
    roster: LiveView<DispatchDriver>,
    waiting: View<Delivery>,
    /// The live copy of `waiting`.
    queue: LiveView<Delivery>,
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
        if let Some(assignment) = self.assignments.get(&order_id).await? {
            // Redelivered after the match was made: make sure it was completed.
            return self.complete(&order_id, assignment).await;
        }
        self.waiting
            .create(&order_id, &Record::new(delivery, event.time))
            .await?;
        for driver in self.free_drivers(&order_id).await? {
            match self.try_assign(&order_id, &driver).await? {
                Match::DriverTaken => continue,
                Match::Assigned => break,
                Match::OrderTaken => {
                    // The driver was claimed and released meanwhile, unseen by the others:
                    // offer them whatever else waits.
                    self.find_order_for(&driver).await?;
                    break;
                }
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
        let next = |order_id: String, confirmed: bool| DispatchDriver {
            driver_id: changed.driver_id.clone(),
            name: changed.name.clone(),
            available,
            order_id,
            status_changed_at: changed.changed_at,
            confirmed,
        };
        let stored = self
            .drivers
            .update(&changed.driver_id, |current| match current {
                Some(current) if current.time >= time => None,
                Some(current) => {
                    let (order_id, confirmed) =
                        (current.value.order_id.clone(), current.value.confirmed);
                    Some(current.with(next(order_id, confirmed), time))
                }
                None => Some(Record::new(next(String::new(), false), time)),
            })
            .await?;
        match stored {
            Some(driver) if !driver.value.order_id.is_empty() => {
                self.settle_claim(&driver.value).await
            }
            Some(driver) if driver.value.available => {
                self.find_order_for(&driver.value.driver_id).await
            }
            _ => Ok(()),
        }
    }

    /// A driver's claim met again (a redelivery, or a claim a handler left when it failed
    /// midway): completes the match it made, or finishes it if the order still waits, or lets
    /// the driver go.
    async fn settle_claim(&self, driver: &DispatchDriver) -> Result<(), HandlerError> {
        let (driver_id, order_id) = (&driver.driver_id, &driver.order_id);
        if let Some(assignment) = self.assignments.get(order_id).await?
            && assigned_to(&assignment, driver_id)
        {
            return self.complete(order_id, assignment).await;
        }
        if driver.available && self.try_assign(order_id, driver_id).await? == Match::Assigned {
            return Ok(());
        }
        self.release_claim(driver_id, order_id).await?;
        if driver.available {
            self.find_order_for(driver_id).await?;
        }
        Ok(())
    }

    /// A delivery is done: its driver is free again. A driver found already matched with
    /// another order was matched by an attempt at this very event that was cut short (or by
    /// another handler since): that match is completed, so it is announced even if the attempt
    /// stopped after taking the order off the queue.
    async fn delivered(&self, event: Event) -> Result<(), HandlerError> {
        let delivery: Delivery = event.payload()?;
        food_contracts::check_id("driver_id", &delivery.driver_id)
            .map_err(HandlerError::permanent)?;
        match self.free(&delivery.driver_id, &delivery.order_id).await? {
            Some(driver) if !driver.order_id.is_empty() => self.settle_claim(&driver).await,
            _ => self.find_order_for(&delivery.driver_id).await,
        }
    }

    /// Drivers on shift and free: not on a delivery, or on `order_id` (a retry), or holding a
    /// stale claim. Read from the live copy after bringing it up to date; the order in which
    /// they are offered depends on the order, so that handlers running at once try different
    /// drivers first.
    async fn free_drivers(&self, order_id: &str) -> Result<Vec<String>, ViewError> {
        self.roster.sync().await?;
        let (mut free, unconfirmed) = self.roster.read(|drivers| {
            let mut free = Vec::new();
            let mut unconfirmed = Vec::new();
            for (id, driver) in drivers {
                let driver = &driver.value;
                if !driver.available {
                    continue;
                }
                if driver.order_id.is_empty() || driver.order_id == order_id {
                    free.push(id.clone());
                } else if !driver.confirmed {
                    unconfirmed.push(driver.clone());
                }
            }
            (free, unconfirmed)
        });
        for driver in unconfirmed {
            if self.stale(&driver).await? {
                free.push(driver.driver_id);
            }
        }
        if !free.is_empty() {
            let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(order_id);
            let start = (hash % free.len() as u64) as usize;
            free.rotate_left(start);
        }
        Ok(free)
    }

    /// Whether the driver's claim was left by a handler that failed between claiming the
    /// driver and recording the assignment: its order went to another driver, or is neither
    /// waiting nor assigned.
    async fn stale(&self, driver: &DispatchDriver) -> Result<bool, ViewError> {
        if driver.order_id.is_empty() {
            return Ok(false);
        }
        Ok(match self.assignments.get(&driver.order_id).await? {
            Some(assignment) => assignment
                .value
                .delivery
                .is_some_and(|d| d.driver_id != driver.driver_id),
            None => self.waiting.get(&driver.order_id).await?.is_none(),
        })
    }

    /// Offers the waiting orders, oldest first, to a driver until one is taken. Reads the
    /// queue again after losing an order to another handler, since the driver looked busy to
    /// everyone else meanwhile.
    async fn find_order_for(&self, driver_id: &str) -> Result<(), HandlerError> {
        for _ in 0..MAX_PASSES {
            self.queue.sync().await?;
            let mut waiting: Vec<(SystemTime, String)> = self.queue.read(|queue| {
                queue
                    .iter()
                    .map(|(order_id, request)| (request.time, order_id.clone()))
                    .collect()
            });
            waiting.sort();
            let mut lost = false;
            for (_, order_id) in waiting {
                if self.queue.get(&order_id).is_none() {
                    // Taken by another handler since this pass began.
                    lost = true;
                    continue;
                }
                match self.try_assign(&order_id, driver_id).await? {
                    Match::OrderTaken => lost = true,
                    Match::Assigned | Match::DriverTaken => return Ok(()),
                }
            }
            if !lost {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Matches free drivers with waiting orders, oldest first, as the views themselves (not
    /// the live copies) hold them; returns how many it matched. Events make every match
    /// while handlers complete; a handler cut short between its steps, or one that looked at a
    /// copy behind its bucket (a hub failing over), can leave a free driver and a waiting
    /// order that no later event brings together. Reads the drivers (one entry each) and, only
    /// when one is free, the queue.
    async fn sweep(&self) -> Result<usize, HandlerError> {
        let mut free: Vec<String> = self
            .drivers
            .list()
            .await?
            .into_iter()
            .filter(|(_, d)| d.value.available && d.value.order_id.is_empty())
            .map(|(id, _)| id)
            .collect();
        if free.is_empty() {
            return Ok(0);
        }
        let mut waiting: Vec<(SystemTime, String)> = self
            .waiting
            .list()
            .await?
            .into_iter()
            .map(|(order_id, request)| (request.time, order_id))
            .collect();
        waiting.sort();
        let mut matched = 0;
        let mut orders = waiting.into_iter().map(|(_, order_id)| order_id);
        let mut order = orders.next();
        while let (Some(order_id), Some(driver_id)) = (&order, free.last()) {
            match self.try_assign(order_id, driver_id).await? {
                Match::Assigned => {
                    matched += 1;
                    free.pop();
                    order = orders.next();
                }
                Match::DriverTaken => {
                    free.pop();
                }
                Match::OrderTaken => order = orders.next(),
            }
        }
        Ok(matched)
    }

    /// Claims the driver, then the order; announces the match if both were free.
    async fn try_assign(&self, order_id: &str, driver_id: &str) -> Result<Match, HandlerError> {
        let stale = match self.roster.get(driver_id) {
            Some(d)
                if !d.value.confirmed
                    && d.value.order_id != order_id
                    && self.stale(&d.value).await? =>
            {
                Some(d.value.order_id)
            }
            _ => None,
        };
        let mut claimed = None;
        self.drivers
            .update(driver_id, |current| {
                claimed = None;
                let current = current?;
                let claim = &current.value.order_id;
                // A claim judged stale must still be unconfirmed: its order may have become
                // this driver's assignment since it was judged.
                let stale = !current.value.confirmed && stale.as_ref() == Some(claim);
                let free = claim.is_empty() || claim == order_id || stale;
                if !current.value.available || !free {
                    return None;
                }
                let mut driver = current.value.clone();
                driver.order_id = order_id.to_owned();
                driver.confirmed = false;
                claimed = Some(driver.clone());
                Some(current.with(driver, SystemTime::UNIX_EPOCH))
            })
            .await?;
        let Some(driver) = claimed else {
            return Ok(Match::DriverTaken);
        };
        // The request as queued (it never changes): from the copy if it has it.
        let request = match self.queue.get(order_id) {
            Some(request) => Some(request),
            None => self.waiting.get(order_id).await?,
        };
        let Some(request) = request else {
            self.release_claim(driver_id, order_id).await?;
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
            // Matched already: by another handler, or by one cut short after recording it.
            // Complete that match (so its order leaves the queue), then see whose it is.
            if let Some(existing) = self.assignments.get(order_id).await? {
                let ours = assigned_to(&existing, driver_id);
                self.complete(order_id, existing).await?;
                if ours {
                    return Ok(Match::Assigned);
                }
            }
            self.release_claim(driver_id, order_id).await?;
            return Ok(Match::OrderTaken);
        }
        self.confirm(driver_id, order_id).await?;
        self.waiting.delete(order_id).await?;
        self.publish(order_id, assignment).await?;
        Ok(Match::Assigned)
    }

    /// Undoes a claim that did not become an assignment: frees the driver if they are still
    /// claimed for `order_id` and no assignment of it names them (another handler may have
    /// assigned them that very order).
    async fn release_claim(&self, driver_id: &str, order_id: &str) -> Result<(), ViewError> {
        let assigned = self.assignments.get(order_id).await?;
        if assigned.is_some_and(|a| assigned_to(&a, driver_id)) {
            return Ok(());
        }
        self.free(driver_id, order_id).await?;
        Ok(())
    }

    /// Finishes a recorded match, whatever part of it a failed handler left undone: the
    /// driver's claim confirmed, the order off the queue, the assignment announced.
    async fn complete(
        &self,
        order_id: &str,
        assignment: Record<Assignment>,
    ) -> Result<(), HandlerError> {
        if let Some(delivery) = &assignment.value.delivery {
            self.confirm(&delivery.driver_id, order_id).await?;
        }
        if self.waiting.get(order_id).await?.is_some() {
            self.waiting.delete(order_id).await?;
        }
        self.publish(order_id, assignment).await
    }

    /// Marks the driver's claim on `order_id` as the assignment it became.
    async fn confirm(&self, driver_id: &str, order_id: &str) -> Result<(), ViewError> {
        self.drivers
            .update(driver_id, |current| {
                let current = current?;
                if current.value.order_id != order_id || current.value.confirmed {
                    return None;
                }
                let mut driver = current.value.clone();
                driver.confirmed = true;
                Some(current.with(driver, SystemTime::UNIX_EPOCH))
            })
            .await?;
        Ok(())
    }

    /// Frees the driver if they are still on `order_id`. Returns the driver as stored
    /// afterwards.
    async fn free(
        &self,
        driver_id: &str,
        order_id: &str,
    ) -> Result<Option<DispatchDriver>, ViewError> {
        let stored = self
            .drivers
            .update(driver_id, |current| {
                let current = current?;
                if current.value.order_id != order_id {
                    return None;
                }
                let mut driver = current.value.clone();
                driver.order_id.clear();
                driver.confirmed = false;
                Some(current.with(driver, SystemTime::UNIX_EPOCH))
            })
            .await?;
        Ok(stored.map(|record| record.value))
    }

    /// Publishes the assignment `record` of `order_id`, always with the same event id.
    async fn publish(
        &self,
        order_id: &str,
        record: Record<Assignment>,
    ) -> Result<(), HandlerError> {
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

/// Whether `assignment` gives its order to `driver_id`.
fn assigned_to(assignment: &Record<Assignment>, driver_id: &str) -> bool {
    assignment
        .value
        .delivery
        .as_ref()
        .is_some_and(|d| d.driver_id == driver_id)
}
