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
//! keep the driver busy. A claim is judged from the queue and then the assignments, the
//! reverse of the order in which a match writes them, so a match made while it is judged never
//! looks stale, and a confirmed claim stays confirmed however often its pair is matched again.
//!
//! The rules it decides by (who may be claimed, in what order drivers and orders are offered,
//! when a claim is stale, what becomes of a claim met again) are in [`matching`], on plain data;
//! this module reads and writes the views around them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fractal::service::{Service, ServiceError};
use fractal::view::{LiveView, Record, View, ViewError};
use fractal::{Event, HandlerError, Publisher, telemetry};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::events::{
    DELIVERY_ASSIGNED, DELIVERY_DELIVERED, DELIVERY_REQUESTED, DRIVER_STATUS_CHANGED,
};
use crate::v1::{Assignment, Delivery, DispatchDriver, DriverStatusChanged};

mod matching;

use matching::{Match, Next, Pairing, Settle};

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
            |dispatch: Arc<Dispatch>, delivery, event: Event| async move {
                dispatch.requested(delivery, event.time).await
            },
        )
        .on(
            DRIVER_STATUS_CHANGED,
            |dispatch: Arc<Dispatch>, changed, _| async move {
                dispatch.driver_changed(changed).await
            },
        )
        .on(
            DELIVERY_DELIVERED,
            |dispatch: Arc<Dispatch>, delivery, _| async move {
                dispatch.delivered(delivery).await
            },
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

impl Dispatch {
    /// A ready order, requested at `time`: queue it, then look for a free driver.
    async fn requested(&self, delivery: Delivery, time: SystemTime) -> Result<(), HandlerError> {
        food_contracts::check_id("order_id", &delivery.order_id)
            .map_err(HandlerError::permanent)?;
        let order_id = delivery.order_id.clone();
        if let Some(assignment) = self.assignments.get(&order_id).await? {
            // Redelivered after the match was made: make sure it was completed.
            return self.complete(&order_id, assignment).await;
        }
        self.waiting
            .create(&order_id, &Record::new(delivery, time))
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
    async fn driver_changed(&self, changed: DriverStatusChanged) -> Result<(), HandlerError> {
        food_contracts::check_id("driver_id", &changed.driver_id)
            .map_err(HandlerError::permanent)?;
        let time = food_contracts::time(changed.changed_at.as_ref());
        let stored = self
            .drivers
            .update(&changed.driver_id, |current| {
                matching::status_changed(current, &changed, time)
            })
            .await?;
        self.next_for(stored.map(|driver| driver.value)).await
    }

    /// What follows an event about a driver, once recorded: a claim they hold is settled, a
    /// free driver on shift takes the oldest waiting order.
    async fn next_for(&self, driver: Option<DispatchDriver>) -> Result<(), HandlerError> {
        let Some(driver) = driver else {
            return Ok(());
        };
        match matching::next_for(&driver) {
            Next::SettleClaim => self.settle_claim(&driver).await,
            Next::FindOrder => self.find_order_for(&driver.driver_id).await,
            Next::Rest => Ok(()),
        }
    }

    /// A driver's claim met again (a redelivery, or a claim a handler left when it failed
    /// midway): completes the match it made, or finishes it if the order still waits, or lets
    /// the driver go.
    async fn settle_claim(&self, driver: &DispatchDriver) -> Result<(), HandlerError> {
        let (driver_id, order_id) = (&driver.driver_id, &driver.order_id);
        match matching::settle(driver, self.assignments.get(order_id).await?) {
            Settle::Complete(assignment) => self.complete(order_id, *assignment).await,
            Settle::Retry => {
                if self.try_assign(order_id, driver_id).await? != Match::Assigned {
                    self.release_claim(driver_id, order_id).await?;
                    self.find_order_for(driver_id).await?;
                }
                Ok(())
            }
            Settle::Release => Ok(self.release_claim(driver_id, order_id).await?),
        }
    }

    /// A delivery is done: its driver is free again. A driver found already matched with
    /// another order was matched by an attempt at this very event that was cut short (or by
    /// another handler since): that match is completed, so it is announced even if the attempt
    /// stopped after taking the order off the queue.
    async fn delivered(&self, delivery: Delivery) -> Result<(), HandlerError> {
        food_contracts::check_id("driver_id", &delivery.driver_id)
            .map_err(HandlerError::permanent)?;
        let driver = self.free(&delivery.driver_id, &delivery.order_id).await?;
        self.next_for(driver).await
    }

    /// Drivers on shift and free: not on a delivery, or on `order_id` (a retry), or holding a
    /// stale claim. Read from the live copy after bringing it up to date; the order in which
    /// they are offered depends on the order, so that handlers running at once try different
    /// drivers first.
    async fn free_drivers(&self, order_id: &str) -> Result<Vec<String>, ViewError> {
        self.roster.sync().await?;
        let candidates = self
            .roster
            .read(|drivers| matching::candidates(drivers, order_id));
        let mut free = candidates.free;
        for driver in candidates.unconfirmed {
            if self.stale(&driver).await? {
                free.push(driver.driver_id);
            }
        }
        Ok(matching::offer_order(free, order_id))
    }

    /// Whether the driver's claim was left by a handler that failed between claiming the
    /// driver and recording the assignment (see [`matching::stale`]). Reads the queue, then the
    /// assignments, from the views themselves.
    async fn stale(&self, driver: &DispatchDriver) -> Result<bool, ViewError> {
        let order_id = &driver.order_id;
        if order_id.is_empty() {
            return Ok(false);
        }
        let waiting = self.waiting.get(order_id).await?.is_some();
        let assignment = self.assignments.get(order_id).await?;
        Ok(matching::stale(
            driver,
            waiting,
            assignment.as_ref().map(|a| &a.value),
        ))
    }

    /// Offers the waiting orders, oldest first, to a driver until one is taken. Reads the
    /// queue again after losing an order to another handler, since the driver looked busy to
    /// everyone else meanwhile.
    async fn find_order_for(&self, driver_id: &str) -> Result<(), HandlerError> {
        for _ in 0..MAX_PASSES {
            self.queue.sync().await?;
            let waiting = self.queue.read(|queue| matching::oldest_first(queue));
            let mut lost = false;
            for order_id in waiting {
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
        let drivers = self.drivers.list().await?;
        let free = matching::unclaimed(drivers.iter().map(|(id, d)| (id, d)));
        if free.is_empty() {
            return Ok(0);
        }
        let waiting = self.waiting.list().await?;
        let orders = matching::oldest_first(waiting.iter().map(|(id, r)| (id, r)));
        let mut pairing = Pairing::new(free, orders);
        while let Some((order_id, driver_id)) = pairing.next() {
            pairing.offered(self.try_assign(&order_id, &driver_id).await?);
        }
        Ok(pairing.matched())
    }

    /// Claims the driver, then the order; announces the match if both were free.
    async fn try_assign(&self, order_id: &str, driver_id: &str) -> Result<Match, HandlerError> {
        let stale = match self.roster.get(driver_id) {
            Some(d)
                if matching::may_be_stale(&d.value, order_id) && self.stale(&d.value).await? =>
            {
                Some(d.value.order_id)
            }
            _ => None,
        };
        let mut claimed = None;
        self.drivers
            .update(driver_id, |current| {
                claimed = current
                    .as_ref()
                    .and_then(|c| matching::claim(&c.value, order_id, stale.as_deref()));
                let current = current?;
                // Claimed for this order already: nothing to write.
                let driver = claimed.clone().filter(|d| *d != current.value)?;
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
        let assignment = matching::assignment(
            request,
            driver,
            SystemTime::now(),
            ulid::Ulid::new().to_string(),
        );
        if !self.assignments.create(order_id, &assignment).await? {
            // Matched already: by another handler, or by one cut short after recording it.
            // Complete that match (so its order leaves the queue), then see whose it is.
            if let Some(existing) = self.assignments.get(order_id).await? {
                let ours = matching::assigned_to(&existing.value, driver_id);
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
        if assigned.is_some_and(|a| matching::assigned_to(&a.value, driver_id)) {
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
                let confirmed = matching::confirm(&current.value, order_id)?;
                Some(current.with(confirmed, SystemTime::UNIX_EPOCH))
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
                let freed = matching::free(&current.value, order_id)?;
                Some(current.with(freed, SystemTime::UNIX_EPOCH))
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
                DELIVERY_ASSIGNED
                    .event(order_id, &delivery)
                    .at(record.time)
                    .with_id(id),
            )
            .instrument(span)
            .await?;
        tracing::info!(order_id, driver_id = %delivery.driver_id, "Driver assigned.");
        Ok(())
    }
}
