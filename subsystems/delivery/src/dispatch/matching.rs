//! Dispatch's rules, on plain data: which drivers an order is offered to and in what order,
//! which orders a driver is offered, when a driver may be claimed for an order, when a claim is
//! stale, what becomes of a claim met again, and how the sweep pairs free drivers with waiting
//! orders. The service around them reads and writes the views; these decide.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
use std::time::SystemTime;

use fractal::view::Record;

use crate::v1::{
    Assignment, Delivery, DeliveryStatus, DispatchDriver, DriverStatus, DriverStatusChanged,
};

/// What came of trying to give an order to a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Match {
    Assigned,
    /// The driver is not free (any more).
    DriverTaken,
    /// The order is not waiting (any more).
    OrderTaken,
}

/// The driver's record after a change of status as of `time`, or `None` to leave it as it is
/// (an older change arriving late). The newest change wins; a driver keeps their claim
/// whatever their status, and a driver seen for the first time is free.
pub(super) fn status_changed(
    current: Option<Record<DispatchDriver>>,
    changed: &DriverStatusChanged,
    time: SystemTime,
) -> Option<Record<DispatchDriver>> {
    let next = |order_id: String, confirmed: bool| DispatchDriver {
        driver_id: changed.driver_id.clone(),
        name: changed.name.clone(),
        available: changed.status() == DriverStatus::Available,
        order_id,
        status_changed_at: changed.changed_at,
        confirmed,
    };
    match current {
        Some(current) if current.time >= time => None,
        Some(current) => {
            let (order_id, confirmed) = (current.value.order_id.clone(), current.value.confirmed);
            Some(current.with(next(order_id, confirmed), time))
        }
        None => Some(Record::new(next(String::new(), false), time)),
    }
}

/// What dispatch does for a known driver once an event about them (a change of status, a
/// delivery done) is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The driver holds a claim: see what became of it ([`settle`]).
    SettleClaim,
    /// The driver is on shift and free: offer them the waiting orders.
    FindOrder,
    /// Off shift and free: nothing.
    Rest,
}

/// What dispatch does for `driver` as stored after an event about them.
pub(super) fn next_for(driver: &DispatchDriver) -> Next {
    if !driver.order_id.is_empty() {
        Next::SettleClaim
    } else if driver.available {
        Next::FindOrder
    } else {
        Next::Rest
    }
}

/// The drivers an order may be offered to, as the roster shows them.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Candidates {
    /// On shift and free, or claimed for this very order (a retry).
    pub(super) free: Vec<String>,
    /// On shift and holding an unconfirmed claim on another order: free if the claim is stale.
    pub(super) unconfirmed: Vec<DispatchDriver>,
}

/// The drivers of `roster` that `order_id` may be offered to.
pub(super) fn candidates(
    roster: &BTreeMap<String, Record<DispatchDriver>>,
    order_id: &str,
) -> Candidates {
    let mut candidates = Candidates::default();
    for (id, driver) in roster {
        let driver = &driver.value;
        if !driver.available {
            continue;
        }
        if driver.order_id.is_empty() || driver.order_id == order_id {
            candidates.free.push(id.clone());
        } else if !driver.confirmed {
            candidates.unconfirmed.push(driver.clone());
        }
    }
    candidates
}

/// `drivers` in the order `order_id` is offered to them: rotated by a hash of the order, so
/// that handlers of different orders running at once try different drivers first.
pub(super) fn offer_order(mut drivers: Vec<String>, order_id: &str) -> Vec<String> {
    if !drivers.is_empty() {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(order_id);
        let start = (hash % drivers.len() as u64) as usize;
        drivers.rotate_left(start);
    }
    drivers
}

/// Whether the claim `driver` holds is worth judging stale before offering them `order_id`:
/// an unconfirmed claim on another order.
pub(super) fn may_be_stale(driver: &DispatchDriver, order_id: &str) -> bool {
    !driver.confirmed && !driver.order_id.is_empty() && driver.order_id != order_id
}

/// Whether the claim `driver` holds was left by a handler that failed between claiming the
/// driver and recording the assignment: its order went to another driver, or is neither
/// waiting nor assigned.
///
/// `waiting` (whether the order is queued) must be read before `assignment` (the order's
/// assignment, if any). A match records the assignment before it takes the order off the
/// queue, and assignments stay, so an order found off the queue and then unassigned was never
/// matched. Read the other way round, a match made between the two reads would make its own
/// driver's claim look stale.
pub(super) fn stale(
    driver: &DispatchDriver,
    waiting: bool,
    assignment: Option<&Assignment>,
) -> bool {
    if driver.order_id.is_empty() {
        return false;
    }
    match assignment {
        Some(assignment) => assignment
            .delivery
            .as_ref()
            .is_some_and(|d| d.driver_id != driver.driver_id),
        None => !waiting,
    }
}

/// The driver claimed for `order_id`, or `None` if they may not take it. They may if on shift
/// and free, or claimed for `order_id` already (a retry, or another handler matching the same
/// pair), or holding `stale`, a claim judged stale, and it is still unconfirmed (its order may
/// have become this driver's assignment since it was judged).
///
/// A claim on `order_id` is kept as it is: once confirmed it stays confirmed, since the
/// assignment it became is recorded; clearing that would let a handler that judged the claim
/// stale before the match was made take the driver from their order.
pub(super) fn claim(
    current: &DispatchDriver,
    order_id: &str,
    stale: Option<&str>,
) -> Option<DispatchDriver> {
    if !current.available {
        return None;
    }
    let claim = current.order_id.as_str();
    if claim == order_id {
        return Some(current.clone());
    }
    let stale = !current.confirmed && stale == Some(claim);
    if !claim.is_empty() && !stale {
        return None;
    }
    Some(DispatchDriver {
        order_id: order_id.to_owned(),
        confirmed: false,
        ..current.clone()
    })
}

/// The driver with their claim on `order_id` confirmed as the assignment it became, or `None`
/// if they hold no unconfirmed claim on it.
pub(super) fn confirm(current: &DispatchDriver, order_id: &str) -> Option<DispatchDriver> {
    if current.order_id != order_id || current.confirmed {
        return None;
    }
    Some(DispatchDriver {
        confirmed: true,
        ..current.clone()
    })
}

/// The driver freed of their claim on `order_id`, or `None` if they hold none on it.
pub(super) fn free(current: &DispatchDriver, order_id: &str) -> Option<DispatchDriver> {
    if current.order_id != order_id {
        return None;
    }
    Some(DispatchDriver {
        order_id: String::new(),
        confirmed: false,
        ..current.clone()
    })
}

/// What becomes of a driver's claim met again: a redelivery, or a claim a handler left when it
/// failed midway.
#[derive(Debug, PartialEq)]
pub(super) enum Settle {
    /// The order's assignment names the driver: complete that match.
    Complete(Box<Record<Assignment>>),
    /// The driver is on shift: try to finish the match; if the order is gone, release the claim
    /// and offer the driver the other waiting orders.
    Retry,
    /// The driver is off shift: release the claim.
    Release,
}

/// What becomes of `driver`'s claim, given the assignment of its order, if any.
pub(super) fn settle(driver: &DispatchDriver, assignment: Option<Record<Assignment>>) -> Settle {
    match assignment {
        Some(assignment) if assigned_to(&assignment.value, &driver.driver_id) => {
            Settle::Complete(Box::new(assignment))
        }
        _ if driver.available => Settle::Retry,
        _ => Settle::Release,
    }
}

/// The ids of the waiting orders in `queue`, oldest request first.
pub(super) fn oldest_first<'a>(
    queue: impl IntoIterator<Item = (&'a String, &'a Record<Delivery>)>,
) -> Vec<String> {
    let mut waiting: Vec<(SystemTime, &String)> = queue
        .into_iter()
        .map(|(order_id, request)| (request.time, order_id))
        .collect();
    waiting.sort();
    waiting
        .into_iter()
        .map(|(_, order_id)| order_id.clone())
        .collect()
}

/// The ids of the drivers on shift and holding no claim.
pub(super) fn unclaimed<'a>(
    drivers: impl IntoIterator<Item = (&'a String, &'a Record<DispatchDriver>)>,
) -> Vec<String> {
    drivers
        .into_iter()
        .filter(|(_, d)| d.value.available && d.value.order_id.is_empty())
        .map(|(id, _)| id.clone())
        .collect()
}

/// The sweep's pairing of free drivers with waiting orders: the next order to offer and the
/// driver to offer it to, until either runs out. An order is offered until it is assigned or
/// found taken; a driver until they are assigned one or found taken.
#[derive(Debug)]
pub(super) struct Pairing {
    /// Offered from the back.
    drivers: Vec<String>,
    /// Oldest first.
    orders: VecDeque<String>,
    matched: usize,
}

impl Pairing {
    /// Pairs `drivers`, the last one first, with `orders`, in their order.
    pub(super) fn new(drivers: Vec<String>, orders: Vec<String>) -> Self {
        Pairing {
            drivers,
            orders: orders.into(),
            matched: 0,
        }
    }

    /// The next order to offer, and the driver to offer it to.
    pub(super) fn next(&self) -> Option<(String, String)> {
        Some((self.orders.front()?.clone(), self.drivers.last()?.clone()))
    }

    /// Records what came of the last offer.
    pub(super) fn offered(&mut self, outcome: Match) {
        match outcome {
            Match::Assigned => {
                self.matched += 1;
                self.drivers.pop();
                self.orders.pop_front();
            }
            Match::DriverTaken => {
                self.drivers.pop();
            }
            Match::OrderTaken => {
                self.orders.pop_front();
            }
        }
    }

    /// How many offers were assigned.
    pub(super) fn matched(&self) -> usize {
        self.matched
    }
}

/// The assignment of the queued `request` to `driver` at `now`, announced with `event_id`, in
/// the order's trace (one order is one trace), not the driver's.
pub(super) fn assignment(
    request: Record<Delivery>,
    driver: DispatchDriver,
    now: SystemTime,
    event_id: String,
) -> Record<Assignment> {
    let mut delivery = request.value;
    delivery.set_status(DeliveryStatus::Assigned);
    delivery.driver_id = driver.driver_id;
    delivery.driver_name = driver.name;
    delivery.assigned_at = Some(now.into());
    Record {
        value: Assignment {
            delivery: Some(delivery),
            event_id,
        },
        time: now,
        trace: request.trace,
    }
}

/// Whether `assignment` gives its order to `driver_id`.
pub(super) fn assigned_to(assignment: &Assignment, driver_id: &str) -> bool {
    assignment
        .delivery
        .as_ref()
        .is_some_and(|d| d.driver_id == driver_id)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Driver `id`, on shift, holding `claim` (empty when free), confirmed or not.
    fn driver(id: &str, claim: &str, confirmed: bool) -> DispatchDriver {
        DispatchDriver {
            driver_id: id.into(),
            name: format!("Driver {id}"),
            available: true,
            order_id: claim.into(),
            confirmed,
            ..Default::default()
        }
    }

    fn off_shift(driver: DispatchDriver) -> DispatchDriver {
        DispatchDriver {
            available: false,
            ..driver
        }
    }

    fn roster(drivers: &[DispatchDriver]) -> BTreeMap<String, Record<DispatchDriver>> {
        drivers
            .iter()
            .map(|d| (d.driver_id.clone(), Record::new(d.clone(), at(1))))
            .collect()
    }

    fn assigned(order_id: &str, driver_id: &str) -> Assignment {
        Assignment {
            delivery: Some(Delivery {
                order_id: order_id.into(),
                driver_id: driver_id.into(),
                ..Default::default()
            }),
            event_id: ulid::Ulid::new().to_string(),
        }
    }

    fn changed(driver_id: &str, status: DriverStatus) -> DriverStatusChanged {
        DriverStatusChanged {
            driver_id: driver_id.into(),
            name: format!("Driver {driver_id}"),
            status: status.into(),
            changed_at: None,
        }
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|&id| id.to_owned()).collect()
    }

    #[test]
    fn a_driver_seen_for_the_first_time_is_recorded_free() {
        let stored = status_changed(None, &changed("d-1", DriverStatus::Available), at(5))
            .expect("recorded");
        assert_eq!(stored.value, driver("d-1", "", false));
        assert_eq!(stored.time, at(5));
    }

    #[test]
    fn a_newer_status_keeps_the_drivers_claim_and_an_older_one_is_ignored() {
        let current = Record::new(driver("d-1", "o-1", true), at(5));
        let offline = changed("d-1", DriverStatus::Offline);

        let stored = status_changed(Some(current.clone()), &offline, at(6)).expect("newer");
        assert_eq!(stored.value, off_shift(driver("d-1", "o-1", true)));
        assert_eq!(stored.time, at(6));

        assert_eq!(status_changed(Some(current.clone()), &offline, at(5)), None);
        assert_eq!(status_changed(Some(current), &offline, at(4)), None);
    }

    #[test]
    fn after_an_event_a_claim_is_settled_and_a_free_driver_on_shift_looks_for_an_order() {
        assert_eq!(next_for(&driver("d-1", "o-1", true)), Next::SettleClaim);
        assert_eq!(
            next_for(&off_shift(driver("d-1", "o-1", false))),
            Next::SettleClaim,
            "the claim of a driver gone off shift is settled too"
        );
        assert_eq!(next_for(&driver("d-1", "", false)), Next::FindOrder);
        assert_eq!(next_for(&off_shift(driver("d-1", "", false))), Next::Rest);
    }

    #[test]
    fn an_order_is_offered_to_free_drivers_on_shift_and_to_its_own_claim() {
        let roster = roster(&[
            driver("d-1", "", false),
            driver("d-2", "o-1", false),
            driver("d-3", "o-2", true),
            driver("d-4", "o-3", false),
            off_shift(driver("d-5", "", false)),
            off_shift(driver("d-6", "o-4", false)),
        ]);
        let candidates = candidates(&roster, "o-1");
        assert_eq!(candidates.free, ids(&["d-1", "d-2"]));
        assert_eq!(
            candidates.unconfirmed,
            vec![driver("d-4", "o-3", false)],
            "only an unconfirmed claim on another order may be stale"
        );
    }

    #[test]
    fn the_offer_order_is_a_rotation_that_depends_on_the_order() {
        let drivers = ids(&["d-1", "d-2", "d-3", "d-4", "d-5"]);
        let mut firsts = std::collections::HashSet::new();
        for i in 0..50 {
            let order_id = format!("o-{i}");
            let offered = offer_order(drivers.clone(), &order_id);
            assert_eq!(offered, offer_order(drivers.clone(), &order_id), "stable");
            let start = drivers.iter().position(|d| *d == offered[0]).unwrap();
            let mut rotated = drivers.clone();
            rotated.rotate_left(start);
            assert_eq!(offered, rotated, "every driver, in turn");
            firsts.insert(offered[0].clone());
        }
        assert!(
            firsts.len() > 1,
            "different orders start with different drivers"
        );
        assert!(offer_order(Vec::new(), "o-1").is_empty());
    }

    #[test]
    fn only_an_unconfirmed_claim_on_another_order_may_be_stale() {
        assert!(may_be_stale(&driver("d-1", "o-2", false), "o-1"));
        assert!(!may_be_stale(&driver("d-1", "o-2", true), "o-1"));
        assert!(!may_be_stale(&driver("d-1", "o-1", false), "o-1"));
        assert!(!may_be_stale(&driver("d-1", "", false), "o-1"));
    }

    #[test]
    fn a_claim_is_stale_when_its_order_went_to_another_driver_or_is_gone() {
        let claim = driver("d-1", "o-1", false);
        let theirs = assigned("o-1", "d-2");
        let ours = assigned("o-1", "d-1");
        let empty = Assignment::default();
        for waiting in [true, false] {
            assert!(stale(&claim, waiting, Some(&theirs)));
            assert!(!stale(&claim, waiting, Some(&ours)));
            assert!(!stale(&claim, waiting, Some(&empty)));
        }
        assert!(stale(&claim, false, None), "neither waiting nor assigned");
        assert!(!stale(&claim, true, None));
        assert!(!stale(&driver("d-1", "", false), false, None));
    }

    /// One step of three handlers running at once, for
    /// [`a_claim_judged_while_its_match_is_made_never_gives_the_driver_a_second_order`].
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// The handler that claimed d-1 for o-1 records the assignment,
        Record,
        /// confirms the claim,
        Confirm,
        /// and takes o-1 off the queue.
        Dequeue,
        /// Another handler matching the same pair claims d-1 for o-1 again.
        ClaimAgain,
        /// A handler placing o-2, which saw d-1's unconfirmed claim on o-1, reads whether o-1
        /// waits,
        ReadQueue,
        /// then its assignment,
        ReadAssignment,
        /// then tries to claim d-1 for o-2, taking over the claim if it judged it stale.
        ClaimForOther,
    }

    /// Every interleaving of the three sequences, each kept in its own order.
    fn interleavings(sequences: Vec<Vec<Step>>) -> Vec<Vec<Step>> {
        if sequences.iter().all(Vec::is_empty) {
            return vec![Vec::new()];
        }
        let mut all = Vec::new();
        for (i, sequence) in sequences.iter().enumerate() {
            let Some((&first, rest)) = sequence.split_first() else {
                continue;
            };
            let mut others = sequences.clone();
            others[i] = rest.to_vec();
            for mut tail in interleavings(others) {
                tail.insert(0, first);
                all.push(tail);
            }
        }
        all
    }

    #[test]
    fn a_claim_judged_while_its_match_is_made_never_gives_the_driver_a_second_order() {
        let runs = interleavings(vec![
            vec![Step::Record, Step::Confirm, Step::Dequeue],
            vec![Step::ClaimAgain],
            vec![Step::ReadQueue, Step::ReadAssignment, Step::ClaimForOther],
        ]);
        assert_eq!(runs.len(), 140);
        let seen = driver("d-1", "o-1", false);
        for run in runs {
            let (mut queued, mut assignment, mut stored) = (true, None, seen.clone());
            let (mut read_queued, mut read_assignment) = (true, None);
            for step in &run {
                match step {
                    Step::Record => assignment = Some(assigned("o-1", "d-1")),
                    Step::Confirm => stored = confirm(&stored, "o-1").unwrap_or(stored),
                    Step::Dequeue => queued = false,
                    Step::ClaimAgain => stored = claim(&stored, "o-1", None).unwrap_or(stored),
                    Step::ReadQueue => read_queued = queued,
                    Step::ReadAssignment => read_assignment = assignment.clone(),
                    Step::ClaimForOther => {
                        let judged = stale(&seen, read_queued, read_assignment.as_ref());
                        let taken = claim(&stored, "o-2", judged.then_some("o-1"));
                        assert_eq!(taken, None, "d-1 given o-2 while matched with o-1: {run:?}");
                    }
                }
            }
            assert_eq!(stored, driver("d-1", "o-1", true), "{run:?}");
        }
    }

    #[test]
    fn a_free_driver_on_shift_is_claimed_unconfirmed() {
        assert_eq!(
            claim(&driver("d-1", "", false), "o-1", None),
            Some(driver("d-1", "o-1", false))
        );
        assert_eq!(
            claim(&off_shift(driver("d-1", "", false)), "o-1", None),
            None
        );
    }

    #[test]
    fn a_driver_on_another_order_is_not_claimed() {
        assert_eq!(claim(&driver("d-1", "o-2", true), "o-1", None), None);
        assert_eq!(claim(&driver("d-1", "o-2", false), "o-1", None), None);
        assert_eq!(
            claim(&driver("d-1", "o-2", false), "o-1", Some("o-3")),
            None,
            "a stale judgement of another claim frees nothing"
        );
    }

    #[test]
    fn a_driver_claimed_for_the_same_order_is_claimed_again() {
        assert_eq!(
            claim(&driver("d-1", "o-1", false), "o-1", None),
            Some(driver("d-1", "o-1", false))
        );
        assert_eq!(
            claim(&driver("d-1", "o-1", true), "o-1", None),
            Some(driver("d-1", "o-1", true)),
            "a claim that became the assignment stays confirmed"
        );
        assert_eq!(
            claim(&off_shift(driver("d-1", "o-1", false)), "o-1", None),
            None
        );
    }

    #[test]
    fn a_stale_claim_is_taken_over_only_while_unconfirmed() {
        assert_eq!(
            claim(&driver("d-1", "o-2", false), "o-1", Some("o-2")),
            Some(driver("d-1", "o-1", false))
        );
        assert_eq!(
            claim(&driver("d-1", "o-2", true), "o-1", Some("o-2")),
            None,
            "confirmed since it was judged: the driver's assignment"
        );
        assert_eq!(
            claim(&off_shift(driver("d-1", "o-2", false)), "o-1", Some("o-2")),
            None
        );
    }

    #[test]
    fn only_an_unconfirmed_claim_on_the_order_is_confirmed() {
        assert_eq!(
            confirm(&driver("d-1", "o-1", false), "o-1"),
            Some(driver("d-1", "o-1", true))
        );
        assert_eq!(confirm(&driver("d-1", "o-1", true), "o-1"), None);
        assert_eq!(confirm(&driver("d-1", "o-2", false), "o-1"), None);
        assert_eq!(confirm(&driver("d-1", "", false), "o-1"), None);
    }

    #[test]
    fn a_driver_is_freed_only_of_a_claim_on_the_order() {
        assert_eq!(
            free(&driver("d-1", "o-1", true), "o-1"),
            Some(driver("d-1", "", false))
        );
        assert_eq!(
            free(&off_shift(driver("d-1", "o-1", false)), "o-1"),
            Some(off_shift(driver("d-1", "", false)))
        );
        assert_eq!(
            free(&driver("d-1", "o-2", true), "o-1"),
            None,
            "a delivery done does not free the driver of their next order"
        );
    }

    #[test]
    fn a_claim_met_again_is_completed_if_its_order_is_assigned_to_the_driver() {
        let ours = Record::new(assigned("o-1", "d-1"), at(1));
        assert_eq!(
            settle(&driver("d-1", "o-1", false), Some(ours.clone())),
            Settle::Complete(Box::new(ours.clone()))
        );
        assert_eq!(
            settle(&off_shift(driver("d-1", "o-1", true)), Some(ours.clone())),
            Settle::Complete(Box::new(ours)),
            "gone off shift after the match: it still stands"
        );
    }

    #[test]
    fn a_claim_met_again_without_its_assignment_is_retried_on_shift_and_released_off_shift() {
        let theirs = Record::new(assigned("o-1", "d-2"), at(1));
        let claim = driver("d-1", "o-1", false);
        assert_eq!(settle(&claim, None), Settle::Retry);
        assert_eq!(settle(&claim, Some(theirs.clone())), Settle::Retry);
        assert_eq!(settle(&off_shift(claim.clone()), None), Settle::Release);
        assert_eq!(settle(&off_shift(claim), Some(theirs)), Settle::Release);
    }

    #[test]
    fn waiting_orders_are_offered_oldest_first() {
        let queue: BTreeMap<String, Record<Delivery>> =
            [("o-a", 3), ("o-b", 1), ("o-c", 2), ("o-d", 1)]
                .into_iter()
                .map(|(id, secs)| (id.to_owned(), Record::new(Delivery::default(), at(secs))))
                .collect();
        assert_eq!(oldest_first(&queue), ids(&["o-b", "o-d", "o-c", "o-a"]));
    }

    #[test]
    fn the_sweep_offers_only_drivers_on_shift_without_a_claim() {
        let roster = roster(&[
            driver("d-1", "", false),
            driver("d-2", "o-1", false),
            driver("d-3", "o-2", true),
            off_shift(driver("d-4", "", false)),
            driver("d-5", "", false),
        ]);
        assert_eq!(unclaimed(&roster), ids(&["d-1", "d-5"]));
    }

    /// Runs a pairing to its end, answering each offer with `outcome`; returns the offers made.
    fn pair(
        drivers: &[&str],
        orders: &[&str],
        mut outcome: impl FnMut(&str, &str) -> Match,
    ) -> (Vec<(String, String)>, usize) {
        let mut pairing = Pairing::new(ids(drivers), ids(orders));
        let mut offers = Vec::new();
        while let Some((order, driver)) = pairing.next() {
            pairing.offered(outcome(&order, &driver));
            offers.push((order, driver));
        }
        (offers, pairing.matched())
    }

    fn offers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|&(o, d)| (o.to_owned(), d.to_owned()))
            .collect()
    }

    #[test]
    fn the_sweep_pairs_the_oldest_orders_with_free_drivers_until_either_runs_out() {
        let (made, matched) = pair(&["d-1", "d-2"], &["o-1", "o-2", "o-3"], |_, _| {
            Match::Assigned
        });
        assert_eq!(made, offers(&[("o-1", "d-2"), ("o-2", "d-1")]));
        assert_eq!(matched, 2);

        let (made, matched) = pair(&["d-1", "d-2", "d-3"], &["o-1"], |_, _| Match::Assigned);
        assert_eq!(made, offers(&[("o-1", "d-3")]));
        assert_eq!(matched, 1);

        assert_eq!(pair(&[], &["o-1"], |_, _| Match::Assigned).0, offers(&[]));
        assert_eq!(pair(&["d-1"], &[], |_, _| Match::Assigned).0, offers(&[]));
    }

    #[test]
    fn the_sweep_offers_an_order_to_the_next_driver_when_one_is_found_taken() {
        let (made, matched) = pair(&["d-1", "d-2"], &["o-1", "o-2"], |_, driver| {
            if driver == "d-2" {
                Match::DriverTaken
            } else {
                Match::Assigned
            }
        });
        assert_eq!(made, offers(&[("o-1", "d-2"), ("o-1", "d-1")]));
        assert_eq!(matched, 1);
    }

    #[test]
    fn the_sweep_offers_a_driver_the_next_order_when_one_is_found_taken() {
        let (made, matched) = pair(&["d-1"], &["o-1", "o-2", "o-3"], |order, _| {
            if order == "o-3" {
                Match::Assigned
            } else {
                Match::OrderTaken
            }
        });
        assert_eq!(
            made,
            offers(&[("o-1", "d-1"), ("o-2", "d-1"), ("o-3", "d-1")])
        );
        assert_eq!(matched, 1);
    }

    #[test]
    fn an_assignment_is_the_request_given_to_the_driver_in_the_orders_trace() {
        let mut request = Record::new(
            Delivery {
                order_id: "o-1".into(),
                status: DeliveryStatus::Requested.into(),
                ..Default::default()
            },
            at(1),
        );
        request
            .trace
            .insert("traceparent".into(), "00-order-trace-01".into());
        let made = assignment(
            request.clone(),
            driver("d-1", "o-1", false),
            at(9),
            "e-1".into(),
        );
        let delivery = made.value.delivery.as_ref().expect("a delivery");
        assert_eq!(delivery.order_id, "o-1");
        assert_eq!(delivery.status(), DeliveryStatus::Assigned);
        assert_eq!(delivery.driver_id, "d-1");
        assert_eq!(delivery.driver_name, "Driver d-1");
        assert_eq!(delivery.assigned_at, Some(at(9).into()));
        assert_eq!(made.value.event_id, "e-1");
        assert_eq!(made.time, at(9));
        assert_eq!(made.trace, request.trace);
        assert!(assigned_to(&made.value, "d-1"));
        assert!(!assigned_to(&made.value, "d-2"));
        assert!(!assigned_to(&Assignment::default(), "d-1"));
    }
}
