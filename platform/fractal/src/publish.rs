//! Publishing events to a hub, with the event id as `Nats-Msg-Id` so that a retried publish is
//! stored once, and the trace context in the headers so that consumers continue the trace.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind as NatsKind};
use async_nats::jetstream::publish::PublishAck;
use prometheus_client::metrics::counter::Counter;
use tracing::Instrument as _;
use ulid::Ulid;

use crate::contract::AnyContract;
use crate::event::NewEvent;
use crate::hub::{Refusals, RideOut};
use crate::metrics::{PLATFORM, TypeLabels};
use crate::{Hub, Scope, telemetry, wire};

/// How many publishes `publish_all` keeps awaiting their acknowledgement at once.
const PIPELINE_WINDOW: usize = 1024;

/// Publishes events to one hub on behalf of one service.
#[derive(Debug, Clone)]
pub struct Publisher {
    hub: Hub,
    source: String,
    /// The `published` counter of each event type, looked up once per type.
    counters: Arc<RwLock<HashMap<String, Counter>>>,
    /// The external contracts it may publish (type, message), if its service declares them.
    declared: Option<Arc<[(&'static str, String)]>>,
}

/// An event the hub has stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub id: Ulid,
    /// Its sequence number in the hub's event stream.
    pub sequence: u64,
    /// Whether the hub already had an event with this id (nothing new was stored).
    pub duplicate: bool,
}

/// The kind of a [`PublishError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// The event type or subject is not valid.
    InvalidEvent,
    /// The hub did not acknowledge in time (it may still have stored the event: publish again
    /// with the same id).
    TimedOut,
    /// The hub refused the event (no stream for the subject, limits reached...).
    Refused,
    /// The event is larger than the hub accepts.
    TooLarge,
    /// The hub's permissions do not let this client publish on the event's subject. Not
    /// retried: the topology grants what each service publishes.
    Forbidden,
    /// An external event its service does not declare it publishes (or with another message):
    /// a mistake in the code, not retried.
    Undeclared,
}

/// The hub did not store an event.
#[derive(Debug, thiserror::Error)]
#[error("publishing event {id} on `{subject}` failed: {message}")]
pub struct PublishError {
    kind: PublishErrorKind,
    id: Ulid,
    subject: String,
    message: String,
}

impl PublishError {
    fn new(kind: PublishErrorKind, id: Ulid, subject: &str, message: impl ToString) -> Self {
        PublishError {
            kind,
            id,
            subject: subject.to_owned(),
            message: message.to_string(),
        }
    }

    fn from_nats(
        id: Ulid,
        subject: &str,
        error: async_nats::jetstream::context::PublishError,
    ) -> Self {
        let kind = match error.kind() {
            NatsKind::TimedOut => PublishErrorKind::TimedOut,
            NatsKind::MaxPayloadExceeded => PublishErrorKind::TooLarge,
            _ => PublishErrorKind::Refused,
        };
        PublishError::new(kind, id, subject, error)
    }

    /// What went wrong.
    pub fn kind(&self) -> PublishErrorKind {
        self.kind
    }

    /// The id of the event that was not published.
    pub fn id(&self) -> Ulid {
        self.id
    }
}

struct Pending {
    ack: PublishAckFuture,
    id: Ulid,
    subject: String,
    published: Counter,
    /// A publish the hub refuses is never acknowledged: its refusal ends the wait.
    refusals: Refusals,
}

impl Pending {
    async fn wait(mut self, hub: &Hub) -> Result<Published, PublishError> {
        let subject = self.subject.as_str();
        let ack: PublishAck = tokio::select! {
            ack = self.ack => ack.map_err(|e| PublishError::from_nats(self.id, subject, e))?,
            _ = self.refusals.of(|refused| refused == subject) => {
                return Err(PublishError::new(
                    PublishErrorKind::Forbidden,
                    self.id,
                    subject,
                    format!(
                        "the hub does not let {} publish on it (permissions violation)",
                        hub.credential()
                    ),
                ));
            }
        };
        if !ack.duplicate {
            self.published.inc();
        }
        Ok(Published {
            id: self.id,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

impl Publisher {
    /// A publisher for `source` (`<subsystem>/<service>`), recorded in every envelope.
    pub fn new(hub: &Hub, source: &str) -> Self {
        Publisher {
            hub: hub.clone(),
            source: source.to_owned(),
            counters: Arc::default(),
            declared: None,
        }
    }

    /// This publisher, refusing external events other than `contracts` (what its service
    /// declares it publishes, which `<program> --describe` prints and `fractal check` compares
    /// with the topology).
    pub fn declaring(mut self, contracts: &[AnyContract]) -> Self {
        self.declared = Some(
            contracts
                .iter()
                .filter(|c| c.scope() == Scope::External)
                .map(|c| (c.event_type(), c.message()))
                .collect(),
        );
        self
    }

    /// The hub this publisher writes to.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Publishes one event and waits until the hub has stored it.
    ///
    /// ```no_run
    /// # async fn example(hub: fractal::Hub) -> Result<(), fractal::publish::PublishError> {
    /// use fractal::{NewEvent, Publisher};
    /// # let order = fractal::proto::Header::default();
    ///
    /// let publisher = Publisher::new(&hub, "ordering/checkout");
    /// let published = publisher
    ///     .publish(NewEvent::external("order.placed", "order-1", &order))
    ///     .await?;
    /// println!("stored as {} (a copy: {})", published.sequence, published.duplicate);
    /// # Ok(())
    /// # }
    /// ```
    /// A hub that cannot answer
    /// for a moment (a node gone, a cluster electing a leader) is waited for, up to
    /// 15 s; the event's id keeps a publish that did land from being stored twice.
    ///
    /// A handler running for a view rebuild publishes nothing: what it publishes is in the
    /// lake from the first time, and the answer says so (`duplicate`, sequence 0).
    pub async fn publish(&self, event: NewEvent) -> Result<Published, PublishError> {
        if crate::view::rebuild::rebuilding() {
            return Ok(Published {
                id: event.id,
                sequence: 0,
                duplicate: true,
            });
        }
        let ride_out = RideOut::start();
        loop {
            let sent = match self.send(event.clone()).await {
                Ok(pending) => pending.wait(&self.hub).await,
                Err(e) => Err(e),
            };
            match sent {
                Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
                sent => return sent,
            }
        }
    }

    /// Publishes events in order without waiting for each acknowledgement before sending the
    /// next; returns once the hub has stored all of them, or at the first error (events
    /// before it are stored; publishing again with the same ids is safe).
    pub async fn publish_all(
        &self,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Result<Vec<Published>, PublishError> {
        let events: Vec<NewEvent> = events.into_iter().collect();
        if crate::view::rebuild::rebuilding() {
            let mut published = Vec::with_capacity(events.len());
            for event in events {
                published.push(self.publish(event).await?);
            }
            return Ok(published);
        }
        let mut published = Vec::with_capacity(events.len());
        let mut pending: VecDeque<Pending> = VecDeque::with_capacity(PIPELINE_WINDOW);
        let pipelined = async {
            for event in &events {
                if pending.len() == PIPELINE_WINDOW
                    && let Some(oldest) = pending.pop_front()
                {
                    published.push(oldest.wait(&self.hub).await?);
                }
                pending.push_back(self.send(event.clone()).await?);
            }
            while let Some(p) = pending.pop_front() {
                published.push(p.wait(&self.hub).await?);
            }
            Ok::<_, PublishError>(())
        };
        match pipelined.await {
            Ok(()) => Ok(published),
            // The hub cannot answer for a moment: the rest one at a time, each waiting for it
            // (those sent already are recognised by their ids).
            Err(e) if crate::hub::unavailable(&e) => {
                for event in &events[published.len()..] {
                    published.push(self.publish(event.clone()).await?);
                }
                Ok(published)
            }
            Err(e) => Err(e),
        }
    }

    async fn send(&self, event: NewEvent) -> Result<Pending, PublishError> {
        let id = event.id;
        let subject = event.subject();
        if let Err(e) = wire::check_name(&event.event_type) {
            return Err(PublishError::new(
                PublishErrorKind::InvalidEvent,
                id,
                &subject,
                format!("event type {e}"),
            ));
        }
        if event.key.contains(['\r', '\n']) {
            // Headers carry the key; a line break cannot be carried.
            return Err(PublishError::new(
                PublishErrorKind::InvalidEvent,
                id,
                &subject,
                format!("key {:?} contains a line break", event.key),
            ));
        }
        if let (Some(declared), Scope::External) = (&self.declared, event.scope) {
            let message = declared
                .iter()
                .find(|(event_type, _)| *event_type == event.event_type)
                .map(|(_, message)| message.as_str());
            if message != Some(event.payload_type.as_str()) {
                let names: Vec<String> = declared
                    .iter()
                    .map(|(event_type, message)| format!("external.{event_type} ({message})"))
                    .collect();
                return Err(PublishError::new(
                    PublishErrorKind::Undeclared,
                    id,
                    &subject,
                    format!(
                        "`{}` carrying {} is not among the external contracts {} declares it publishes ({})",
                        event.event_type,
                        event.payload_type,
                        self.source,
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
        }
        let published = self.counter(&event.event_type);
        let span = tracing::info_span!(
            "publish",
            otel.name = format!("publish {subject}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "publish",
            messaging.destination.name = %subject,
            messaging.message.id = %id,
            fractal.event.type = %event.event_type,
            fractal.partition_key = %event.key,
        );
        let (mut headers, body) = event.encode(&self.source, self.hub.name());
        let refusals = self.hub.refusals();
        telemetry::inject(&span, &mut headers);
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(body);
        let ack = self
            .hub
            .jetstream()
            .send_publish(subject.clone(), publish)
            .instrument(span)
            .await
            .map_err(|e| PublishError::from_nats(id, &subject, e))?;
        Ok(Pending {
            ack,
            id,
            subject,
            published,
            refusals,
        })
    }

    fn counter(&self, event_type: &str) -> Counter {
        let read = self.counters.read().unwrap_or_else(|e| e.into_inner());
        if let Some(counter) = read.get(event_type) {
            return counter.clone();
        }
        drop(read);
        let labels = TypeLabels {
            service: self.source.clone(),
            event_type: event_type.to_owned(),
        };
        let counter = PLATFORM.published.get_or_create(&labels).clone();
        self.counters
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(event_type.to_owned(), counter.clone());
        counter
    }
}
