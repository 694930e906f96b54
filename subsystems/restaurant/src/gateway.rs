//! `gateway`: the restaurant subsystem's edge (the book's external service gateway).
//! Ingress turns the external `order.placed` into the kitchen's `ticket.received`; egress turns
//! internal facts into the external contracts. Nothing else in the subsystem knows either
//! shape, so internal events change without touching another subsystem.

use food_contracts::events::{MENU_CHANGED, ORDER_ACCEPTED, ORDER_PLACED, ORDER_READY};
use food_contracts::v1::{Menu, MenuItem, Order, OrderStatus};
use fractal::service::{Service, ServiceError};
use fractal::{Contract, Event, HandlerError, NewEvent};

use crate::events::{MENU_SAVED, TICKET_ACCEPTED, TICKET_READY, TICKET_RECEIVED};
use crate::v1::{MenuSaved, Ticket, TicketLine, TicketStatus};

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let publisher = service.publisher();
    let consumer = service
        .consumer()
        .translate(ORDER_PLACED, &publisher, ticket_received)
        .translate(MENU_SAVED, &publisher, menu_changed)
        .translate(TICKET_ACCEPTED, &publisher, order_accepted)
        .translate(TICKET_READY, &publisher, order_ready);
    service.run(consumer).await
}

/// Ingress: an order placed with any restaurant becomes a ticket in its kitchen.
fn ticket_received(order: Order, event: &Event) -> Result<NewEvent, HandlerError> {
    for (field, id) in [
        ("order_id", &order.order_id),
        ("restaurant_id", &order.restaurant_id),
    ] {
        food_contracts::check_id(field, id).map_err(HandlerError::permanent)?;
    }
    let ticket = Ticket {
        order_id: order.order_id.clone(),
        restaurant_id: order.restaurant_id.clone(),
        lines: order
            .lines
            .iter()
            .map(|line| TicketLine {
                name: line.name.clone(),
                quantity: line.quantity,
            })
            .collect(),
        status: TicketStatus::Received.into(),
        received_at: Some(event.time.into()),
        accepted_at: None,
        ready_at: None,
        order: Some(order),
    };
    Ok(TICKET_RECEIVED
        .event(&ticket.order_id, &ticket)
        .at(event.time))
}

/// Egress: customers see the dishes the kitchen can make now.
fn menu_changed(saved: MenuSaved, event: &Event) -> Result<NewEvent, HandlerError> {
    let menu = Menu {
        restaurant_id: saved.restaurant_id,
        restaurant_name: saved.restaurant_name,
        items: saved
            .dishes
            .into_iter()
            .filter(|dish| dish.available)
            .map(|dish| MenuItem {
                item_id: dish.dish_id,
                name: dish.name,
                description: dish.description,
                price_cents: dish.price_cents,
            })
            .collect(),
        changed_at: saved.saved_at,
    };
    Ok(MENU_CHANGED
        .event(&menu.restaurant_id, &menu)
        .at(event.time))
}

fn order_accepted(ticket: Ticket, event: &Event) -> Result<NewEvent, HandlerError> {
    order_update(ticket, event, ORDER_ACCEPTED, OrderStatus::Accepted)
}

fn order_ready(ticket: Ticket, event: &Event) -> Result<NewEvent, HandlerError> {
    order_update(ticket, event, ORDER_READY, OrderStatus::Ready)
}

/// Egress: the order as the customer placed it, with the kitchen's progress.
fn order_update(
    ticket: Ticket,
    event: &Event,
    contract: Contract<Order>,
    status: OrderStatus,
) -> Result<NewEvent, HandlerError> {
    let Some(mut order) = ticket.order else {
        return Err(HandlerError::permanent(format!(
            "ticket `{}` carries no order",
            ticket.order_id
        )));
    };
    order.set_status(status);
    order.accepted_at = ticket.accepted_at;
    order.ready_at = ticket.ready_at;
    Ok(contract.event(&order.order_id, &order).at(event.time))
}
