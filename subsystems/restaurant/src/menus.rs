//! `menus`: a restaurant keeps its menu. Each save is a `menu.saved` fact carrying the whole
//! menu; the `menus` view keeps the newest per restaurant.

use std::collections::HashSet;
use std::time::SystemTime;

use fractal::grpc::GrpcServer;
use fractal::service::{Service, ServiceError};
use fractal::view::{Record, View};
use fractal::{Event, HandlerError, Publisher};
use tonic::{Request, Response, Status};

use crate::events::MENU_SAVED;
use crate::v1::menus_server::{Menus, MenusServer};
use crate::v1::{GetMenuRequest, MenuSaved, SaveMenuRequest, SaveMenuResponse};

/// The most a dish may cost (a million, in cents).
const MAX_PRICE_CENTS: i64 = 100_000_000;

pub(crate) async fn run(service: Service) -> Result<(), ServiceError> {
    let view = View::<MenuSaved>::open(&service.hub, "menus").await?;
    let consumer = service
        .consumer()
        .with_state(view.clone())
        .on(MENU_SAVED, apply);
    let api = MenusApi {
        view,
        publisher: service.publisher(),
    };
    let grpc = GrpcServer::new()
        .service(MenusServer::new(api))
        .descriptors(crate::DESCRIPTORS);
    service.serve(grpc).run(consumer).await
}

/// Keeps the newest menu of each restaurant, by the time it was saved.
async fn apply(view: View<MenuSaved>, menu: MenuSaved, _event: Event) -> Result<(), HandlerError> {
    store(&view, menu).await?;
    Ok(())
}

async fn store(view: &View<MenuSaved>, menu: MenuSaved) -> Result<(), fractal::view::ViewError> {
    let time = food_contracts::time(menu.saved_at.as_ref());
    let key = menu.restaurant_id.clone();
    view.update(&key, |current| match current {
        Some(current) if current.time >= time => None,
        _ => Some(Record::new(menu.clone(), time)),
    })
    .await?;
    Ok(())
}

struct MenusApi {
    view: View<MenuSaved>,
    publisher: Publisher,
}

#[tonic::async_trait]
impl Menus for MenusApi {
    async fn save_menu(
        &self,
        request: Request<SaveMenuRequest>,
    ) -> Result<Response<SaveMenuResponse>, Status> {
        let request = request.into_inner();
        check_menu(&request)?;
        let menu = MenuSaved {
            restaurant_id: request.restaurant_id,
            restaurant_name: request.restaurant_name,
            dishes: request.dishes,
            saved_at: Some(SystemTime::now().into()),
        };
        let event = MENU_SAVED.event(&menu.restaurant_id, &menu);
        let published = self.publisher.publish(event).await?;
        store(&self.view, menu).await?;
        Ok(Response::new(SaveMenuResponse {
            event_id: published.id.to_string(),
        }))
    }

    async fn get_menu(
        &self,
        request: Request<GetMenuRequest>,
    ) -> Result<Response<MenuSaved>, Status> {
        let id = request.into_inner().restaurant_id;
        food_contracts::check_id("restaurant_id", &id).map_err(Status::invalid_argument)?;
        match self.view.get(&id).await? {
            Some(record) => Ok(Response::new(record.value)),
            None => Err(Status::not_found(format!("restaurant `{id}` has no menu"))),
        }
    }
}

fn check_menu(request: &SaveMenuRequest) -> Result<(), Status> {
    food_contracts::check_id("restaurant_id", &request.restaurant_id)
        .map_err(Status::invalid_argument)?;
    let mut problems = Vec::new();
    if request.restaurant_name.trim().is_empty() {
        problems.push("restaurant_name: must not be empty".to_owned());
    }
    if request.dishes.is_empty() {
        problems.push("dishes: a menu needs at least one dish".to_owned());
    }
    let mut ids = HashSet::new();
    for (i, dish) in request.dishes.iter().enumerate() {
        if dish.dish_id.trim().is_empty() {
            problems.push(format!("dishes[{i}].dish_id: must not be empty"));
        } else if !ids.insert(dish.dish_id.as_str()) {
            problems.push(format!(
                "dishes[{i}].dish_id: `{}` appears twice",
                dish.dish_id
            ));
        }
        if dish.name.trim().is_empty() {
            problems.push(format!("dishes[{i}].name: must not be empty"));
        }
        if dish.price_cents <= 0 || dish.price_cents > MAX_PRICE_CENTS {
            problems.push(format!(
                "dishes[{i}].price_cents: must be more than 0 and at most {MAX_PRICE_CENTS}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid_argument(problems.join("; ")))
    }
}
