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

use food_contracts::events::{
    MENU_CHANGED, MENU_VIEWED, ORDER_ACCEPTED, ORDER_DELIVERED, ORDER_DRIVER_ASSIGNED,
    ORDER_PICKED_UP, ORDER_PLACED, ORDER_READY,
};
use fractal::service::{Declaration, Subsystem};

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

/// Internal contracts: private to the ordering hub.
pub mod events {
    use fractal::Contract;
    use fractal::contract::Internal;

    use super::v1::{CatalogEntry, MenuBrowsed, OrderProgressed, OrderSubmitted};

    /// A restaurant's menu as customers can order from it ([`CatalogEntry`]).
    pub const CATALOG_UPDATED: Contract<CatalogEntry, Internal> =
        Contract::internal("catalog.updated");
    /// A customer opened a menu ([`MenuBrowsed`]).
    pub const MENU_BROWSED: Contract<MenuBrowsed, Internal> = Contract::internal("menu.browsed");
    /// A customer checked out ([`OrderSubmitted`]).
    pub const ORDER_SUBMITTED: Contract<OrderSubmitted, Internal> =
        Contract::internal("order.submitted");
    /// Another subsystem moved the order on ([`OrderProgressed`]).
    pub const ORDER_PROGRESSED: Contract<OrderProgressed, Internal> =
        Contract::internal("order.progressed");
}

/// The program and its services, by the name a config's `service` key gives, with the
/// external contracts each publishes and consumes.
pub const SUBSYSTEM: Subsystem = Subsystem {
    program: "ordering",
    services: &[
        Declaration::service("checkout", |service| Box::pin(checkout::run(service))),
        Declaration::service("gateway", |service| Box::pin(gateway::run(service)))
            .publishes(&[MENU_VIEWED.any(), ORDER_PLACED.any()])
            .consumes(&[
                MENU_CHANGED.any(),
                ORDER_ACCEPTED.any(),
                ORDER_READY.any(),
                ORDER_DRIVER_ASSIGNED.any(),
                ORDER_PICKED_UP.any(),
                ORDER_DELIVERED.any(),
            ]),
    ],
};
