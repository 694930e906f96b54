//! One route's relay loop: pull selected events from the source hub, check each against the
//! route's contract, publish it to the target hub with the same id, and acknowledge the source
//! only once the target has stored it.
//!
//! Publishes are pipelined: up to `max_in_flight` relays await the target's acknowledgement at
//! once, their results are taken in source order, and the source is acknowledged in bulk (the
//! consumer uses `AckPolicy::All`, so acknowledging one message acknowledges every earlier one)
//! once a contiguous run is stored. A relay that fails is retried in place, with backoff, before
//! anything after it is acknowledged; while the target is down the route stops pulling.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use fractal::consume::Start;
use fractal::fault::{FaultKind, FaultRecorder, Origin};
use fractal::{Event, Hub, telemetry, wire};
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use prost::Message as _;
use prost_reflect::MessageDescriptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{RelayConfig, RouteConfig};
use crate::metrics::RouteMetrics;

/// Acknowledge the source at least every this many relays.
const ACK_EVERY: usize = 256;

/// Everything one route needs.
#[derive(Debug)]
pub(crate) struct Route {
    bridge: String,
    config: RouteConfig,
    relay: RelayConfig,
    contract: MessageDescriptor,
    source: Hub,
    target: Hub,
    faults: FaultRecorder,
    metrics: RouteMetrics,
    durable: String,
}

/// Why a consumer session ended.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    Shutdown,
    /// Reopen the consumer from the last acknowledged event.
    Resume,
}

/// What became of one source message.
enum Outcome {
    Relayed { duplicate: bool },
    Skipped,
    Faulted,
}

type Pending = Pin<Box<dyn Future<Output = Result<Outcome, String>> + Send>>;
type Done = Pin<Box<dyn Future<Output = (jetstream::Message, Result<Outcome, String>)> + Send>>;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Route {
    pub(crate) fn new(
        bridge: &str,
        config: RouteConfig,
        relay: RelayConfig,
        contract: MessageDescriptor,
        source: Hub,
        target: Hub,
    ) -> Self {
        let durable = format!("bridge-{bridge}-{}", config.name);
        let metrics = RouteMetrics::new(bridge, &config.name);
        metrics.last_relay.set(unix_now());
        Route {
            faults: FaultRecorder::new(&source, &format!("bridge-{bridge}"), &durable),
            bridge: bridge.to_owned(),
            config,
            relay,
            contract,
            source,
            target,
            metrics,
            durable,
        }
    }

    fn consumer_config(&self, deliver_policy: DeliverPolicy) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some(format!(
                "Fractal bridge `{}` route `{}` to hub `{}`",
                self.bridge,
                self.config.name,
                self.target.name()
            )),
            filter_subjects: self.config.subjects(),
            deliver_policy,
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(self.relay.ack_wait_secs),
            max_deliver: -1,
            max_ack_pending: (self.relay.max_in_flight + self.relay.batch) as i64,
            ..Default::default()
        }
    }

    /// Opens the route's durable consumer so that it delivers, in order, everything after the
    /// last acknowledged event. A consumer left with unacknowledged deliveries (a crash, a lost
    /// delivery) would otherwise deliver newer events first and redeliver the older ones only
    /// after the ack wait; acknowledging the newer ones would then acknowledge the older ones
    /// unrelayed. Such a consumer is recreated from its acknowledgement floor instead.
    async fn open(&self) -> Result<PullConsumer, async_nats::Error> {
        let stream = self
            .source
            .jetstream()
            .get_stream(self.source.events_stream())
            .await?;
        let existing = match stream.consumer_info(&self.durable).await {
            Ok(info) => Some(info),
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        let policy = match existing {
            None => match self.relay.start {
                Start::All => DeliverPolicy::All,
                Start::New => DeliverPolicy::New,
            },
            Some(info) => {
                // The server may keep a single filter as `filter_subject`.
                let mut filters = info.config.filter_subjects.clone();
                if !info.config.filter_subject.is_empty() {
                    filters.push(info.config.filter_subject.clone());
                }
                let same_filter = filters == self.config.subjects();
                if info.num_ack_pending == 0 && same_filter {
                    return stream.get_consumer(&self.durable).await;
                }
                let resume = info.ack_floor.stream_sequence + 1;
                tracing::info!(
                    route = %self.config.name,
                    unacknowledged = info.num_ack_pending,
                    resume_at = resume,
                    "Resuming the route from its last acknowledged event."
                );
                stream.delete_consumer(&self.durable).await?;
                DeliverPolicy::ByStartSequence {
                    start_sequence: resume,
                }
            }
        };
        Ok(stream.create_consumer(self.consumer_config(policy)).await?)
    }

    /// Opens the consumer, retrying until the source hub answers.
    async fn consumer(&self, shutdown: &CancellationToken) -> Option<PullConsumer> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.open().await {
                Ok(consumer) => return Some(consumer),
                Err(e) => {
                    tracing::warn!(route = %self.config.name, error = %e, retry_in_ms = delay.as_millis() as u64, "Cannot open the route's consumer; retrying.");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Relays until `shutdown`, then drains what is in flight.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut lag = None;
        while let Some(consumer) = self.consumer(&shutdown).await {
            if lag.is_none() {
                lag = Some(tokio::spawn(
                    self.clone().watch_lag(consumer.clone(), shutdown.clone()),
                ));
            }
            if self.relay_from(consumer, &shutdown).await == Stop::Shutdown {
                break;
            }
        }
        if let Some(lag) = lag {
            lag.abort();
        }
        tracing::info!(route = %self.config.name, "Route stopped.");
    }

    /// One session of a consumer: relays until shutdown or until a delivery goes missing.
    async fn relay_from(&self, consumer: PullConsumer, shutdown: &CancellationToken) -> Stop {
        tracing::info!(
            route = %self.config.name,
            subjects = ?self.config.subjects(),
            contract = %self.contract.full_name(),
            source = %self.source.name(),
            target = %self.target.name(),
            "Route started."
        );
        let mut in_flight: FuturesOrdered<Done> = FuturesOrdered::new();
        let mut stored: Option<jetstream::Message> = None;
        let mut unacked = 0usize;
        let mut messages = None;
        let mut next_delivery = None;
        let mut stop = Stop::Shutdown;
        'relay: loop {
            let pulling = match &mut messages {
                Some(stream) => stream,
                None => match fractal::consume::pull(&consumer, self.relay.batch, shutdown).await {
                    Some(stream) => messages.insert(stream),
                    None => break 'relay,
                },
            };
            let room = in_flight.len() < self.relay.max_in_flight;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'relay,
                Some((message, result)) = in_flight.next() => {
                    let outcome = match result {
                        Ok(outcome) => outcome,
                        Err(error) => match self.retry(&message, error, shutdown).await {
                            Some(outcome) => outcome,
                            // Shutting down: nothing from here on is acknowledged.
                            None => break 'relay,
                        },
                    };
                    self.count(outcome);
                    stored = Some(message);
                    unacked += 1;
                    if unacked >= ACK_EVERY || in_flight.is_empty() {
                        self.ack(stored.take()).await;
                        unacked = 0;
                    }
                }
                next = pulling.next(), if room => match next {
                    Some(Ok(message)) => {
                        // Deliveries are numbered; a gap means one was lost in transit, and
                        // acknowledging past it would acknowledge it unrelayed.
                        let delivery = message.info().map(|i| i.consumer_sequence).ok();
                        if next_delivery.is_some() && delivery != next_delivery {
                            tracing::warn!(route = %self.config.name, expected = ?next_delivery, got = ?delivery, "A delivery went missing; resuming from the last stored event.");
                            stop = Stop::Resume;
                            break 'relay;
                        }
                        next_delivery = delivery.map(|d| d + 1);
                        let pending = self.start(&message).await;
                        in_flight.push_back(Box::pin(async move { (message, pending.await) }));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(route = %self.config.name, error = %e, "Pull from the source hub failed; continuing.");
                    }
                    None => messages = None,
                },
            }
        }
        // Stop pulling, then wait for what is in flight: acknowledge the stored prefix, leave
        // the rest to be delivered again (the target drops the copies as duplicates).
        drop(messages);
        let drain = async {
            while let Some((message, result)) = in_flight.next().await {
                match result {
                    Ok(outcome) => {
                        self.count(outcome);
                        stored = Some(message);
                    }
                    Err(_) => break,
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!(route = %self.config.name, "Relays still in flight at shutdown; they will be delivered again.");
        }
        self.ack(stored.take()).await;
        stop
    }

    fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Relayed { duplicate } => {
                self.metrics.relayed.inc();
                if duplicate {
                    self.metrics.duplicates.inc();
                }
                self.metrics.last_relay.set(unix_now());
            }
            Outcome::Skipped => {
                self.metrics.skipped.inc();
            }
            Outcome::Faulted => {}
        }
    }

    async fn ack(&self, message: Option<jetstream::Message>) {
        if let Some(message) = message
            && let Err(e) = message.ack_with(AckKind::Ack).await
        {
            tracing::warn!(route = %self.config.name, error = %e, "Could not acknowledge the source; the events will be relayed again and dropped as duplicates.");
        }
    }

    /// Retries one message until it is stored, or `None` on shutdown.
    async fn retry(
        &self,
        message: &jetstream::Message,
        mut error: String,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let mut delay = Duration::from_millis(100);
        loop {
            tracing::warn!(route = %self.config.name, subject = %message.subject, error = %error, retry_in_ms = delay.as_millis() as u64, "Relay failed; retrying.");
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            // Keep the source from delivering it again meanwhile.
            let _ = message.ack_with(AckKind::Progress).await;
            match self.start(message).await.await {
                Ok(outcome) => return Some(outcome),
                Err(e) => error = e,
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Checks one message and sends its relay (or its fault); the returned future resolves
    /// once the hub has stored it. Sending happens here, in order.
    async fn start(&self, message: &jetstream::Message) -> Pending {
        let (sequence, deliveries) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered.max(1) as u64))
            .unwrap_or_default();
        let event = match Event::decode(
            &message.subject,
            message.headers.as_ref(),
            message.payload.clone(),
        ) {
            Ok(event) => event,
            Err(e) => {
                return self.fault(
                    message,
                    sequence,
                    deliveries,
                    FaultKind::Malformed,
                    format!("not a well-formed event: {e}"),
                    None,
                );
            }
        };
        if event
            .resubmitted_for
            .as_ref()
            .is_some_and(|intended| *intended != self.durable)
        {
            // Another consumer's fault, resubmitted to it alone.
            return Box::pin(async { Ok(Outcome::Skipped) });
        }
        let target = self.target.name();
        if event.path.iter().any(|hub| hub == target) {
            tracing::debug!(route = %self.config.name, id = %event.id, target, "Already passed through the target; not relayed.");
            return Box::pin(async { Ok(Outcome::Skipped) });
        }
        let violation = if event.payload_type != self.contract.full_name() {
            Some(format!(
                "payload is `{}` but route `{}` carries `{}`",
                event.payload_type,
                self.config.name,
                self.contract.full_name()
            ))
        } else {
            crate::contracts::check(&self.contract, &event.payload).err()
        };
        if let Some(reason) = violation {
            return self.fault(
                message,
                sequence,
                deliveries,
                FaultKind::ContractViolation,
                reason,
                Some(&event.event_type),
            );
        }

        let span = tracing::info_span!(
            "relay",
            otel.name = format!("relay {}", message.subject),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "publish",
            messaging.destination.name = %message.subject,
            messaging.message.id = %event.id,
            fractal.bridge = %self.bridge,
            fractal.route = %self.config.name,
            fractal.source_hub = %self.source.name(),
            fractal.target_hub = target,
        );
        telemetry::continue_trace(&span, message.headers.as_ref());
        let mut headers = message.headers.clone().unwrap_or_default();
        let path = match headers.get(wire::PATH) {
            Some(path) => format!("{},{target}", path.as_str()),
            None => target.to_owned(),
        };
        headers.insert(wire::PATH, path.as_str());
        if event.resubmitted_for.is_some() {
            // A fault of this route, resubmitted to it: on the target it is the event again,
            // under its own id, for every consumer there.
            let mut kept = fractal::fault::header_list(&headers);
            kept.retain(|h| h.name != wire::RESUBMIT_FOR);
            headers = fractal::fault::header_map(&kept);
            headers.insert(wire::MSG_ID, event.id.as_str());
        }
        telemetry::inject(&span, &mut headers);
        let (subject, body) = match &self.config.target_type {
            None => (message.subject.to_string(), message.payload.clone()),
            Some(target_type) => {
                headers.insert(wire::TYPE, target_type.as_str());
                (
                    wire::event_subject(wire::Scope::External, target_type),
                    renamed(&message.payload, target_type),
                )
            }
        };
        let sent = self
            .target
            .jetstream()
            .send_publish(
                subject,
                PublishMessage::build().headers(headers).payload(body),
            )
            .instrument(span)
            .await;
        match sent {
            Ok(ack) => Box::pin(async move {
                ack.await
                    .map(|ack| Outcome::Relayed {
                        duplicate: ack.duplicate,
                    })
                    .map_err(|e| e.to_string())
            }),
            Err(e) => {
                let error = e.to_string();
                Box::pin(async move { Err(error) })
            }
        }
    }

    fn fault(
        &self,
        message: &jetstream::Message,
        sequence: u64,
        deliveries: u64,
        kind: FaultKind,
        reason: String,
        event_type: Option<&str>,
    ) -> Pending {
        self.metrics.rejected(match kind {
            FaultKind::ContractViolation => "contract",
            _ => "malformed",
        });
        let faults = self.faults.clone();
        let original = message.message.clone();
        let stream = self.source.events_stream().to_owned();
        let event_type = event_type.map(str::to_owned);
        Box::pin(async move {
            let origin = Origin {
                stream: &stream,
                sequence,
                deliveries,
            };
            faults
                .record(&original, origin, kind, &reason, event_type.as_deref())
                .await
                .map(|()| Outcome::Faulted)
                .map_err(|e| format!("cannot record fault: {e}"))
        })
    }

    async fn watch_lag(self: Arc<Self>, mut consumer: PullConsumer, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.relay.lag_poll_secs);
        loop {
            match consumer.info().await {
                Ok(info) => {
                    let pending = info.num_pending as i64 + info.num_ack_pending as i64;
                    self.metrics.pending.set(pending);
                    let idle = unix_now() - self.metrics.last_relay.get();
                    let stalled = pending > 0 && idle >= self.relay.stall_after_secs as i64;
                    self.metrics.stalled.set(i64::from(stalled));
                    if stalled {
                        tracing::warn!(route = %self.config.name, pending, idle_secs = idle, "Route is stalled.");
                    }
                }
                Err(e) => {
                    tracing::debug!(route = %self.config.name, error = %e, "Cannot read the route's lag.")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// The envelope in `body` with its type replaced. `body` decoded as an envelope already.
fn renamed(body: &Bytes, event_type: &str) -> Bytes {
    match fractal::proto::Envelope::decode(body.clone()) {
        Ok(mut envelope) => {
            envelope.r#type = event_type.to_owned();
            envelope.encode_to_vec().into()
        }
        Err(_) => body.clone(),
    }
}
