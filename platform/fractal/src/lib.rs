//! Fractal: a platform for event-first systems built from autonomous subsystems.
//!
//! Every subsystem owns a [`Hub`] (a NATS JetStream deployment). Its services publish events
//! with a [`Publisher`], react to them with a [`Consumer`], and keep what they could not process
//! as [faults](fault). Events are facts: the hub's event stream keeps them for good and any
//! consumer can replay them.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use fractal::proto::Header as Order;
//! use fractal::{Consumer, ConsumerConfig, Contract, Hub, HubConfig, Publisher};
//! use tokio_util::sync::CancellationToken;
//!
//! /// A customer placed an order: declared once, used to publish and to consume.
//! const ORDER_PLACED: Contract<Order> = Contract::external("order.placed");
//!
//! let hub = Hub::connect(&HubConfig::local("ordering", "nats://127.0.0.1:4222")).await?;
//! hub.provision().await?;
//! let publisher = Publisher::new(&hub, "ordering/checkout");
//! # let order = Order::default();
//! publisher.publish(ORDER_PLACED.event("order-1", &order)).await?;
//!
//! Consumer::new(&hub, "kitchen", ConsumerConfig::default())
//!     .on(ORDER_PLACED, |order: Order, event| async move {
//!         # let _ = (order, event);
//!         Ok(())
//!     })
//!     .run(CancellationToken::new())
//!     .await?;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod config;
pub mod consume;
pub mod contract;
pub mod event;
pub mod fault;
pub mod grpc;
pub mod hub;
pub mod metrics;
pub mod publish;
pub mod service;
pub mod telemetry;
pub mod view;
pub mod wire;

/// The platform's protobuf types (`fractal.platform.v1`).
#[allow(missing_docs, unreachable_pub, missing_debug_implementations)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/fractal.platform.v1.rs"));

    /// The descriptor set (`FileDescriptorSet`) of these types, with their comments.
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/fractal.platform.v1.bin"));
}

pub use consume::{Consumer, ConsumerConfig, HandlerError};
pub use contract::Contract;
pub use event::{DecodeError, Event, EventView, NewEvent};
pub use hub::{Hub, HubConfig};
pub use publish::{Published, Publisher};
pub use wire::Scope;
