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

use fractal::service::Subsystem;

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

/// Internal event types: private to the delivery hub.
pub mod events {
    /// A driver went on or off shift ([`super::v1::DriverStatusChanged`]).
    pub const DRIVER_STATUS_CHANGED: &str = "driver.status.changed";
    /// A ready order needs a driver ([`super::v1::Delivery`]).
    pub const DELIVERY_REQUESTED: &str = "delivery.requested";
    /// Dispatch chose a driver for it.
    pub const DELIVERY_ASSIGNED: &str = "delivery.assigned";
    /// The driver has it.
    pub const DELIVERY_PICKED_UP: &str = "delivery.picked_up";
    /// The customer has it.
    pub const DELIVERY_DELIVERED: &str = "delivery.delivered";
}

/// The program and its services, by the name a config's `service` key gives.
pub const SUBSYSTEM: Subsystem = Subsystem {
    program: "delivery",
    services: &[
        ("drivers", |service| Box::pin(drivers::run(service))),
        ("dispatch", |service| Box::pin(dispatch::run(service))),
        ("gateway", |service| Box::pin(gateway::run(service))),
    ],
};
