//! # Delivery subsystem
//!
//! Drivers report their status, are assigned orders that are ready, pick them up and deliver
//! them. Its board:
//!
//! | actor / source | command or event in | service | event out (internal) | external out (by `gateway`) |
//! | --- | --- | --- | --- | --- |
//! | restaurant (via bridge) | `order.ready` | `gateway` (ingress) | `delivery.requested` | |
//! | driver | `SetStatus` | `drivers` | `driver.status.changed` | |
//! | policy: a ready order needs a free driver | `delivery.requested`, `driver.status.changed`, `delivery.delivered` | `dispatch` (control) | `delivery.assigned` | `order.driver_assigned` |
//! | driver | `PickUp` | `drivers` | `delivery.picked_up` | `order.picked_up` |
//! | driver | `Deliver` | `drivers` | `delivery.delivered` | `order.delivered` |

mod dispatch;
mod drivers;
mod gateway;

use food_contracts::events::{
    ORDER_DELIVERED, ORDER_DRIVER_ASSIGNED, ORDER_PICKED_UP, ORDER_READY,
};
use fractal::service::{Declaration, Subsystem};

/// The subsystem's internal events and gRPC API (`food.delivery.v1`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/food.delivery.v1.rs"));
}

/// The encoded descriptors of `food.delivery.v1`, for gRPC reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Internal contracts: private to the delivery hub.
pub mod events {
    use fractal::Contract;
    use fractal::contract::Internal;

    use super::v1::{Delivery, DriverStatusChanged};

    /// A driver went on or off shift ([`DriverStatusChanged`]).
    pub const DRIVER_STATUS_CHANGED: Contract<DriverStatusChanged, Internal> =
        Contract::internal("driver.status.changed");
    /// A ready order needs a driver ([`Delivery`]).
    pub const DELIVERY_REQUESTED: Contract<Delivery, Internal> =
        Contract::internal("delivery.requested");
    /// Dispatch chose a driver for it ([`Delivery`]).
    pub const DELIVERY_ASSIGNED: Contract<Delivery, Internal> =
        Contract::internal("delivery.assigned");
    /// The driver has it ([`Delivery`]).
    pub const DELIVERY_PICKED_UP: Contract<Delivery, Internal> =
        Contract::internal("delivery.picked_up");
    /// The customer has it ([`Delivery`]).
    pub const DELIVERY_DELIVERED: Contract<Delivery, Internal> =
        Contract::internal("delivery.delivered");
}

/// The program and its services, by the name a config's `service` key gives, with the
/// external contracts each publishes and consumes.
pub const SUBSYSTEM: Subsystem = Subsystem {
    program: "delivery",
    services: &[
        Declaration::service("drivers", |service| Box::pin(drivers::run(service))),
        Declaration::service("dispatch", |service| Box::pin(dispatch::run(service))),
        Declaration::service("gateway", |service| Box::pin(gateway::run(service)))
            .publishes(&[
                ORDER_DRIVER_ASSIGNED.any(),
                ORDER_PICKED_UP.any(),
                ORDER_DELIVERED.any(),
            ])
            .consumes(&[ORDER_READY.any()]),
    ],
};
