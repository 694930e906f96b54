//! # Restaurant subsystem
//!
//! Restaurants keep their menus and work the orders that reach them. Its board:
//!
//! | actor / source | command or event in | service | event out (internal) | external out (by `gateway`) |
//! | --- | --- | --- | --- | --- |
//! | restaurant staff | `SaveMenu` | `menus` | `menu.saved` | `menu.changed` |
//! | ordering (via bridge) | `order.placed` | `gateway` (ingress) | `ticket.received` | |
//! | restaurant staff | `AcceptOrder` | `kitchen` | `ticket.accepted` | `order.accepted` |
//! | restaurant staff | `MarkReady` | `kitchen` | `ticket.ready` | `order.ready` |
//!
//! Services talk only through the restaurant hub; the `gateway` is the subsystem's edge, the
//! only place that knows the external contracts' shape.

mod gateway;
mod kitchen;
mod menus;

use fractal::service::Subsystem;

/// The subsystem's internal events and gRPC APIs (`food.restaurant.v1`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/food.restaurant.v1.rs"));
}

/// The encoded descriptors of `food.restaurant.v1`, for gRPC reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Internal event types: private to the restaurant hub.
pub mod events {
    /// A restaurant saved its menu ([`super::v1::MenuSaved`]).
    pub const MENU_SAVED: &str = "menu.saved";
    /// An order reached the kitchen ([`super::v1::Ticket`]).
    pub const TICKET_RECEIVED: &str = "ticket.received";
    /// The kitchen accepted it.
    pub const TICKET_ACCEPTED: &str = "ticket.accepted";
    /// It is ready for pick-up.
    pub const TICKET_READY: &str = "ticket.ready";
}

/// The program and its services, by the name a config's `service` key gives.
pub const SUBSYSTEM: Subsystem = Subsystem {
    program: "restaurant",
    services: &[
        ("menus", |service| Box::pin(menus::run(service))),
        ("kitchen", |service| Box::pin(kitchen::run(service))),
        ("gateway", |service| Box::pin(gateway::run(service))),
    ],
};
