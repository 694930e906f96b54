//! # The group level
//!
//! Fractal's shape one level up: whole food-delivery systems (`north`, `south`), each the
//! reference topology unchanged, are the subsystems of a group. Each city's system hub has a
//! bridge up to the `group` hub carrying `order.placed` and `order.delivered`; nothing flows
//! back down. The group's one service, `revenue`, counts each city's orders and what the
//! delivered ones brought in, from those facts alone.

mod revenue;

use food_contracts::events::{ORDER_DELIVERED, ORDER_PLACED};
use fractal::service::{Declaration, Subsystem};

/// The group's API (`food.group.v1`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/food.group.v1.rs"));
}

/// The encoded descriptors of `food.group.v1`, for gRPC reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The program and the group hub's services, with the external contracts each consumes.
pub const SUBSYSTEM: Subsystem = Subsystem {
    program: "group",
    services: &[
        Declaration::service("revenue", |service| Box::pin(revenue::run(service)))
            .consumes(&[ORDER_PLACED.any(), ORDER_DELIVERED.any()]),
    ],
};
