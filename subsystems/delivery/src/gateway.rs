//! `gateway`: the delivery subsystem's edge. Ingress turns a ready order into a delivery
//! request; egress tells the other subsystems about the delivery's progress, each time with the
//! full order.

use food_contracts::events::{
    ORDER_DELIVERED, ORDER_DRIVER_ASSIGNED, ORDER_PICKED_UP, ORDER_READY,
};
use food_contracts::v1::{Driver, Order, OrderStatus};
use fractal::service::{Service, ServiceError};
use fractal::{Contract, Event, HandlerError, NewEvent};

use crate::events::{
    DELIVERY_ASSIGNED, DELIVERY_DELIVERED, DELIVERY_PICKED_UP, DELIVERY_REQUESTED,
};
use crate::v1::{Delivery, DeliveryStatus};

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let publisher = service.publisher();
    let consumer = service
        .consumer()
        .translate(ORDER_READY, &publisher, delivery_requested)
        .translate(DELIVERY_ASSIGNED, &publisher, order_driver_assigned)
        .translate(DELIVERY_PICKED_UP, &publisher, order_picked_up)
        .translate(DELIVERY_DELIVERED, &publisher, order_delivered);
    service.run(consumer).await
}

/// Ingress: an order ready at a restaurant's counter needs a driver.
fn delivery_requested(order: Order, event: &Event) -> Result<NewEvent, HandlerError> {
    food_contracts::check_id("order_id", &order.order_id).map_err(HandlerError::permanent)?;
    let delivery = Delivery {
        order_id: order.order_id.clone(),
        order: Some(order),
        status: DeliveryStatus::Requested.into(),
        requested_at: Some(event.time.into()),
        ..Default::default()
    };
    Ok(DELIVERY_REQUESTED
        .event(&delivery.order_id, &delivery)
        .at(event.time))
}

fn order_driver_assigned(delivery: Delivery, event: &Event) -> Result<NewEvent, HandlerError> {
    order_update(
        delivery,
        event,
        ORDER_DRIVER_ASSIGNED,
        OrderStatus::DriverAssigned,
    )
}

fn order_picked_up(delivery: Delivery, event: &Event) -> Result<NewEvent, HandlerError> {
    order_update(delivery, event, ORDER_PICKED_UP, OrderStatus::PickedUp)
}

fn order_delivered(delivery: Delivery, event: &Event) -> Result<NewEvent, HandlerError> {
    order_update(delivery, event, ORDER_DELIVERED, OrderStatus::Delivered)
}

/// Egress: the order as the restaurant handed it over, with the delivery's progress.
fn order_update(
    delivery: Delivery,
    event: &Event,
    contract: Contract<Order>,
    status: OrderStatus,
) -> Result<NewEvent, HandlerError> {
    let Some(mut order) = delivery.order else {
        return Err(HandlerError::permanent(format!(
            "delivery `{}` carries no order",
            delivery.order_id
        )));
    };
    order.set_status(status);
    order.driver = Some(Driver {
        driver_id: delivery.driver_id,
        name: delivery.driver_name,
    });
    order.driver_assigned_at = delivery.assigned_at;
    order.picked_up_at = delivery.picked_up_at;
    order.delivered_at = delivery.delivered_at;
    Ok(contract.event(&order.order_id, &order).at(event.time))
}
