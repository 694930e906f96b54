//! The food-delivery system's external contracts: the events that cross from one subsystem's
//! hub to another's, each a full snapshot of its aggregate (`proto/food/contracts/v1`).
//!
//! | event ([`events`]) | payload | produced by | consumed by |
//! | --- | --- | --- | --- |
//! | `menu.changed` | [`v1::Menu`] | restaurant | ordering |
//! | `menu.viewed` | [`v1::MenuViewed`] | ordering | insights |
//! | `order.placed` | [`v1::Order`] | ordering | restaurant, insights |
//! | `order.accepted` | [`v1::Order`] | restaurant | ordering |
//! | `order.ready` | [`v1::Order`] | restaurant | ordering, delivery |
//! | `order.driver_assigned` | [`v1::Order`] | delivery | ordering |
//! | `order.picked_up` | [`v1::Order`] | delivery | ordering |
//! | `order.delivered` | [`v1::Order`] | delivery | ordering |

use std::time::SystemTime;

/// Version 1 of the contracts (`food.contracts.v1`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/food.contracts.v1.rs"));
}

/// The external contracts: each event type with the message it carries. Producers make their
/// events with [`Contract::event`](fractal::Contract::event), consumers handle them with
/// [`Consumer::on`](fractal::Consumer::on), and each service declares the ones it publishes and
/// consumes.
pub mod events {
    use fractal::Contract;

    use super::v1::{Menu, MenuViewed, Order};

    /// A restaurant's menu changed ([`Menu`]).
    pub const MENU_CHANGED: Contract<Menu> = Contract::external("menu.changed");
    /// A customer viewed a menu ([`MenuViewed`]).
    pub const MENU_VIEWED: Contract<MenuViewed> = Contract::external("menu.viewed");
    /// A customer placed an order ([`Order`]).
    pub const ORDER_PLACED: Contract<Order> = Contract::external("order.placed");
    /// The restaurant accepted the order ([`Order`]).
    pub const ORDER_ACCEPTED: Contract<Order> = Contract::external("order.accepted");
    /// The order is ready for pick-up ([`Order`]).
    pub const ORDER_READY: Contract<Order> = Contract::external("order.ready");
    /// A driver was assigned to the order ([`Order`]).
    pub const ORDER_DRIVER_ASSIGNED: Contract<Order> = Contract::external("order.driver_assigned");
    /// The driver picked the order up ([`Order`]).
    pub const ORDER_PICKED_UP: Contract<Order> = Contract::external("order.picked_up");
    /// The driver delivered the order ([`Order`]).
    pub const ORDER_DELIVERED: Contract<Order> = Contract::external("order.delivered");
}

/// A protobuf timestamp for `time`.
pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    time.into()
}

/// The time a protobuf timestamp stands for; the epoch if absent or out of range.
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> SystemTime {
    timestamp
        .and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Milliseconds since the epoch of a protobuf timestamp; 0 if absent.
pub fn millis(timestamp: Option<&prost_types::Timestamp>) -> u64 {
    time(timestamp)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks an identifier (restaurant, order, customer, driver, item): 1 to 64 letters, digits,
/// `-`, `_` or `.`, so that it can key views and headers as it is. The error names `field`.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field}: must not be empty"));
    }
    if id.len() > 64 {
        return Err(format!("{field}: `{id}` is longer than 64 characters"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{field}: `{id}` contains `{bad}`; use letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

impl v1::Order {
    /// Folds another snapshot of the same order into this one, as views do: the furthest
    /// status wins and each step's time, once known, stays. The result is the same whatever
    /// order the snapshots come in and however often.
    pub fn merge(&mut self, other: &v1::Order) {
        if other.status > self.status {
            self.status = other.status;
        }
        for (mine, theirs) in [
            (&mut self.placed_at, &other.placed_at),
            (&mut self.accepted_at, &other.accepted_at),
            (&mut self.ready_at, &other.ready_at),
            (&mut self.driver_assigned_at, &other.driver_assigned_at),
            (&mut self.picked_up_at, &other.picked_up_at),
            (&mut self.delivered_at, &other.delivered_at),
        ] {
            if mine.is_none() {
                *mine = *theirs;
            }
        }
        if self.driver.is_none() {
            self.driver.clone_from(&other.driver);
        }
    }

    /// The steps the order went through so far, with their times, in the order they happen.
    pub fn steps(&self) -> Vec<(v1::OrderStatus, prost_types::Timestamp)> {
        use v1::OrderStatus as S;
        [
            (S::Placed, self.placed_at),
            (S::Accepted, self.accepted_at),
            (S::Ready, self.ready_at),
            (S::DriverAssigned, self.driver_assigned_at),
            (S::PickedUp, self.picked_up_at),
            (S::Delivered, self.delivered_at),
        ]
        .into_iter()
        .filter_map(|(status, at)| at.map(|at| (status, at)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_named() {
        assert!(check_id("order_id", "o-1.a_B").is_ok());
        assert_eq!(
            check_id("order_id", "").unwrap_err(),
            "order_id: must not be empty"
        );
        assert!(
            check_id("driver_id", "a b")
                .unwrap_err()
                .starts_with("driver_id: `a b` contains ` `")
        );
        assert!(check_id("x", &"a".repeat(65)).is_err());
    }

    fn snapshot(status: v1::OrderStatus, seconds: i64) -> v1::Order {
        let at = Some(prost_types::Timestamp { seconds, nanos: 0 });
        let mut order = v1::Order {
            order_id: "o-1".into(),
            status: status.into(),
            ..Default::default()
        };
        match status {
            v1::OrderStatus::Placed => order.placed_at = at,
            v1::OrderStatus::Accepted => order.accepted_at = at,
            v1::OrderStatus::Ready => order.ready_at = at,
            v1::OrderStatus::DriverAssigned => {
                order.driver_assigned_at = at;
                order.driver = Some(v1::Driver {
                    driver_id: "d-1".into(),
                    name: "Dee".into(),
                });
            }
            v1::OrderStatus::PickedUp => order.picked_up_at = at,
            v1::OrderStatus::Delivered => order.delivered_at = at,
            v1::OrderStatus::Unspecified => {}
        }
        order
    }

    #[test]
    fn merging_snapshots_ignores_their_order_and_repeats() {
        use v1::OrderStatus as S;
        let snapshots = [
            snapshot(S::Placed, 1),
            snapshot(S::Accepted, 2),
            snapshot(S::Ready, 3),
            snapshot(S::DriverAssigned, 4),
            snapshot(S::PickedUp, 5),
            snapshot(S::Delivered, 6),
        ];
        let fold = |order: &[usize]| {
            let mut merged = snapshots[order[0]].clone();
            for &i in &order[1..] {
                merged.merge(&snapshots[i]);
            }
            merged
        };
        let in_order = fold(&[0, 1, 2, 3, 4, 5]);
        assert_eq!(fold(&[5, 3, 0, 0, 4, 1, 2, 5, 3]), in_order);
        assert_eq!(in_order.status(), S::Delivered);
        let steps: Vec<S> = in_order.steps().into_iter().map(|(s, _)| s).collect();
        assert_eq!(
            steps,
            [
                S::Placed,
                S::Accepted,
                S::Ready,
                S::DriverAssigned,
                S::PickedUp,
                S::Delivered
            ]
        );
    }
}
