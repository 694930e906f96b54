//! The consumer runtime: a durable pull consumer on the hub's event stream that hands each
//! event to the handler registered for its type.
//!
//! - Events with the same partition key are handled one at a time, in stream order; events
//!   with different keys run concurrently on `concurrency` lanes.
//! - A handler succeeds, fails with a [`HandlerError::Retryable`] error (tried again on the
//!   same lane after a backoff, so later events of the key wait), fails with a
//!   [`HandlerError::Unavailable`] error (the same, but the attempt is not counted: a hub
//!   electing a new leader or out of reach is not the event's fault), or fails with a
//!   [`HandlerError::Permanent`] error.
//! - After `max_deliveries` attempts, at once for a permanent error, and for a message that is
//!   not a well-formed event, the message becomes a [fault](crate::fault) and is then
//!   acknowledged. Only a handled or faulted message is ever acknowledged.
//! - On shutdown the runtime stops fetching, lets running handlers finish, releases queued
//!   events for redelivery and returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{Problems, Validate, join};
use crate::contract::{AnyContract, Contract, ScopeKind};
use crate::event::Event;
use crate::fault::{FaultKind, FaultRecorder, Origin};
use crate::metrics::{ConsumerLabels, PLATFORM, TypeLabels};
use crate::view::rebuild::Handling;
use crate::{Hub, telemetry, wire};

mod rebuild;

/// How a service consumes its hub's events.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerConfig {
    /// Name of the durable consumer; defaults to the service's name. Two processes with the
    /// same name share the work.
    #[serde(default)]
    pub durable: Option<String>,
    /// Where a new durable consumer starts: `all` replays the whole event lake, `new` starts
    /// with events published from now on, `since:<RFC 3339 time>` with those stored from then
    /// on.
    #[serde(default)]
    pub start: Start,
    /// How many partition keys are handled at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How many messages may be delivered and not yet acknowledged, across all lanes.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: usize,
    /// How many messages one pull asks for.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How long the hub waits for an acknowledgement before delivering again, in seconds. A
    /// handler must finish within it.
    #[serde(default = "default_ack_wait_secs")]
    pub ack_wait_secs: u64,
    /// Attempts before an event whose handler keeps failing becomes a fault.
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u64,
    /// Delay before the first retry, in milliseconds; doubled on each attempt.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest delay between retries, in milliseconds; must be shorter than `ack_wait_secs`.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// How often the consumer's lag is read for the metrics, in seconds.
    #[serde(default = "default_lag_poll_secs")]
    pub lag_poll_secs: u64,
    /// What the service does with replayed events (`fractal replay`): `handle` them (the
    /// default), or `skip` them, as a service whose handlers cause outside effects (a gateway
    /// to another system, notifications) should.
    #[serde(default)]
    pub replays: Replays,
}

/// What a consumer does with replayed events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replays {
    /// Handles them like any event; `event.replay` tells them apart.
    #[default]
    Handle,
    /// Acknowledges them unhandled.
    Skip,
}

/// Where a new durable consumer starts: `all`, `new`, or `since:<RFC 3339 time>` in a
/// configuration. It matters only when the durable is created; an existing one continues
/// where it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Start {
    /// From the first event in the stream: the whole lake.
    #[default]
    All,
    /// From events published after it was created.
    New,
    /// From the events stored at or after a time (`since:2026-11-01T00:00:00Z`): a new
    /// consumer or route backfilled from part of the lake.
    Since(time::OffsetDateTime),
    /// Only the newest event of each key stored when it was created, then everything after
    /// (`latest-per-key`): contracts are snapshots, so the newest says everything a late
    /// joiner needs. For services' consumers.
    LatestPerKey,
}

impl Start {
    /// The hub's deliver policy for a new durable that starts here.
    pub fn deliver_policy(self) -> DeliverPolicy {
        match self {
            Start::All => DeliverPolicy::All,
            Start::New => DeliverPolicy::New,
            Start::Since(start_time) => DeliverPolicy::ByStartTime { start_time },
            // The runtime works out where it starts (see `Backfill`).
            Start::LatestPerKey => DeliverPolicy::All,
        }
    }
}

impl std::str::FromStr for Start {
    type Err = String;

    fn from_str(text: &str) -> Result<Start, String> {
        match text {
            "all" => Ok(Start::All),
            "new" => Ok(Start::New),
            "latest-per-key" => Ok(Start::LatestPerKey),
            _ => {
                let Some(time) = text.strip_prefix("since:") else {
                    return Err(format!(
                        "`{text}` is not a start: use `all`, `new`, `since:<RFC 3339 time>` \
                         (since:2026-11-01T00:00:00Z) or `latest-per-key`"
                    ));
                };
                time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                    .map(Start::Since)
                    .map_err(|e| {
                        format!(
                            "`{time}` is not an RFC 3339 time ({e}); for example \
                             since:2026-11-01T00:00:00Z"
                        )
                    })
            }
        }
    }
}

impl TryFrom<String> for Start {
    type Error = String;

    fn try_from(text: String) -> Result<Start, String> {
        text.parse()
    }
}

fn default_concurrency() -> usize {
    16
}
fn default_max_ack_pending() -> usize {
    1024
}
fn default_batch() -> usize {
    256
}
fn default_ack_wait_secs() -> u64 {
    30
}
fn default_max_deliveries() -> u64 {
    5
}
fn default_retry_initial_ms() -> u64 {
    200
}
fn default_retry_max_ms() -> u64 {
    10_000
}
fn default_lag_poll_secs() -> u64 {
    10
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            durable: None,
            start: Start::All,
            concurrency: default_concurrency(),
            max_ack_pending: default_max_ack_pending(),
            batch: default_batch(),
            ack_wait_secs: default_ack_wait_secs(),
            max_deliveries: default_max_deliveries(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
            lag_poll_secs: default_lag_poll_secs(),
            replays: Replays::Handle,
        }
    }
}

impl Validate for ConsumerConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if let Some(durable) = &self.durable {
            problems.check(join(path, "durable"), wire::check_token(durable));
        }
        let positive = [
            ("concurrency", self.concurrency as u64),
            ("max_ack_pending", self.max_ack_pending as u64),
            ("batch", self.batch as u64),
            ("ack_wait_secs", self.ack_wait_secs),
            ("max_deliveries", self.max_deliveries),
            ("retry_initial_ms", self.retry_initial_ms),
            ("lag_poll_secs", self.lag_poll_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.add(join(path, key), "must be at least 1");
            }
        }
        if self.retry_max_ms < self.retry_initial_ms {
            problems.add(
                join(path, "retry_max_ms"),
                "must not be shorter than retry_initial_ms",
            );
        }
        if self.retry_max_ms >= self.ack_wait_secs.saturating_mul(1000) {
            problems.add(
                join(path, "retry_max_ms"),
                "must be shorter than ack_wait_secs, or the hub redelivers during the wait",
            );
        }
    }
}

/// Why a handler did not handle an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later (a dependency is down, a conflict).
    #[error("{0}")]
    Retryable(Box<dyn std::error::Error + Send + Sync>),
    /// Trying again cannot help (the event is invalid for this handler).
    #[error("{0}")]
    Permanent(Box<dyn std::error::Error + Send + Sync>),
    /// The hub (or a dependency) cannot answer right now: tried again after a backoff for as
    /// long as it takes, without counting towards `max_deliveries`.
    #[error("{0}")]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
}

impl HandlerError {
    /// A retryable error from anything that describes it.
    pub fn retryable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError::Retryable(error.into())
    }

    /// A permanent error from anything that describes it.
    pub fn permanent(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError::Permanent(error.into())
    }
}

/// A payload that does not decode as its contract will not decode on a retry either.
impl From<crate::event::DecodeError> for HandlerError {
    fn from(error: crate::event::DecodeError) -> Self {
        HandlerError::Permanent(Box::new(error))
    }
}

/// An event that is invalid or too large will not become valid on a retry; a hub that timed
/// out or refused may accept it later.
impl From<crate::publish::PublishError> for HandlerError {
    fn from(error: crate::publish::PublishError) -> Self {
        use crate::publish::PublishErrorKind as Kind;
        match error.kind() {
            Kind::InvalidEvent | Kind::TooLarge | Kind::Forbidden | Kind::Undeclared => {
                HandlerError::Permanent(Box::new(error))
            }
            Kind::TimedOut => HandlerError::Unavailable(Box::new(error)),
            Kind::Refused if crate::hub::unavailable(&error) => {
                HandlerError::Unavailable(Box::new(error))
            }
            Kind::Refused => HandlerError::Retryable(Box::new(error)),
        }
    }
}

/// The consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// A handler was registered for a type that is not a valid event type.
    #[error("event type {0}")]
    InvalidType(String),
    /// No handler is registered.
    #[error("consumer `{0}` has no handlers")]
    NoHandlers(String),
    /// The hub refused to create the consumer or to deliver messages.
    #[error("consumer `{consumer}` on stream `{stream}`: {source}")]
    Hub {
        /// The durable consumer.
        consumer: String,
        /// The stream.
        stream: String,
        /// What the hub said.
        source: async_nats::Error,
    },
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;
type BoxHandler = Arc<dyn Fn(Event) -> BoxFuture + Send + Sync>;

struct Registered {
    handler: BoxHandler,
    handled: Counter,
    failed: Counter,
    seconds: Histogram,
}

/// A service's consumer: which event types it handles and how.
pub struct Consumer {
    hub: Hub,
    service: String,
    config: ConsumerConfig,
    handlers: HashMap<String, Registered>,
    contracts: Vec<AnyContract>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("service", &self.service)
            .field("types", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A [`Consumer`] registering handlers that share one state ([`Consumer::with_state`]).
#[derive(Debug)]
pub struct WithState<S> {
    consumer: Consumer,
    state: S,
}

impl<S: Clone + Send + Sync + 'static> WithState<S> {
    /// Handles events of `contract` with `handler`, given the state, the event's message and
    /// the event.
    pub fn on<M, K, F, Fut>(self, contract: Contract<M, K>, handler: F) -> Self
    where
        M: prost::Message + prost::Name + Default + 'static,
        K: ScopeKind,
        F: Fn(S, M, Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let state = self.state.clone();
        WithState {
            consumer: self.consumer.on(contract, move |message, event| {
                handler(state.clone(), message, event)
            }),
            state: self.state,
        }
    }

    /// Handles events of `event_type`, whatever they carry, with `handler`, given the state
    /// and the event.
    pub fn on_any<F, Fut>(self, event_type: &str, handler: F) -> Self
    where
        F: Fn(S, Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let state = self.state.clone();
        WithState {
            consumer: self
                .consumer
                .on_any(event_type, move |event| handler(state.clone(), event)),
            state: self.state,
        }
    }

    /// Registers the next handlers with another state.
    pub fn with_state<T: Clone + Send + Sync + 'static>(self, state: T) -> WithState<T> {
        self.consumer.with_state(state)
    }

    /// The consumer with every handler registered.
    pub fn consumer(self) -> Consumer {
        self.consumer
    }
}

impl<S> From<WithState<S>> for Consumer {
    fn from(with_state: WithState<S>) -> Consumer {
        with_state.consumer
    }
}

impl Consumer {
    /// A consumer for `service` (a single token, also the default durable name).
    pub fn new(hub: &Hub, service: &str, config: ConsumerConfig) -> Self {
        Consumer {
            hub: hub.clone(),
            service: service.to_owned(),
            config,
            handlers: HashMap::new(),
            contracts: Vec::new(),
        }
    }

    /// Handles events of `contract` with `handler`, given the event's message (decoded; a
    /// payload that is not the contract's message is a permanent fault) and the event.
    pub fn on<M, K, F, Fut>(self, contract: Contract<M, K>, handler: F) -> Self
    where
        M: prost::Message + prost::Name + Default + 'static,
        K: ScopeKind,
        F: Fn(M, Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let named = format!("{contract:?}");
        let mut consumer = self.on_any(contract.event_type(), move |event| {
            let (handler, named) = (handler.clone(), named.clone());
            async move {
                // Handlers are found by type: an event of the same type in the other scope is
                // not this contract's.
                if event.scope != K::SCOPE {
                    return Err(HandlerError::permanent(format!(
                        "a handler of {named} was given an {} `{}` event",
                        event.scope, event.event_type
                    )));
                }
                let message = event.payload::<M>()?;
                handler(message, event).await
            }
        });
        consumer.contracts.push(contract.any());
        consumer
    }

    /// Handles events of `event_type` (internal or external), whatever they carry, with
    /// `handler`: for tools that work with any contract.
    pub fn on_any<F, Fut>(mut self, event_type: &str, handler: F) -> Self
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.contracts.retain(|c| c.event_type() != event_type);
        let labels = TypeLabels {
            service: self.service.clone(),
            event_type: event_type.to_owned(),
        };
        let registered = Registered {
            handler: Arc::new(move |event| Box::pin(handler(event))),
            handled: PLATFORM.handled.get_or_create(&labels).clone(),
            failed: PLATFORM.failed.get_or_create(&labels).clone(),
            seconds: PLATFORM.handler_seconds.get_or_create(&labels).clone(),
        };
        self.handlers.insert(event_type.to_owned(), registered);
        self
    }

    /// Whether any handler is registered.
    pub fn has_handlers(&self) -> bool {
        !self.handlers.is_empty()
    }

    /// The contracts handled through [`Consumer::on`].
    pub(crate) fn contracts(&self) -> &[AnyContract] {
        &self.contracts
    }

    /// The event types handled.
    pub(crate) fn event_types(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }

    /// Registers the next handlers with `state`, which each is given (cloned) with its event.
    ///
    /// ```no_run
    /// # async fn example(service: fractal::service::Service) -> Result<(), fractal::service::ServiceError> {
    /// use fractal::proto::Header as Order;
    /// use fractal::view::{Record, View};
    /// use fractal::{Contract, Event, HandlerError};
    ///
    /// const ORDER_PLACED: Contract<Order> = Contract::external("order.placed");
    /// const ORDER_DELIVERED: Contract<Order> = Contract::external("order.delivered");
    ///
    /// async fn apply(orders: View<Order>, order: Order, event: Event) -> Result<(), HandlerError> {
    ///     orders
    ///         .update(&event.key, |_| Some(Record::new(order.clone(), event.time)))
    ///         .await?;
    ///     Ok(())
    /// }
    ///
    /// let orders = View::<Order>::open(&service.hub, "orders").await?;
    /// let consumer = service
    ///     .consumer()
    ///     .with_state(orders)
    ///     .on(ORDER_PLACED, apply)
    ///     .on(ORDER_DELIVERED, apply);
    /// service.run(consumer).await
    /// # }
    /// ```
    pub fn with_state<S: Clone + Send + Sync + 'static>(self, state: S) -> WithState<S> {
        WithState {
            consumer: self,
            state,
        }
    }

    /// Handles events of `contract` by publishing the event `translate` makes of each: an
    /// edge's ingress or egress step, or a plain reaction. The published event's id is derived
    /// from the original's and its own type ([`crate::event::EventData::derived_id`]), so a
    /// redelivery publishes nothing new.
    pub fn translate<M, K>(
        self,
        contract: Contract<M, K>,
        publisher: &crate::Publisher,
        translate: fn(M, &Event) -> Result<crate::NewEvent, HandlerError>,
    ) -> Self
    where
        M: prost::Message + prost::Name + Default + 'static,
        K: ScopeKind,
    {
        let publisher = publisher.clone();
        self.on(contract, move |message, event| {
            let publisher = publisher.clone();
            async move {
                let translated = translate(message, &event)?;
                let id = event.derived_id(&translated.event_type);
                publisher.publish(translated.with_id(id)).await?;
                Ok(())
            }
        })
    }

    /// The durable consumer's name.
    pub fn durable(&self) -> &str {
        self.config.durable.as_deref().unwrap_or(&self.service)
    }

    /// Consumes until `shutdown` is cancelled, then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumeError> {
        if self.handlers.is_empty() {
            return Err(ConsumeError::NoHandlers(self.service));
        }
        for event_type in self.handlers.keys() {
            wire::check_name(event_type).map_err(ConsumeError::InvalidType)?;
        }
        let durable = self.durable().to_owned();
        let stream_name = self.hub.events_stream().to_owned();
        let hub_error = |source: async_nats::Error| ConsumeError::Hub {
            consumer: durable.clone(),
            stream: stream_name.clone(),
            source,
        };
        // A credential that may not open this durable gets no reply at all; its refusal,
        // reported on the connection, fails the start at once.
        let opening = format!("opening durable consumer `{durable}`");
        let api = |subject: &str| subject.starts_with("$JS.API.");
        let stream = self
            .hub
            .unless_refused(&opening, api, self.hub.jetstream().get_stream(&stream_name))
            .await
            .map_err(|e| hub_error(e.into()))?
            .map_err(|e| hub_error(e.into()))?;
        let mut filter_subjects: Vec<String> = self
            .handlers
            .keys()
            .map(|t| wire::event_filter(t))
            .collect();
        filter_subjects.sort();
        let all_filter_subjects = filter_subjects.clone();
        let plan = plan(&stream, &durable, &filter_subjects, self.config.start);
        let (deliver_policy, metadata, backfill) = self
            .hub
            .unless_refused(&opening, api, plan)
            .await
            .map_err(|e| hub_error(e.into()))?
            .map_err(hub_error)?;
        let (filter_subject, filter_subjects) = if filter_subjects.len() == 1 {
            (filter_subjects.remove(0), Vec::new())
        } else {
            (String::new(), filter_subjects)
        };
        let create = stream.create_consumer(pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!("Fractal service `{}`", self.service)),
            filter_subject,
            filter_subjects,
            deliver_policy,
            metadata,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(self.config.ack_wait_secs),
            // The runtime counts deliveries and turns the last one into a fault; the hub
            // must never give up on a message by itself.
            max_deliver: -1,
            max_ack_pending: self.config.max_ack_pending as i64,
            ..Default::default()
        });
        let consumer: consumer::PullConsumer = self
            .hub
            .unless_refused(&opening, api, create)
            .await
            .map_err(|e| hub_error(e.into()))?
            .map_err(|e| hub_error(e.into()))?;
        tracing::info!(
            service = %self.service,
            consumer = %durable,
            stream = %stream_name,
            types = ?self.handlers.keys().collect::<Vec<_>>(),
            "Consumer started."
        );

        let shared = Arc::new(Shared {
            faults: FaultRecorder::new(&self.hub, &self.service, &durable),
            hub: self.hub.clone(),
            filter_subjects: all_filter_subjects,
            pause: tokio::sync::RwLock::new(()),
            started: AtomicU64::new(0),
            service: self.service,
            durable: durable.clone(),
            stream: stream_name.clone(),
            handlers: self.handlers,
            config: self.config.clone(),
            shutdown: shutdown.clone(),
            backfill,
        });
        let control = tokio::spawn(rebuild::serve(shared.clone(), shutdown.clone()));
        let lag = tokio::spawn(poll_lag(
            consumer.clone(),
            ConsumerLabels {
                stream: stream_name,
                consumer: durable,
            },
            Duration::from_secs(self.config.lag_poll_secs),
            shutdown.clone(),
        ));
        let mut lanes = Lanes::new(self.config.concurrency);

        // One task pulls messages and drives every running handler: no hand-off between tasks
        // on the hot path. A handler that needs a CPU of its own can spawn.
        let mut messages = None;
        loop {
            let pulling = match &mut messages {
                Some(stream) => stream,
                None => match crate::hub::pull(&consumer, self.config.batch, &shutdown).await {
                    Some(stream) => messages.insert(stream),
                    None => break,
                },
            };
            let room = lanes.queued < self.config.max_ack_pending;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(lane) = lanes.running.next() => {
                    if let Some(message) = lanes.finished(lane) {
                        lanes.start(lane, handle(&shared, message));
                    }
                }
                next = pulling.next(), if room => match next {
                    Some(Ok(message)) => {
                        let lane = lanes.lane_of(&message);
                        if let Some(message) = lanes.enqueue(lane, message) {
                            lanes.start(lane, handle(&shared, message));
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Pull from the hub failed.");
                        if crate::hub::pull_lost(&e) {
                            messages = None;
                        }
                    }
                    None => messages = None,
                },
            }
        }
        // Stop pulling: messages the hub sent that were not taken are redelivered after the
        // ack wait. Release the queued ones now, and let running handlers finish.
        drop(messages);
        for message in lanes.queues.iter_mut().flat_map(|q| q.drain(..)) {
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::debug!(error = %e, "Could not release a message.");
            }
        }
        while lanes.running.next().await.is_some() {}
        lag.abort();
        control.abort();
        // Send the last acknowledgements; a hub that is down gets them redelivered instead.
        match tokio::time::timeout(Duration::from_secs(5), shared.hub.client().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Could not flush acknowledgements."),
            Err(_) => tracing::warn!("Hub unreachable; last acknowledgements not sent."),
        }
        tracing::info!(service = %shared.service, "Consumer stopped.");
        Ok(())
    }
}

struct Shared {
    hub: Hub,
    service: String,
    durable: String,
    stream: String,
    /// The subjects of the event types it handles.
    filter_subjects: Vec<String>,
    /// Held by each running handler; a rebuild takes it whole to switch its views.
    pause: tokio::sync::RwLock<()>,
    /// The highest stream sequence a handler has started on.
    started: AtomicU64,
    handlers: HashMap<String, Registered>,
    config: ConsumerConfig,
    faults: FaultRecorder,
    shutdown: CancellationToken,
    backfill: Option<Backfill>,
}

/// The consumer metadata that records up to which stream sequence a `latest-per-key` durable
/// handles only the newest event of each key.
const LATEST_UNTIL: &str = "fractal.latest_per_key_until";

/// What a `latest-per-key` consumer handles up to `until`: the newest event of each key (and
/// any event without a key, which becomes a fault as usual); it acknowledges the older ones
/// without handling them. Its memory is one sequence per key, whatever the lake holds.
#[derive(Debug)]
struct Backfill {
    until: u64,
    newest: HashSet<u64>,
}

impl Backfill {
    fn skips(&self, sequence: u64) -> bool {
        sequence <= self.until && !self.newest.contains(&sequence)
    }
}

/// Where durable `durable` starts and what it skips: an existing durable goes on as it was
/// created (finishing a `latest-per-key` backfill a restart cut short); a new one starts at
/// `start`.
async fn plan(
    stream: &async_nats::jetstream::stream::Stream,
    durable: &str,
    subjects: &[String],
    start: Start,
) -> Result<(DeliverPolicy, HashMap<String, String>, Option<Backfill>), async_nats::Error> {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    match stream.consumer_info(durable).await {
        Ok(info) => {
            let until = info
                .config
                .metadata
                .get(LATEST_UNTIL)
                .and_then(|v| v.parse::<u64>().ok());
            let backfill = match until {
                Some(until) if info.ack_floor.stream_sequence < until => {
                    Some(newest_per_key(stream, durable, subjects, until).await?)
                }
                _ => None,
            };
            Ok((
                info.config.deliver_policy,
                info.config.metadata.clone(),
                backfill,
            ))
        }
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => match start {
            Start::LatestPerKey => {
                let until = stream.get_info().await?.state.last_sequence;
                let backfill = newest_per_key(stream, durable, subjects, until).await?;
                let first = backfill.newest.iter().min().copied().unwrap_or(until + 1);
                let metadata = HashMap::from([(LATEST_UNTIL.to_owned(), until.to_string())]);
                Ok((
                    DeliverPolicy::ByStartSequence {
                        start_sequence: first,
                    },
                    metadata,
                    Some(backfill),
                ))
            }
            start => Ok((start.deliver_policy(), HashMap::new(), None)),
        },
        Err(e) => Err(e.into()),
    }
}

/// The newest event of each key among `subjects` up to sequence `until`, read once through
/// the lake's headers (no payloads) by a consumer of its own, `<durable>_backfill`.
async fn newest_per_key(
    stream: &async_nats::jetstream::stream::Stream,
    durable: &str,
    subjects: &[String],
    until: u64,
) -> Result<Backfill, async_nats::Error> {
    let name = format!("{durable}_backfill");
    // One left by a scan cut short.
    let _ = stream.delete_consumer(&name).await;
    let scan: consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            name: Some(name.clone()),
            filter_subjects: subjects.to_vec(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            headers_only: true,
            memory_storage: true,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;
    let mut newest: HashMap<String, u64> = HashMap::new();
    let mut keyless = HashSet::new();
    if until > 0 && scan.cached_info().num_pending > 0 {
        let mut messages = scan
            .stream()
            .max_messages_per_batch(1000)
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(10))
            .messages()
            .await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            let info = message.info()?;
            let sequence = info.stream_sequence;
            if sequence > until {
                break;
            }
            match message.headers.as_ref().and_then(|h| h.get(wire::KEY)) {
                Some(key) => {
                    newest.insert(key.as_str().to_owned(), sequence);
                }
                None => {
                    keyless.insert(sequence);
                }
            }
            if sequence == until || info.pending == 0 {
                break;
            }
        }
    }
    let _ = stream.delete_consumer(&name).await;
    let mut all = keyless;
    all.extend(newest.into_values());
    Ok(Backfill { until, newest: all })
}

type Message = async_nats::jetstream::Message;

/// Partition keys hash onto lanes; a lane runs one handler at a time and queues the rest of
/// its messages in arrival order, which is what keeps each key in order.
struct Lanes<F> {
    hasher: RandomState,
    busy: Vec<bool>,
    queues: Vec<VecDeque<Message>>,
    /// Messages in all lanes, running ones included.
    queued: usize,
    running: FuturesUnordered<LaneRun<F>>,
}

impl<F: Future<Output = ()>> Lanes<F> {
    fn new(count: usize) -> Self {
        let count = count.max(1);
        Lanes {
            hasher: RandomState::new(),
            busy: vec![false; count],
            queues: (0..count).map(|_| VecDeque::new()).collect(),
            queued: 0,
            running: FuturesUnordered::new(),
        }
    }

    fn lane_of(&self, message: &Message) -> usize {
        let hash = match message.headers.as_ref().and_then(|h| h.get(wire::KEY)) {
            Some(key) => self.hasher.hash_one(key.as_str()),
            None => self.hasher.hash_one(message.subject.as_str()),
        };
        (hash % self.busy.len() as u64) as usize
    }

    /// Queues `message`; hands it back when its lane is idle and it should start now.
    fn enqueue(&mut self, lane: usize, message: Message) -> Option<Message> {
        self.queued += 1;
        if self.busy[lane] {
            self.queues[lane].push_back(message);
            None
        } else {
            Some(message)
        }
    }

    fn start(&mut self, lane: usize, run: F) {
        self.busy[lane] = true;
        self.running.push(LaneRun {
            lane,
            run: Box::pin(run),
        });
    }

    /// Marks the lane's running message done; returns the next one to start, if any.
    fn finished(&mut self, lane: usize) -> Option<Message> {
        self.queued -= 1;
        let next = self.queues[lane].pop_front();
        self.busy[lane] = next.is_some();
        next
    }
}

/// One running handler, tagged with its lane.
struct LaneRun<F> {
    lane: usize,
    run: Pin<Box<F>>,
}

impl<F: Future<Output = ()>> Future for LaneRun<F> {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
        let lane = self.lane;
        self.run.as_mut().poll(cx).map(|()| lane)
    }
}

/// What became of a message.
enum Outcome {
    /// Handled, or passed over as not this consumer's: acknowledged.
    Done,
    /// Not to be handled: recorded as a fault, then acknowledged.
    Fault {
        kind: FaultKind,
        reason: String,
        deliveries: u64,
    },
    /// Given back at shutdown, for redelivery.
    Released,
}

async fn handle(shared: &Shared, message: Message) {
    let (sequence, delivered) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered.max(1) as u64),
        Err(e) => {
            tracing::error!(error = %e, subject = %message.subject, "Message without JetStream metadata.");
            return;
        }
    };
    match outcome(shared, &message, sequence, delivered).await {
        Outcome::Done => {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, subject = %message.subject, "Could not acknowledge; the event will be delivered again.");
            }
        }
        Outcome::Fault {
            kind,
            reason,
            deliveries,
        } => {
            let origin = Origin {
                stream: &shared.stream,
                sequence,
                deliveries,
            };
            let event_type = message
                .headers
                .as_ref()
                .and_then(|h| h.get(wire::TYPE))
                .map(|v| v.as_str());
            fault(shared, &message, origin, kind, &reason, event_type).await;
        }
        Outcome::Released => {}
    }
}

/// Runs the handler for `message` (at `sequence`, delivered `delivered` times) with retries,
/// and says what is to become of it.
async fn outcome(shared: &Shared, message: &Message, sequence: u64, delivered: u64) -> Outcome {
    if shared.backfill.as_ref().is_some_and(|b| b.skips(sequence)) {
        // An older event of a key whose newest this `latest-per-key` consumer handles.
        return Outcome::Done;
    }
    let event = match Event::decode(
        &message.subject,
        message.headers.as_ref(),
        message.payload.clone(),
    ) {
        Ok(event) => event,
        Err(e) => {
            return Outcome::Fault {
                kind: FaultKind::Malformed,
                reason: format!("not a well-formed event: {e}"),
                deliveries: delivered,
            };
        }
    };
    let skipped_replay = event.replay.is_some() && shared.config.replays == Replays::Skip;
    if skipped_replay
        || event
            .resubmitted_for
            .as_ref()
            .is_some_and(|intended| *intended != shared.durable)
    {
        // A replay this consumer skips, or a fault or replay meant for another consumer alone.
        return Outcome::Done;
    }
    let Some(registered) = shared.handlers.get(&event.event_type) else {
        return Outcome::Fault {
            kind: FaultKind::Unhandled,
            reason: format!("no handler for event type `{}`", event.event_type),
            deliveries: delivered,
        };
    };
    let max = shared.config.max_deliveries;
    let mut attempt = delivered;
    if attempt > max {
        // Delivered again and again without an acknowledgement: the process handling it died
        // each time. Stop before it takes this one down too.
        return Outcome::Fault {
            kind: FaultKind::RetriesExhausted,
            reason: format!("delivered {attempt} times without being acknowledged"),
            deliveries: attempt,
        };
    }
    // Waits for an unavailable hub, since the last counted attempt.
    let mut waits = 0;
    loop {
        let span = tracing::info_span!(
            "process",
            otel.name = format!("process {}", message.subject),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %message.subject,
            messaging.consumer.group.name = %shared.durable,
            messaging.message.id = %event.id,
            fractal.event.type = %event.event_type,
            fractal.partition_key = %event.key,
            fractal.delivery = attempt,
        );
        telemetry::continue_trace(&span, message.headers.as_ref());
        let running = shared.pause.read().await;
        shared.started.fetch_max(sequence, Ordering::AcqRel);
        let started = Instant::now();
        let handling = Handling {
            sequence,
            rebuild: None,
        };
        let result = handling
            .scope((registered.handler)(event.clone()))
            .instrument(span)
            .await;
        drop(running);
        registered.seconds.observe(started.elapsed().as_secs_f64());
        let (error, counted) = match result {
            Ok(()) => {
                registered.handled.inc();
                return Outcome::Done;
            }
            Err(HandlerError::Permanent(e)) => {
                return Outcome::Fault {
                    kind: FaultKind::Permanent,
                    reason: e.to_string(),
                    deliveries: attempt,
                };
            }
            Err(HandlerError::Retryable(e)) => (e, true),
            // Not the event's fault: the attempt is not counted.
            Err(HandlerError::Unavailable(e)) => (e, false),
        };
        registered.failed.inc();
        let delay = if counted {
            waits = 0;
            if attempt >= max {
                return Outcome::Fault {
                    kind: FaultKind::RetriesExhausted,
                    reason: format!("failed {attempt} times; last error: {error}"),
                    deliveries: attempt,
                };
            }
            backoff(&shared.config, attempt)
        } else {
            waits += 1;
            backoff(&shared.config, waits)
        };
        tracing::warn!(
            service = %shared.service,
            id = %event.id,
            event_type = %event.event_type,
            attempt,
            hub_unavailable = !counted,
            retry_in_ms = delay.as_millis() as u64,
            error = %error,
            "Handler failed; retrying."
        );
        if !wait(shared, message, delay).await {
            return Outcome::Released;
        }
        if counted {
            attempt += 1;
        }
    }
}

/// Waits `delay` before `message` is tried again, keeping the hub from redelivering it
/// meanwhile. False if shutdown came first (the message is released for redelivery).
async fn wait(shared: &Shared, message: &async_nats::jetstream::Message, delay: Duration) -> bool {
    let _ = message.ack_with(AckKind::Progress).await;
    tokio::select! {
        _ = shared.shutdown.cancelled() => {
            let _ = message.ack_with(AckKind::Nak(None)).await;
            false
        }
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Records a fault, then acknowledges the original. If the fault cannot be stored the original
/// is released for redelivery instead: nothing is acknowledged that was not kept.
async fn fault(
    shared: &Shared,
    message: &async_nats::jetstream::Message,
    origin: Origin<'_>,
    kind: FaultKind,
    reason: &str,
    event_type: Option<&str>,
) {
    match shared
        .faults
        .record(message, origin, kind, reason, event_type)
        .await
    {
        Ok(()) => {
            if let Err(e) = message.ack().await {
                tracing::warn!(error = %e, "Could not acknowledge a faulted message.");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, subject = %message.subject, "Could not record a fault; the message will be delivered again.");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

fn backoff(config: &ConsumerConfig, attempt: u64) -> Duration {
    let shift = attempt.saturating_sub(1).min(20) as u32;
    let ms = config
        .retry_initial_ms
        .saturating_mul(1u64 << shift)
        .min(config.retry_max_ms);
    Duration::from_millis(ms)
}

async fn poll_lag(
    mut consumer: consumer::PullConsumer,
    labels: ConsumerLabels,
    every: Duration,
    shutdown: CancellationToken,
) {
    let gauge = PLATFORM.pending.get_or_create(&labels).clone();
    loop {
        match consumer.info().await {
            Ok(info) => {
                gauge.set(info.num_pending as i64);
            }
            Err(e) => tracing::debug!(error = %e, "Could not read consumer lag."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let config = ConsumerConfig {
            retry_initial_ms: 100,
            retry_max_ms: 1000,
            ..Default::default()
        };
        let delays: Vec<u64> = (1..=6)
            .map(|a| backoff(&config, a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn config_problems_are_all_reported() {
        let config = ConsumerConfig {
            concurrency: 0,
            retry_max_ms: 60_000,
            durable: Some("a.b".into()),
            ..Default::default()
        };
        let mut problems = Problems::default();
        config.validate("consumer", &mut problems);
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "consumer.durable",
                "consumer.concurrency",
                "consumer.retry_max_ms"
            ]
        );
    }
}
