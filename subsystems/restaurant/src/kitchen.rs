//! `kitchen`: the restaurant's staff work the orders that reach them. The `tickets` view is
//! built from `ticket.*` events; a command checks the ticket's status, publishes the next fact
//! and applies it to the view at once, so the next command sees it. The view is indexed by
//! restaurant (`tickets_by_restaurant`, `<restaurant>.<order>`, and
//! `open_tickets_by_restaurant` with only the tickets not ready yet), so that `ListTickets`
//! reads one restaurant's tickets and nothing else. Kitchen displays poll the open tickets, so
//! the service keeps a live copy of that index and answers from memory.

use std::time::SystemTime;

use fractal::grpc::GrpcServer;
use fractal::service::{Service, ServiceError};
use fractal::view::{Index, LiveView, Record, View, ViewError, key};
use fractal::{Event, HandlerError, Publisher, telemetry};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::events::{TICKET_ACCEPTED, TICKET_READY, TICKET_RECEIVED};
use crate::v1::kitchen_server::{Kitchen, KitchenServer};
use crate::v1::{ListTicketsRequest, ListTicketsResponse, Ticket, TicketRequest, TicketStatus};

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let place = |order_id: &str, t: &Ticket| key(&[&t.restaurant_id, order_id]);
    let by_restaurant = Index::open(&service.hub, "tickets_by_restaurant", place).await?;
    let open_by_restaurant = Index::open(&service.hub, "open_tickets_by_restaurant", place)
        .await?
        .only(|t| t.status() != TicketStatus::Ready);
    let open = open_by_restaurant.view().live().await?;
    let view = View::<Ticket>::open(&service.hub, "tickets")
        .await?
        .indexed_by(by_restaurant.clone())
        .indexed_by(open_by_restaurant.clone());
    let consumer = service
        .consumer()
        .with_state(view.clone())
        .on(TICKET_RECEIVED, apply)
        .on(TICKET_ACCEPTED, apply)
        .on(TICKET_READY, apply);
    let api = KitchenApi {
        view,
        by_restaurant,
        open_by_restaurant,
        open,
        publisher: service.publisher(),
    };
    let grpc = GrpcServer::new()
        .service(KitchenServer::new(api))
        .descriptors(crate::DESCRIPTORS);
    service.serve(grpc).run(consumer).await
}

async fn apply(view: View<Ticket>, ticket: Ticket, event: Event) -> Result<(), HandlerError> {
    for (field, id) in [
        ("order_id", &ticket.order_id),
        ("restaurant_id", &ticket.restaurant_id),
    ] {
        food_contracts::check_id(field, id).map_err(HandlerError::permanent)?;
    }
    store(&view, ticket, event.time).await?;
    Ok(())
}

/// A ticket only moves forward (received → accepted → ready), so the furthest status wins,
/// whatever order the events arrive in and however often.
pub(crate) async fn store(
    view: &View<Ticket>,
    ticket: Ticket,
    time: SystemTime,
) -> Result<(), ViewError> {
    let key = ticket.order_id.clone();
    view.update(&key, |current| match current {
        Some(current) if current.value.status >= ticket.status => None,
        Some(current) => Some(current.with(ticket.clone(), time)),
        None => Some(Record::new(ticket.clone(), time)),
    })
    .await?;
    Ok(())
}

struct KitchenApi {
    view: View<Ticket>,
    by_restaurant: Index<Ticket>,
    open_by_restaurant: Index<Ticket>,
    /// A live copy of `open_tickets_by_restaurant`, which kitchen displays poll.
    open: LiveView<Ticket>,
    publisher: Publisher,
}

impl KitchenApi {
    /// Moves a ticket from `from` to `to`, traced as part of its order's trace.
    async fn advance(
        &self,
        request: TicketRequest,
        from: TicketStatus,
        to: TicketStatus,
    ) -> Result<Ticket, Status> {
        for (field, id) in [
            ("restaurant_id", &request.restaurant_id),
            ("order_id", &request.order_id),
        ] {
            food_contracts::check_id(field, id).map_err(Status::invalid_argument)?;
        }
        let record = match self.view.get(&request.order_id).await? {
            Some(record) if record.value.restaurant_id == request.restaurant_id => record,
            _ => {
                return Err(Status::not_found(format!(
                    "order `{}` has not reached restaurant `{}`",
                    request.order_id, request.restaurant_id
                )));
            }
        };
        let status = record.value.status();
        if status != from {
            return Err(Status::failed_precondition(format!(
                "order `{}` is {}; it must be {} to become {}",
                request.order_id,
                name(status),
                name(from),
                name(to)
            )));
        }
        let span = tracing::info_span!("kitchen", otel.name = format!("kitchen {}", name(to)), order_id = %request.order_id);
        telemetry::continue_from(&span, &record.trace);
        async {
            let now = SystemTime::now();
            let mut ticket = record.value;
            ticket.set_status(to);
            let contract = match to {
                TicketStatus::Accepted => {
                    ticket.accepted_at = Some(now.into());
                    TICKET_ACCEPTED
                }
                _ => {
                    ticket.ready_at = Some(now.into());
                    TICKET_READY
                }
            };
            // One id per ticket and step: a retry, or two clicks at once, store it once.
            let id = fractal::event::stable_id(
                food_contracts::millis(ticket.received_at.as_ref()),
                &[&ticket.order_id, contract.event_type()],
            );
            self.publisher
                .publish(
                    contract
                        .event(&ticket.order_id, &ticket)
                        .at(now)
                        .with_id(id),
                )
                .await?;
            store(&self.view, ticket.clone(), now).await?;
            // The next `ListTickets` shows this step.
            self.open
                .wait_for(self.open_by_restaurant.written())
                .await?;
            Ok(ticket)
        }
        .instrument(span)
        .await
    }
}

fn name(status: TicketStatus) -> &'static str {
    match status {
        TicketStatus::Unspecified => "unknown",
        TicketStatus::Received => "received",
        TicketStatus::Accepted => "accepted",
        TicketStatus::Ready => "ready",
    }
}

#[tonic::async_trait]
impl Kitchen for KitchenApi {
    async fn list_tickets(
        &self,
        request: Request<ListTicketsRequest>,
    ) -> Result<Response<ListTicketsResponse>, Status> {
        let request = request.into_inner();
        let restaurant = request.restaurant_id;
        food_contracts::check_id("restaurant_id", &restaurant).map_err(Status::invalid_argument)?;
        let prefix = key(&[&restaurant]);
        let listed = if request.open_only {
            self.open.scan(&prefix)
        } else {
            self.by_restaurant.view().scan(&prefix).await?
        };
        let mut tickets: Vec<Ticket> = listed.into_iter().map(|(_, record)| record.value).collect();
        tickets.sort_by_key(|t| food_contracts::time(t.received_at.as_ref()));
        Ok(Response::new(ListTicketsResponse { tickets }))
    }

    async fn accept_order(
        &self,
        request: Request<TicketRequest>,
    ) -> Result<Response<Ticket>, Status> {
        self.advance(
            request.into_inner(),
            TicketStatus::Received,
            TicketStatus::Accepted,
        )
        .await
        .map(Response::new)
    }

    async fn mark_ready(
        &self,
        request: Request<TicketRequest>,
    ) -> Result<Response<Ticket>, Status> {
        self.advance(
            request.into_inner(),
            TicketStatus::Accepted,
            TicketStatus::Ready,
        )
        .await
        .map(Response::new)
    }
}
