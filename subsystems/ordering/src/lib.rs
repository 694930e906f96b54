//! # Ordering subsystem
//!
//! Customers browse menus, place orders and follow them. Its board:
//!
//! | actor / source | command or event in | service | event out (internal) | external out (by `gateway`) |
//! | --- | --- | --- | --- | --- |
//! | restaurant (via bridge) | `menu.changed` | `gateway` (ingress) | `catalog.updated` | |
//! | customer | `GetMenu` | `checkout` | `menu.browsed` | `menu.viewed` |
//! | customer | `PlaceOrder` | `checkout` | `order.submitted` | `order.placed` |
//! | restaurant, delivery (via bridge) | `order.accepted`, `order.ready`, `order.driver_assigned`, `order.picked_up`, `order.delivered` | `gateway` (ingress) | `order.progressed` | |
//!
//! `checkout` keeps two views, `catalog` and `orders`, from which customers' queries are
//! answered without asking another subsystem.

mod checkout;
mod gateway;

use fractal::service::Subsystem;

/// The subsystem's internal events and gRPC API (`food.ordering.v1`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/food.ordering.v1.rs"));
}

/// The encoded descriptors of `food.ordering.v1`, for gRPC reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Internal event types: private to the ordering hub.
pub mod events {
    /// A restaurant's menu as customers can order from it ([`super::v1::CatalogEntry`]).
    pub const CATALOG_UPDATED: &str = "catalog.updated";
    /// A customer opened a menu ([`super::v1::MenuBrowsed`]).
    pub const MENU_BROWSED: &str = "menu.browsed";
    /// A customer checked out ([`super::v1::OrderSubmitted`]).
    pub const ORDER_SUBMITTED: &str = "order.submitted";
    /// Another subsystem moved the order on ([`super::v1::OrderProgressed`]).
    pub const ORDER_PROGRESSED: &str = "order.progressed";
}

/// The program and its services, by the name a config's `service` key gives.
pub const SUBSYSTEM: Subsystem = Subsystem {
    program: "ordering",
    services: &[
        ("checkout", |service| Box::pin(checkout::run(service))),
        ("gateway", |service| Box::pin(gateway::run(service))),
    ],
};
