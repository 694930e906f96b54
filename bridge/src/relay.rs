//! One route's relay loop: pull selected events from the source hub, check each against the
//! route's contract, publish it to the target hub with the same id, and acknowledge the source
//! only once the target has stored it.
//!
//! Publishes are pipelined: up to `max_in_flight` relays await the target's acknowledgement at
//! once. Each is a plain publish whose reply subject numbers it under one inbox the route
//! subscribes to, so an acknowledgement costs no request bookkeeping. Results are taken in
//! source order and the source is acknowledged in bulk (the consumer uses `AckPolicy::All`, so
//! acknowledging one message acknowledges every earlier one) once a contiguous run is stored.
//! When the target refuses a relay or does not answer in time, the route waits, with backoff,
//! then publishes everything unacknowledged again, in order (the target drops what it already
//! has as duplicates); while the target is down the route stops pulling.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::{HeaderName, Subject};
use bytes::Bytes;
use fractal::fault::{FaultKind, FaultRecorder, Origin};
use fractal::{EventView, Hub, telemetry, wire};
use futures::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use prost_reflect::MessageDescriptor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{RelayConfig, RouteConfig};
use crate::metrics::RouteMetrics;

mod window;

use window::{Copy, Fault, Outcome, PUBLISH_TIMEOUT, State, Window};

/// Room for a `Fractal-Path` header the copy may gain (name, separators, a comma).
const PATH_HEADER_ROOM: usize = wire::PATH.len() + 5;

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

/// Faults to record, numbered by their slots, in source order.
type Recorder = mpsc::UnboundedSender<(u64, Arc<Fault>)>;

/// Each recorded fault's result, under its slot's number.
type Recorded = mpsc::UnboundedReceiver<(u64, Result<(), String>)>;

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
            None => self.relay.start.deliver_policy(),
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

    /// One session of a consumer: relays until shutdown or until a delivery goes missing,
    /// then drains what is in flight.
    async fn relay_from(&self, consumer: PullConsumer, shutdown: &CancellationToken) -> Stop {
        let mut session = match Session::open(self, shutdown).await {
            Ok(session) => session,
            Err(stop) => return stop,
        };
        let stop = session.relay(&consumer, shutdown).await;
        session.drain().await;
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

    /// Acknowledges (`+ACK`) a delivery, and every one before it, or marks it in progress
    /// (`+WPI`).
    async fn ack(&self, delivery: Option<Subject>, kind: &'static [u8]) {
        let Some(delivery) = delivery else { return };
        let publish = self
            .source
            .client()
            .publish(delivery, Bytes::from_static(kind));
        let error = match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the source's connection took nothing for {PUBLISH_TIMEOUT:?}"),
        };
        tracing::warn!(route = %self.config.name, error = %error, "Could not acknowledge the source; the events will be relayed again and dropped as duplicates.");
    }

    /// Publishes again, in order, every relay not yet stored, and records again every fault
    /// that could not be recorded.
    async fn again(&self, window: &mut Window, recorder: &Recorder) {
        let now = Instant::now();
        for index in 0..window.len() {
            let (number, reply, state) = window.take(index);
            let state = match state {
                State::Sent { copy, .. } | State::Failed { copy, .. } => {
                    self.send(copy, reply, now).await
                }
                State::NotRecorded { fault, .. } => self.record(fault, number, recorder),
                state => state,
            };
            let failed = matches!(state, State::Failed { .. });
            window.put(index, state);
            if failed {
                // The connection is not taking publishes: the rest waits for the next round.
                break;
            }
        }
    }

    /// Publishes `copy` to the target with `reply` as its reply subject. While the target is
    /// unreachable the client queues publishes; when its queue is full, this gives up after
    /// [`PUBLISH_TIMEOUT`].
    async fn send(&self, copy: Copy, reply: String, now: Instant) -> State {
        let publish = self.target.client().publish_with_reply_and_headers(
            copy.subject.clone(),
            reply,
            copy.headers.clone(),
            copy.payload.clone(),
        );
        let error = match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(())) => return State::Sent { copy, since: now },
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the target's connection took no publish for {PUBLISH_TIMEOUT:?}"),
        };
        State::Failed { copy, error }
    }

    /// Checks one delivery and publishes its relay, or starts recording its fault.
    async fn start(
        &self,
        mut message: async_nats::Message,
        (sequence, deliveries): (u64, u64),
        number: u64,
        reply: String,
        recorder: &Recorder,
    ) -> State {
        let event =
            match EventView::parse(&message.subject, message.headers.as_ref(), &message.payload) {
                Ok(event) => event,
                Err(e) => {
                    let fault = Fault {
                        reason: format!("not a well-formed event: {e}"),
                        original: message,
                        sequence,
                        deliveries,
                        kind: FaultKind::Malformed,
                        event_type: None,
                    };
                    return self.record(Arc::new(fault), number, recorder);
                }
            };
        if event
            .resubmitted_for
            .is_some_and(|intended| intended != self.durable)
        {
            // Another consumer's fault, resubmitted to it alone.
            return State::Settled(Outcome::Skipped);
        }
        let target = self.target.name();
        if event.hubs().any(|hub| hub == target) {
            tracing::debug!(route = %self.config.name, id = %event.id, target, "Already passed through the target; not relayed.");
            return State::Settled(Outcome::Skipped);
        }
        let violation = if event.payload_type != self.contract.full_name() {
            Some(format!(
                "payload is `{}` but route `{}` carries `{}`",
                event.payload_type,
                self.config.name,
                self.contract.full_name()
            ))
        } else {
            crate::contracts::check(&self.contract, event.payload).err()
        };
        if let Some(reason) = violation {
            let fault = Fault {
                event_type: Some(event.event_type.to_owned()),
                original: message,
                sequence,
                deliveries,
                kind: FaultKind::ContractViolation,
                reason,
            };
            return self.record(Arc::new(fault), number, recorder);
        }

        // The copy grows by the target's name on its path; the target's connection refuses a
        // message over its limit, every time.
        let max_payload = self.target.client().max_payload();
        if message.length + target.len() + PATH_HEADER_ROOM > max_payload {
            let fault = Fault {
                reason: format!(
                    "the relayed copy would be about {} bytes, over the target's limit of {max_payload}",
                    message.length + target.len() + PATH_HEADER_ROOM
                ),
                event_type: Some(event.event_type.to_owned()),
                original: message,
                sequence,
                deliveries,
                kind: FaultKind::Permanent,
            };
            return self.record(Arc::new(fault), number, recorder);
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
        // A fault of this route, resubmitted to it: on the target it is the event again, under
        // its own id, for every consumer there.
        let resubmitted_id = event.resubmitted_for.map(|_| event.id.to_owned());
        let mut headers = message.headers.take().unwrap_or_default();
        if !span.is_disabled() {
            telemetry::continue_trace(&span, Some(&headers));
        }
        let path_header = HeaderName::from_static(wire::PATH);
        let path = match headers.get(path_header.clone()) {
            Some(path) => format!("{},{target}", path.as_str()),
            None => target.to_owned(),
        };
        headers.insert(path_header, path);
        if let Some(id) = resubmitted_id {
            let mut kept = fractal::fault::header_list(&headers);
            kept.retain(|h| h.name != wire::RESUBMIT_FOR);
            // Taken from a message NATS carried, every header can be carried again.
            match fractal::fault::header_map(&kept) {
                Ok(map) => headers = map,
                Err(e) => {
                    tracing::warn!(route = %self.config.name, error = %e, "A resubmitted event's headers cannot be rebuilt; relayed with them as they are.");
                }
            }
            headers.insert(wire::MSG_ID, id.as_str());
        }
        if !span.is_disabled() {
            telemetry::inject(&span, &mut headers);
        }
        let copy = match &self.config.target_type {
            None => Copy {
                subject: message.subject,
                headers,
                payload: message.payload,
            },
            Some(target_type) => {
                headers.insert(wire::TYPE, target_type.as_str());
                Copy {
                    subject: wire::event_subject(wire::Scope::External, target_type).into(),
                    headers,
                    payload: renamed(&message.payload, target_type),
                }
            }
        };
        self.send(copy, reply, Instant::now())
            .instrument(span)
            .await
    }

    /// A task that records faults on the source hub's fault stream one after the other, so
    /// that they are kept in source order, and answers with each one's result.
    fn recorder(&self) -> (Recorder, Recorded) {
        let (faults_tx, mut faults) = mpsc::unbounded_channel::<(u64, Arc<Fault>)>();
        let (results, results_rx) = mpsc::unbounded_channel();
        let recorder = self.faults.clone();
        let stream = self.source.events_stream().to_owned();
        tokio::spawn(async move {
            while let Some((number, fault)) = faults.recv().await {
                let origin = Origin {
                    stream: &stream,
                    sequence: fault.sequence,
                    deliveries: fault.deliveries,
                };
                let result = recorder
                    .record(
                        &fault.original,
                        origin,
                        fault.kind,
                        &fault.reason,
                        fault.event_type.as_deref(),
                    )
                    .await
                    .map_err(|e| format!("cannot record fault: {e}"));
                if results.send((number, result)).is_err() {
                    return;
                }
            }
        });
        (faults_tx, results_rx)
    }

    /// Hands `fault` to the recorder; its result comes back under `number`.
    fn record(&self, fault: Arc<Fault>, number: u64, recorder: &Recorder) -> State {
        self.metrics.rejected(match fault.kind {
            FaultKind::ContractViolation => "contract",
            FaultKind::Malformed => "malformed",
            _ => "too_large",
        });
        let _ = recorder.send((number, fault.clone()));
        State::Recording(fault)
    }

    async fn watch_lag(self: Arc<Self>, mut consumer: PullConsumer, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.relay.lag_poll_secs);
        loop {
            match consumer.info().await {
                Ok(info) => {
                    let pending = info.num_pending as i64 + info.num_ack_pending as i64;
                    self.metrics.pending.set(pending);
                    let oldest = if pending > 0 {
                        self.oldest_waiting(info.ack_floor.stream_sequence + 1)
                            .await
                    } else {
                        None
                    };
                    self.metrics
                        .oldest_waiting
                        .set(oldest.map_or(0, |time| unix_now() - time));
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

    /// The Unix time of the first event the route selects at or after `sequence` on the
    /// source: the oldest one waiting to be relayed.
    async fn oldest_waiting(&self, sequence: u64) -> Option<i64> {
        let stream = self
            .source
            .jetstream()
            .get_stream_no_info(self.source.events_stream())
            .await
            .ok()?;
        let mut oldest = None;
        for subject in self.config.subjects() {
            if let Ok(message) = stream
                .get_first_raw_message_by_subject(&subject, sequence)
                .await
            {
                let time = message.time.unix_timestamp();
                oldest = Some(oldest.map_or(time, |t: i64| t.min(time)));
            }
        }
        oldest
    }
}

/// One session of a route's consumer: the window of messages in flight, the target's
/// answers, the fault recorder's results and the pull from the source.
struct Session<'a> {
    route: &'a Route,
    window: Window,
    answers: async_nats::Subscriber,
    recorder: Recorder,
    recorded: Recorded,
    messages: Option<pull::Stream>,
    /// The consumer sequence the next delivery must have.
    next_delivery: Option<u64>,
}

impl<'a> Session<'a> {
    /// Subscribes to the target's answers; `Err` says how the route goes on if it cannot.
    async fn open(route: &'a Route, shutdown: &CancellationToken) -> Result<Self, Stop> {
        let target = route.target.client();
        let window = Window::new(target.new_inbox());
        let subscribe = tokio::time::timeout(PUBLISH_TIMEOUT, target.subscribe(window.answers()));
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => return Err(Stop::Shutdown),
            subscribed = subscribe => subscribed,
        };
        let answers = match subscribed {
            Ok(Ok(answers)) => answers,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer in {PUBLISH_TIMEOUT:?}"),
                };
                tracing::warn!(route = %route.config.name, error = %error, "Cannot subscribe to the target's acknowledgements; retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => return Err(Stop::Resume),
                }
            }
        };
        let (recorder, recorded) = route.recorder();
        tracing::info!(
            route = %route.config.name,
            subjects = ?route.config.subjects(),
            contract = %route.contract.full_name(),
            source = %route.source.name(),
            target = %route.target.name(),
            "Route started."
        );
        Ok(Session {
            route,
            window,
            answers,
            recorder,
            recorded,
            messages: None,
            next_delivery: None,
        })
    }

    /// Relays until shutdown, or until the session must end ([`Stop::Resume`]).
    async fn relay(&mut self, consumer: &PullConsumer, shutdown: &CancellationToken) -> Stop {
        let name = &self.route.config.name;
        loop {
            self.settle().await;
            if let Some(error) = self.window.stuck(Instant::now()) {
                if !self.retry(&error, shutdown).await {
                    return Stop::Shutdown;
                }
                continue;
            }
            let pulling = match &mut self.messages {
                Some(stream) => stream,
                None => {
                    match fractal::hub::pull(consumer, self.route.relay.batch, shutdown).await {
                        Some(stream) => self.messages.insert(stream),
                        None => return Stop::Shutdown,
                    }
                }
            };
            let room = self.window.len() < self.route.relay.max_in_flight;
            let deadline = self.window.deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Stop::Shutdown,
                answer = self.answers.next() => match answer {
                    Some(answer) => self.window.answer(&answer),
                    None => {
                        tracing::warn!(route = %name, "The target's acknowledgements stopped; resuming from the last stored event.");
                        return Stop::Resume;
                    }
                },
                result = self.recorded.recv() => match result {
                    Some((number, result)) => self.window.recorded(number, result),
                    None => {
                        tracing::warn!(route = %name, "The fault recorder stopped; resuming from the last stored event.");
                        return Stop::Resume;
                    }
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {}
                next = pulling.next(), if room => match next {
                    Some(Ok(message)) => {
                        if let Err(stop) = self.on_delivery(message).await {
                            return stop;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(route = %name, error = %e, "Pull from the source hub failed.");
                        if fractal::hub::pull_lost(&e) {
                            self.messages = None;
                        }
                    }
                    None => self.messages = None,
                },
            }
        }
    }

    /// Checks one delivery and relays it, or starts recording its fault. A gap in the
    /// deliveries' numbers means one was lost in transit, and acknowledging past it would
    /// acknowledge it unrelayed: the session ends and resumes from the last stored event.
    async fn on_delivery(&mut self, message: async_nats::jetstream::Message) -> Result<(), Stop> {
        let info = message.info().map(|i| {
            (
                i.consumer_sequence,
                i.stream_sequence,
                i.delivered.max(1) as u64,
            )
        });
        let delivery = info.as_ref().map(|i| i.0).ok();
        if self.next_delivery.is_some() && delivery != self.next_delivery {
            tracing::warn!(route = %self.route.config.name, expected = ?self.next_delivery, got = ?delivery, "A delivery went missing; resuming from the last stored event.");
            return Err(Stop::Resume);
        }
        self.next_delivery = delivery.map(|d| d + 1);
        let origin = info.map(|i| (i.1, i.2)).unwrap_or_default();
        let number = self.window.next_number();
        let message = message.message;
        let ack = message.reply.clone();
        let reply = self.window.reply(number);
        let state = self
            .route
            .start(message, origin, number, reply, &self.recorder)
            .await;
        self.window.push(ack, state);
        Ok(())
    }

    /// Counts what settled and acknowledges the source when it is time.
    async fn settle(&mut self) {
        let route = self.route;
        self.window.settle(|outcome| route.count(outcome));
        if let Some(stored) = self.window.ack_due() {
            route.ack(Some(stored), b"+ACK").await;
        }
    }

    /// The front message is stuck (`error`): acknowledges what is stored, waits (with
    /// backoff), then publishes everything unacknowledged again, unless the target answered
    /// meanwhile. False if shutdown came first.
    async fn retry(&mut self, error: &str, shutdown: &CancellationToken) -> bool {
        let route = self.route;
        let delay = self.window.backoff();
        tracing::warn!(route = %route.config.name, error = %error, in_flight = self.window.len(), retry_in_ms = delay.as_millis() as u64, "Relay failed; publishing everything unacknowledged again.");
        route.ack(self.window.take_ack(), b"+ACK").await;
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        // A slow target may have answered meanwhile.
        while let Some(Some(answer)) = self.answers.next().now_or_never() {
            self.window.answer(&answer);
        }
        while let Ok((number, result)) = self.recorded.try_recv() {
            self.window.recorded(number, result);
        }
        if self.window.stuck(Instant::now()).is_none() {
            return true;
        }
        // Keep the source from delivering the waiting events again meanwhile.
        route.ack(self.window.front_ack().cloned(), b"+WPI").await;
        route.again(&mut self.window, &self.recorder).await;
        true
    }

    /// Stops pulling, then waits (up to 10 s) for what is in flight: acknowledges the stored
    /// prefix and leaves the rest to be delivered again (the target drops the copies as
    /// duplicates).
    async fn drain(mut self) {
        let route = self.route;
        self.messages = None;
        let drain = async {
            loop {
                self.window.settle(|outcome| route.count(outcome));
                if self.window.len() == 0 || self.window.stuck(Instant::now()).is_some() {
                    break;
                }
                tokio::select! {
                    Some(answer) = self.answers.next() => self.window.answer(&answer),
                    Some((number, result)) = self.recorded.recv() => self.window.recorded(number, result),
                    else => break,
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
            || self.window.len() > 0
        {
            tracing::warn!(route = %route.config.name, in_flight = self.window.len(), "Relays still in flight at shutdown; they will be delivered again.");
        }
        route.ack(self.window.take_ack(), b"+ACK").await;
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
