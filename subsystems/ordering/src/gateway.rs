//! `gateway`: the ordering subsystem's edge. Ingress turns menus and other subsystems' order
//! progress into internal events; egress publishes checkouts and menu views as contracts.

use food_contracts::events::{
    MENU_CHANGED, MENU_VIEWED, ORDER_ACCEPTED, ORDER_DELIVERED, ORDER_DRIVER_ASSIGNED,
    ORDER_PICKED_UP, ORDER_PLACED, ORDER_READY,
};
use food_contracts::v1::{Menu, MenuViewed, Order};
use fractal::service::{Service, ServiceError};
use fractal::{Event, HandlerError, NewEvent};

use crate::events::{CATALOG_UPDATED, MENU_BROWSED, ORDER_PROGRESSED, ORDER_SUBMITTED};
use crate::v1::{CatalogEntry, CatalogItem, MenuBrowsed, OrderProgressed, OrderSubmitted};

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let publisher = service.publisher();
    let mut consumer = service
        .consumer()
        .translate(MENU_CHANGED, &publisher, catalog_updated)
        .translate(MENU_BROWSED, &publisher, menu_viewed)
        .translate(ORDER_SUBMITTED, &publisher, order_placed);
    for progress in [
        ORDER_ACCEPTED,
        ORDER_READY,
        ORDER_DRIVER_ASSIGNED,
        ORDER_PICKED_UP,
        ORDER_DELIVERED,
    ] {
        consumer = consumer.translate(progress, &publisher, order_progressed);
    }
    service.run(consumer).await
}

/// Ingress: a restaurant's menu becomes its catalog entry.
fn catalog_updated(menu: Menu, event: &Event) -> Result<NewEvent, HandlerError> {
    food_contracts::check_id("restaurant_id", &menu.restaurant_id)
        .map_err(HandlerError::permanent)?;
    let entry = CatalogEntry {
        restaurant_id: menu.restaurant_id,
        restaurant_name: menu.restaurant_name,
        items: menu
            .items
            .into_iter()
            .map(|item| CatalogItem {
                item_id: item.item_id,
                name: item.name,
                description: item.description,
                price_cents: item.price_cents,
            })
            .collect(),
        changed_at: menu.changed_at,
    };
    Ok(CATALOG_UPDATED
        .event(&entry.restaurant_id, &entry)
        .at(event.time))
}

/// Ingress: whatever another subsystem says about an order is progress on it.
fn order_progressed(order: Order, event: &Event) -> Result<NewEvent, HandlerError> {
    food_contracts::check_id("order_id", &order.order_id).map_err(HandlerError::permanent)?;
    let progressed = OrderProgressed { order: Some(order) };
    Ok(ORDER_PROGRESSED
        .event(&event.key, &progressed)
        .at(event.time))
}

/// Egress: a checkout is the order placed.
fn order_placed(submitted: OrderSubmitted, event: &Event) -> Result<NewEvent, HandlerError> {
    let Some(order) = submitted.order else {
        return Err(HandlerError::permanent("order.submitted carries no order"));
    };
    Ok(ORDER_PLACED.event(&order.order_id, &order).at(event.time))
}

/// Egress: a menu opened is a menu viewed.
fn menu_viewed(browsed: MenuBrowsed, event: &Event) -> Result<NewEvent, HandlerError> {
    let viewed = MenuViewed {
        restaurant_id: browsed.restaurant_id,
        customer_id: browsed.customer_id,
        viewed_at: browsed.browsed_at,
    };
    Ok(MENU_VIEWED
        .event(&viewed.restaurant_id, &viewed)
        .at(event.time))
}
