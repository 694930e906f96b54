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

use food_contracts::events::{MENU_CHANGED, ORDER_ACCEPTED, ORDER_PLACED, ORDER_READY};
use fractal::service::{Declaration, Subsystem};

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

/// Internal contracts: private to the restaurant hub.
pub mod events {
    use fractal::Contract;
    use fractal::contract::Internal;

    use super::v1::{MenuSaved, Ticket};

    /// A restaurant saved its menu ([`MenuSaved`]).
    pub const MENU_SAVED: Contract<MenuSaved, Internal> = Contract::internal("menu.saved");
    /// An order reached the kitchen ([`Ticket`]).
    pub const TICKET_RECEIVED: Contract<Ticket, Internal> = Contract::internal("ticket.received");
    /// The kitchen accepted it ([`Ticket`]).
    pub const TICKET_ACCEPTED: Contract<Ticket, Internal> = Contract::internal("ticket.accepted");
    /// It is ready for pick-up ([`Ticket`]).
    pub const TICKET_READY: Contract<Ticket, Internal> = Contract::internal("ticket.ready");
}

/// The program and its services, by the name a config's `service` key gives, with the
/// external contracts each publishes and consumes.
pub const SUBSYSTEM: Subsystem = Subsystem {
    program: "restaurant",
    services: &[
        Declaration::service("menus", |service| Box::pin(menus::run(service))),
        Declaration::service("kitchen", |service| Box::pin(kitchen::run(service))),
        Declaration::service("gateway", |service| Box::pin(gateway::run(service)))
            .publishes(&[MENU_CHANGED.any(), ORDER_ACCEPTED.any(), ORDER_READY.any()])
            .consumes(&[ORDER_PLACED.any()]),
    ],
};
