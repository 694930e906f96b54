//! `fractal ui`: a local web page of the running system. The page (one file, built into the
//! program; no network access needed) draws the topology and polls `/api/status`, which
//! serves the same status `fractal status` prints, refreshed every interval in the background.
//! `/api/hubs/{hub}/events` and `/faults` give a hub's latest events and faults, decoded.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fractal::proto::Fault;
use fractal::{Event, Hub, HubConfig};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::status::{Observer, Status};
use crate::topology::Topology;

const PAGE: &str = include_str!("ui/index.html");

/// The topology as the page draws it.
#[derive(Debug, Serialize)]
struct Graph {
    system: String,
    hubs: Vec<String>,
    services: Vec<GraphService>,
    bridges: Vec<GraphBridge>,
}

#[derive(Debug, Serialize)]
struct GraphService {
    name: String,
    hub: String,
    program: String,
    publishes: Vec<String>,
    consumes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct GraphBridge {
    name: String,
    source: String,
    target: String,
    routes: Vec<GraphRoute>,
}

#[derive(Debug, Serialize)]
struct GraphRoute {
    name: String,
    types: Vec<String>,
    contract: String,
}

impl Graph {
    fn of(topology: &Topology) -> Graph {
        Graph {
            system: topology.name.clone(),
            hubs: topology.hubs.keys().cloned().collect(),
            services: topology
                .services
                .iter()
                .map(|s| GraphService {
                    name: s.name(),
                    hub: s.hub().to_owned(),
                    program: s.spec.program.clone(),
                    publishes: s.spec.publishes.clone(),
                    consumes: s.spec.consumes.clone(),
                })
                .collect(),
            bridges: topology
                .bridges
                .iter()
                .map(|b| GraphBridge {
                    name: b.config.name.clone(),
                    source: b.config.source.name.clone(),
                    target: b.config.target.name.clone(),
                    routes: b
                        .config
                        .routes
                        .iter()
                        .map(|r| GraphRoute {
                            name: r.name.clone(),
                            types: r.types.clone(),
                            contract: r.contract.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

struct Shared {
    graph: Graph,
    status: RwLock<Result<Status, String>>,
    /// Each hub's client URL and TLS settings, as last found.
    urls: RwLock<HashMap<String, (String, Option<fractal::hub::TlsConfig>)>>,
    hubs: Mutex<HashMap<String, Hub>>,
    /// The system's contracts, to show payloads.
    contracts: fractal_bridge::Contracts,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Serves the page on `listen` until `shutdown`, reading the system with `observer`.
pub(crate) async fn serve(
    topology: &Topology,
    observer: Observer,
    listen: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        graph: Graph::of(topology),
        status: RwLock::new(Err("reading the system for the first time…".into())),
        urls: RwLock::new(HashMap::new()),
        hubs: Mutex::new(HashMap::new()),
        contracts: topology.contracts.clone(),
    });
    tokio::spawn(refresh(shared.clone(), observer, shutdown.clone()));
    let app = Router::new()
        .route("/", get(page))
        .route("/api/topology", get(graph))
        .route("/api/status", get(status))
        .route("/api/hubs/{hub}/events", get(events))
        .route("/api/hubs/{hub}/faults", get(faults))
        .with_state(shared);
    println!("The system's page is at http://{addr}/ (Ctrl-C stops it).");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the page's server stopped")
}

/// Keeps the status current.
async fn refresh(shared: Arc<Shared>, mut observer: Observer, shutdown: CancellationToken) {
    loop {
        if let Ok(targets) = observer.targets() {
            *shared.urls.write().await = targets
                .hubs
                .into_iter()
                .filter_map(|h| Some((h.name, (h.url?, h.tls))))
                .collect();
        }
        let status = tokio::select! {
            status = observer.next() => status.map_err(|e| format!("{e:#}")),
            _ = shutdown.cancelled() => return,
        };
        *shared.status.write().await = status;
    }
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn graph(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(&shared.graph).into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    match &*shared.status.read().await {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.clone()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct Latest {
    #[serde(default = "default_limit")]
    limit: u64,
}

fn default_limit() -> u64 {
    20
}

/// A connection to `name`, made on first use.
async fn hub(shared: &Shared, name: &str) -> Result<Hub, (StatusCode, String)> {
    if let Some(hub) = shared.hubs.lock().await.get(name) {
        return Ok(hub.clone());
    }
    let (url, tls) = shared.urls.read().await.get(name).cloned().ok_or((
        StatusCode::NOT_FOUND,
        format!("no client address is known for hub `{name}`"),
    ))?;
    let mut config = HubConfig::local(name, &url);
    config.tls = tls;
    config.connect_timeout_secs = 2;
    let hub = Hub::connect(&config).await.map_err(|e| {
        (
            StatusCode::BAD_GATEWAY,
            format!("hub `{name}` does not answer at {url}: {e}"),
        )
    })?;
    shared
        .hubs
        .lock()
        .await
        .insert(name.to_owned(), hub.clone());
    Ok(hub)
}

async fn events(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(latest): Query<Latest>,
) -> Response {
    lines(
        &shared,
        &name,
        latest.limit.min(500),
        |hub| hub.events_stream().to_owned(),
        |message| match Event::decode(
            &message.subject,
            message.headers.as_ref(),
            message.payload.clone(),
        ) {
            Ok(event) => crate::events::line(&shared.contracts, &event),
            Err(e) => format!("{}  <malformed: {e}>", message.subject),
        },
    )
    .await
}

async fn faults(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(latest): Query<Latest>,
) -> Response {
    lines(
        &shared,
        &name,
        latest.limit.min(500),
        |hub| hub.faults_stream().to_owned(),
        |message| match Fault::decode(message.payload.clone()) {
            Ok(fault) => crate::faults::list(std::slice::from_ref(&fault))
                .trim_end()
                .to_owned(),
            Err(e) => format!("{}  <not a fault: {e}>", message.subject),
        },
    )
    .await
}

/// The latest `limit` messages of one of `name`'s streams, a line each, newest first.
async fn lines(
    shared: &Shared,
    name: &str,
    limit: u64,
    stream: impl Fn(&Hub) -> String,
    line: impl Fn(&async_nats::jetstream::Message) -> String,
) -> Response {
    let hub = match hub(shared, name).await {
        Ok(hub) => hub,
        Err(answer) => return answer.into_response(),
    };
    match crate::events::latest(&hub, &stream(&hub), limit).await {
        Ok(messages) => {
            let lines: Vec<String> = messages.iter().rev().map(line).collect();
            axum::Json(lines).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e:#}")).into_response(),
    }
}
