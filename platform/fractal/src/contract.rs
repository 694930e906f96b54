//! Contracts in code: an event type bound once to the message it carries and to its scope.
//!
//! ```
//! use fractal::contract::{Contract, External, Internal};
//! use fractal::proto::Header as Order;
//!
//! /// A customer placed an order.
//! pub const ORDER_PLACED: Contract<Order> = Contract::external("order.placed");
//! /// A ticket reached the kitchen (private to its hub).
//! pub const TICKET_RECEIVED: Contract<Order, Internal> = Contract::internal("ticket.received");
//!
//! let order = Order { name: "o-1".into(), value: "2 pizzas".into() };
//! let event = ORDER_PLACED.event(&order.name, &order);
//! assert_eq!(event.subject(), "events.external.order.placed");
//! ```
//!
//! A publisher is given the [`NewEvent`] a contract makes, so a payload of another message does
//! not compile, and neither does an internal contract's event published as external: the scope
//! is the contract's. A consumer's [`crate::Consumer::on`] takes a contract and a handler of its
//! message. Tools that work with any contract (the bridge, the CLI) keep the untyped path:
//! [`NewEvent::from_parts`] and [`crate::Consumer::on_any`].

use std::marker::PhantomData;

use serde::Serialize;

use crate::{DecodeError, Event, NewEvent, Scope};

/// The scope of a [`Contract`], as a type: [`Internal`] or [`External`].
pub trait ScopeKind: sealed::Sealed {
    /// The scope.
    const SCOPE: Scope;
}

/// Events private to their subsystem's hub.
#[derive(Debug, Clone, Copy)]
pub enum Internal {}

/// Events other subsystems may read, through bridges.
#[derive(Debug, Clone, Copy)]
pub enum External {}

impl ScopeKind for Internal {
    const SCOPE: Scope = Scope::Internal;
}

impl ScopeKind for External {
    const SCOPE: Scope = Scope::External;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Internal {}
    impl Sealed for super::External {}
}

/// An event type, the message `M` its events carry, and its scope `S` (external unless said).
pub struct Contract<M, S = External> {
    event_type: &'static str,
    marker: PhantomData<fn() -> (M, S)>,
}

impl<M, S> Clone for Contract<M, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M, S> Copy for Contract<M, S> {}

impl<M, S: ScopeKind> std::fmt::Debug for Contract<M, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", S::SCOPE.token(), self.event_type)
    }
}

impl<M> Contract<M, External> {
    /// An external contract: events of `event_type` carrying `M`, which bridges may relay.
    pub const fn external(event_type: &'static str) -> Self {
        Contract {
            event_type,
            marker: PhantomData,
        }
    }
}

impl<M> Contract<M, Internal> {
    /// An internal contract: events of `event_type` carrying `M`, private to the hub.
    pub const fn internal(event_type: &'static str) -> Self {
        Contract {
            event_type,
            marker: PhantomData,
        }
    }
}

impl<M, S> Contract<M, S> {
    /// The event type (`order.placed`).
    pub const fn event_type(&self) -> &'static str {
        self.event_type
    }
}

impl<M: prost::Message + prost::Name + Default, S: ScopeKind> Contract<M, S> {
    /// The scope.
    pub const fn scope(&self) -> Scope {
        S::SCOPE
    }

    /// An event of this contract about the aggregate `key`, carrying `payload`.
    pub fn event(&self, key: impl Into<String>, payload: &M) -> NewEvent {
        NewEvent::new(self.event_type, key, payload).scope(S::SCOPE)
    }

    /// The payload of `event` as this contract's message.
    pub fn decode(&self, event: &Event) -> Result<M, DecodeError> {
        event.payload()
    }

    /// The contract without its types, to list and compare.
    pub const fn any(&self) -> AnyContract {
        AnyContract {
            event_type: self.event_type,
            scope: S::SCOPE,
            message: M::full_name,
        }
    }
}

/// A contract without its types: what a program declares and describes.
#[derive(Clone, Copy)]
pub struct AnyContract {
    event_type: &'static str,
    scope: Scope,
    message: fn() -> String,
}

impl AnyContract {
    /// The event type.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// The scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The message's fully qualified name (`food.contracts.v1.Order`).
    pub fn message(&self) -> String {
        (self.message)()
    }

    /// As it is described.
    pub fn described(&self) -> Described {
        Described {
            event_type: self.event_type.to_owned(),
            scope: self.scope.token().to_owned(),
            message: self.message(),
        }
    }
}

impl std::fmt::Debug for AnyContract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{} ({})",
            self.scope.token(),
            self.event_type,
            self.message()
        )
    }
}

impl PartialEq for AnyContract {
    fn eq(&self, other: &Self) -> bool {
        self.event_type == other.event_type
            && self.scope == other.scope
            && self.message() == other.message()
    }
}

/// A contract as a program describes it (`<program> --describe`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct Described {
    /// The event type.
    pub event_type: String,
    /// `internal` or `external`.
    pub scope: String,
    /// The message's fully qualified name.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Header;

    const PLACED: Contract<Header> = Contract::external("order.placed");
    const RECEIVED: Contract<Header, Internal> = Contract::internal("ticket.received");

    #[test]
    fn a_contract_makes_events_of_its_type_scope_and_message() {
        let header = Header {
            name: "o-1".into(),
            value: "v".into(),
        };
        let placed = PLACED.event("o-1", &header);
        assert_eq!(placed.subject(), "events.external.order.placed");
        assert_eq!(placed.payload_type, "fractal.platform.v1.Header");
        let received = RECEIVED.event("o-1", &header);
        assert_eq!(received.subject(), "events.internal.ticket.received");
        assert_eq!(
            PLACED.any().described(),
            Described {
                event_type: "order.placed".into(),
                scope: "external".into(),
                message: "fractal.platform.v1.Header".into(),
            }
        );
        assert_eq!(format!("{RECEIVED:?}"), "internal.ticket.received");
    }
}
