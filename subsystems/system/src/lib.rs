//! # The food-delivery system level
//!
//! The three subsystems (`restaurant`, `ordering`, `delivery`) join through a **system hub**:
//! each has a bridge to it and one from it (see `bridges/`), so the system is itself shaped
//! like a subsystem: a hub, the routes in and out of it, and services of its own.
//!
//! Its one service, `insights`, shows what events as facts give for free: it was added
//! without touching any producer, and counts menu views per restaurant and orders placed per
//! minute from the contracts the bridges already bring to the system hub.

pub mod chaos;
pub mod demo;
mod insights;
pub mod load;

use food_contracts::events::{MENU_VIEWED, ORDER_PLACED};
use fractal::service::{Declaration, Subsystem};

/// The insights API (`food.insights.v1`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/food.insights.v1.rs"));
}

/// The encoded descriptors of `food.insights.v1`, for gRPC reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The program and the system hub's services, by the name a config's `service` key gives,
/// with the external contracts each publishes and consumes.
pub const SUBSYSTEM: Subsystem = Subsystem {
    program: "system",
    services: &[
        Declaration::service("insights", |service| Box::pin(insights::run(service)))
            .consumes(&[MENU_VIEWED.any(), ORDER_PLACED.any()]),
    ],
};
