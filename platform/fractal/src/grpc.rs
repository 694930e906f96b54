//! gRPC for services that answer commands and queries (tonic): the standard health service,
//! server reflection, and a server span per call that continues the caller's trace.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::response::IntoResponse;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::config::{Problems, Validate, join};
use crate::telemetry;

/// Where a service's gRPC server listens.
#[derive(Debug, Clone, Deserialize)]
pub struct GrpcConfig {
    /// Address and port (`0.0.0.0:50051`); port 0 picks a free one.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:50051".into()
}

impl Validate for GrpcConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            problems.add(
                join(path, "listen"),
                format!("`{}` is not an address:port: {e}", self.listen),
            );
        }
    }
}

/// The services one gRPC server offers, with what reflection describes. Health
/// (`grpc.health.v1`) and reflection (v1 and v1alpha) come with it.
///
/// ```no_run
/// # use fractal::grpc::GrpcServer;
/// # async fn example<S>(service: fractal::service::Service, api: S) -> Result<(), fractal::service::ServiceError>
/// # where S: tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>, Error = std::convert::Infallible,
/// #     Response: axum::response::IntoResponse, Future: Send + 'static> + tonic::server::NamedService + Clone + Send + Sync + 'static {
/// # const DESCRIPTORS: &[u8] = &[];
/// // `api` is a tonic server (`CheckoutServer::new(CheckoutApi { … })`); DESCRIPTORS its
/// // encoded `FileDescriptorSet`, for reflection.
/// let grpc = GrpcServer::new().service(api).descriptors(DESCRIPTORS);
/// let consumer = service.consumer();
/// service.serve(grpc).run(consumer).await
/// # }
/// ```
#[derive(Debug, Default)]
pub struct GrpcServer {
    routes: Routes,
    names: Vec<&'static str>,
    descriptors: Vec<&'static [u8]>,
}

impl GrpcServer {
    /// An empty server.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service; health reports it as serving while the server runs.
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: tonic::codegen::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Error = Infallible,
                Response: IntoResponse,
                Future: Send + 'static,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Adds an encoded `FileDescriptorSet` for server reflection.
    pub fn descriptors(mut self, encoded: &'static [u8]) -> Self {
        self.descriptors.push(encoded);
        self
    }

    /// Binds `config.listen` and serves until `shutdown` is cancelled; returns the bound
    /// address and the server's task.
    pub async fn serve(
        self,
        config: &GrpcConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<(
        SocketAddr,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    )> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in &self.names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        // Both versions of reflection: grpcurl and newer clients ask v1, older ones (Python's
        // grpcio-reflection among them) only v1alpha. Each lists every service served here.
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                );
            for encoded in &self.descriptors {
                builder = builder.register_encoded_file_descriptor_set(encoded);
            }
            builder
        };
        let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let reflection_v1 = reflection().build_v1().map_err(invalid)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(invalid)?;
        let routes = self
            .routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let listener = tokio::net::TcpListener::bind(&config.listen).await?;
        let addr = listener.local_addr()?;
        let names = self.names.clone();
        let server = tonic::transport::Server::builder()
            .trace_fn(call_span)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY a reply written in two parts waits for the client's
                // delayed acknowledgement (40 ms) whenever the connection is quiet.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    shutdown.cancelled().await;
                    for name in names {
                        health
                            .set_service_status(name, ServingStatus::NotServing)
                            .await;
                    }
                },
            );
        tracing::info!(listen = %addr, services = ?self.names, "gRPC server started.");
        Ok((addr, tokio::spawn(server)))
    }
}

/// The server span of one call, continuing the trace in the caller's `traceparent` metadata.
fn call_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let mut carrier = std::collections::HashMap::new();
    for name in [crate::wire::TRACEPARENT, crate::wire::TRACESTATE] {
        if let Some(value) = request.headers().get(name).and_then(|v| v.to_str().ok()) {
            carrier.insert(name.to_owned(), value.to_owned());
        }
    }
    telemetry::continue_from(&span, &carrier);
    span
}

/// A view that cannot be reached is a passing condition (`UNAVAILABLE`, try again); an
/// unreadable entry is the server's fault (`INTERNAL`).
impl From<crate::view::ViewError> for tonic::Status {
    fn from(error: crate::view::ViewError) -> Self {
        if error.is_corrupt() {
            tonic::Status::internal(error.to_string())
        } else {
            tonic::Status::unavailable(error.to_string())
        }
    }
}

/// An event that cannot be stored leaves the command undone; the caller may try again.
impl From<crate::publish::PublishError> for tonic::Status {
    fn from(error: crate::publish::PublishError) -> Self {
        tonic::Status::unavailable(error.to_string())
    }
}
