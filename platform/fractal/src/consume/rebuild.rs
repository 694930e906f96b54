//! The service's side of a view rebuild (see [`crate::view::rebuild`]): it answers the
//! operator's requests on its control subject and runs its own handlers over the lake.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::kv;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{HandlerError, Replays, Shared, backoff};
use crate::event::Event;
use crate::fault::{FaultKind, Origin};
use crate::telemetry;
use crate::view::rebuild::{
    self, Answer, Bound, Handling, Progress, Request, State, Switched, Target,
};

/// How many events one fetch of a rebuild reads.
const BATCH: usize = 256;

/// How many times a rebuild waits for a hub that cannot answer before it gives up on an event.
const MAX_WAITS: u64 = 100;

/// Answers rebuild requests until `shutdown`.
pub(super) async fn serve(shared: Arc<Shared>, shutdown: CancellationToken) {
    let subject = rebuild::control_subject(&shared.service);
    let client = shared.hub.client().clone();
    let mut requests = match client
        .queue_subscribe(subject.clone(), "rebuild".into())
        .await
    {
        Ok(requests) => requests,
        Err(e) => {
            tracing::warn!(error = %e, subject, "Cannot take rebuild requests.");
            return;
        }
    };
    let running = Arc::new(AtomicBool::new(false));
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            request = requests.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let Some(reply) = request.reply.clone() else {
            continue;
        };
        let refused = |reason: String| Answer::Refused { reason };
        let answer = match serde_json::from_slice::<Request>(&request.payload) {
            Err(e) => refused(format!("not a rebuild request: {e}")),
            Ok(Request::Plan { view }) => match plan(&shared, &view) {
                Ok(targets) => Answer::Plan { targets },
                Err(reason) => refused(reason),
            },
            Ok(Request::Start { view, id }) => match plan(&shared, &view) {
                Err(reason) => refused(reason),
                Ok(_) if running.swap(true, Ordering::AcqRel) => {
                    refused("a rebuild is running in this service already".into())
                }
                Ok(targets) => {
                    tokio::spawn(run(
                        shared.clone(),
                        id,
                        view,
                        targets,
                        running.clone(),
                        shutdown.clone(),
                    ));
                    Answer::Started
                }
            },
        };
        let answer = serde_json::to_vec(&answer).expect("an answer serializes");
        if let Err(e) = client.publish(reply, answer.into()).await {
            tracing::warn!(error = %e, "Cannot answer a rebuild request.");
        }
    }
}

/// The views a rebuild of `view` writes, or why this service cannot rebuild it.
fn plan(shared: &Shared, view: &str) -> Result<Vec<Target>, String> {
    if shared.config.replays == Replays::Skip {
        return Err(
            "its consumer skips replays (`consumer.replays = \"skip\"`): its handlers \
             have outside effects, and are not run over the lake again"
                .into(),
        );
    }
    let views = shared
        .hub
        .views()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(binding) = views.get(view) else {
        let mut names: Vec<&str> = views.keys().map(String::as_str).collect();
        names.sort_unstable();
        return Err(format!(
            "it has no view `{view}` (its views: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ));
    };
    if let Some(primary) = binding.index_of().as_deref() {
        return Err(format!(
            "`{view}` is an index of view `{primary}`: rebuild `{primary}`, which rebuilds its \
             indexes with it"
        ));
    }
    let mut names = vec![view.to_owned()];
    names.extend(binding.indexes());
    let mut targets = Vec::new();
    for name in names {
        let Some(binding) = views.get(&name) else {
            continue;
        };
        if binding.is_live() {
            return Err(format!(
                "a live copy of `{name}` is kept in memory, and a live copy follows one bucket"
            ));
        }
        let current = binding.bucket_name();
        targets.push(Target {
            next: rebuild::next_bucket(&name, &current),
            view: name,
            current,
        });
    }
    Ok(targets)
}

/// Runs one rebuild to its end, recording how it went in the view's binding.
async fn run(
    shared: Arc<Shared>,
    id: String,
    view: String,
    targets: Vec<Target>,
    running: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut progress = Progress {
        id: id.clone(),
        ..Progress::default()
    };
    tracing::info!(service = %shared.service, view, rebuild = id, "Rebuilding a view from the lake.");
    let rebuilt = tokio::select! {
        rebuilt = rebuild_into(&shared, &view, &targets, &mut progress) => rebuilt,
        _ = shutdown.cancelled() => Err("the service stopped".to_owned()),
    };
    if let Err(reason) = rebuilt {
        tracing::warn!(service = %shared.service, view, rebuild = id, reason, "A rebuild failed.");
        progress.state = State::Failed;
        progress.error = Some(reason);
        if let Err(e) = report(&shared, &view, &progress).await {
            tracing::warn!(error = %e, "Cannot record a failed rebuild.");
        }
    } else {
        tracing::info!(
            service = %shared.service,
            view,
            rebuild = id,
            events = progress.done,
            faults = progress.faults,
            "Rebuilt a view."
        );
    }
    running.store(false, Ordering::Release);
}

/// Writes `progress` into view `view`'s binding, as it is bound in this process.
async fn report(shared: &Shared, view: &str, progress: &Progress) -> Result<(), String> {
    let store = rebuild::bindings(&shared.hub)
        .await
        .map_err(|e| e.to_string())?;
    let bound = bound_now(shared, view, Some(progress.clone()))?;
    rebuild::write_bound(&store, view, &bound)
        .await
        .map_err(|e| e.to_string())
}

/// View `view`'s binding as this process has it.
fn bound_now(shared: &Shared, view: &str, rebuild: Option<Progress>) -> Result<Bound, String> {
    let views = shared
        .hub
        .views()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let binding = views
        .get(view)
        .ok_or_else(|| format!("view `{view}` is no longer open"))?;
    Ok(Bound {
        bucket: binding.bucket_name(),
        rebuilt_through: binding.rebuilt_through(),
        rebuild,
    })
}

/// Applies the lake to the new buckets, then switches the views to them.
async fn rebuild_into(
    shared: &Shared,
    view: &str,
    targets: &[Target],
    progress: &mut Progress,
) -> Result<(), String> {
    let hub = &shared.hub;
    let mut stores = HashMap::new();
    for target in targets {
        let store = hub
            .jetstream()
            .get_key_value(&target.next)
            .await
            .map_err(|e| format!("cannot open bucket `{}`: {e}", target.next))?;
        stores.insert(target.view.clone(), Arc::new(store));
    }
    let stores = Arc::new(stores);
    let stream = hub
        .jetstream()
        .get_stream(&shared.stream)
        .await
        .map_err(|e| format!("cannot open stream `{}`: {e}", shared.stream))?;
    let name = format!("{}_rebuild", shared.durable);
    // One left by a rebuild cut short.
    let _ = stream.delete_consumer(&name).await;
    let mut filter_subjects = shared.filter_subjects.clone();
    let (filter_subject, filter_subjects) = if filter_subjects.len() == 1 {
        (filter_subjects.remove(0), Vec::new())
    } else {
        (String::new(), filter_subjects)
    };
    let consumer: consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            name: Some(name.clone()),
            description: Some(format!("Rebuild {} of view `{view}`", progress.id)),
            filter_subject,
            filter_subjects,
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(300),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read the lake through consumer `{name}`: {e}"))?;
    progress.total = consumer.cached_info().num_pending;
    report(shared, view, progress).await?;

    // Catch up with the lake while the live handlers go on.
    let mut position = 0;
    let mut reported = Instant::now();
    loop {
        let batch = fetch(&consumer).await?;
        if batch.is_empty() {
            break;
        }
        for message in batch {
            position = apply(shared, &stores, &message, progress).await;
            if reported.elapsed() >= Duration::from_secs(1) {
                report(shared, view, progress).await?;
                reported = Instant::now();
            }
        }
    }

    // Pause the live handlers; apply what they started beyond this point; switch.
    let paused = shared.pause.write().await;
    let cutoff = shared.started.load(Ordering::Acquire).max(position);
    'last: loop {
        let batch = fetch(&consumer).await?;
        if batch.is_empty() {
            break;
        }
        for message in batch {
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            if sequence > cutoff {
                break 'last;
            }
            apply(shared, &stores, &message, progress).await;
        }
    }
    let _ = stream.delete_consumer(&name).await;
    let mut switched = Vec::new();
    for target in targets {
        let revision = stores[&target.view]
            .stream
            .get_info()
            .await
            .map_err(|e| format!("cannot read bucket `{}`: {e}", target.next))?
            .state
            .last_sequence;
        switched.push(Switched {
            view: target.view.clone(),
            bucket: target.next.clone(),
            previous: target.current.clone(),
            revision,
        });
    }
    progress.state = State::Switched;
    progress.switched = switched;
    let bindings = rebuild::bindings(hub).await.map_err(|e| e.to_string())?;
    // The indexes first, the view last: its record says the rebuild is done.
    let mut written = Vec::new();
    for target in targets.iter().rev() {
        let bound = Bound {
            bucket: target.next.clone(),
            rebuilt_through: cutoff,
            rebuild: (target.view == view).then(|| progress.clone()),
        };
        if let Err(e) = rebuild::write_bound(&bindings, &target.view, &bound).await {
            // Put back what was switched: the views stay where they were.
            for name in written {
                if let Ok(before) = bound_now(shared, name, None) {
                    let _ = rebuild::write_bound(&bindings, name, &before).await;
                }
            }
            return Err(e.to_string());
        }
        written.push(&target.view);
    }
    {
        let views = hub
            .views()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for target in targets {
            if let Some(binding) = views.get(&target.view) {
                binding.switch(stores[&target.view].clone(), cutoff);
            }
        }
    }
    drop(paused);
    Ok(())
}

/// The events the rebuild consumer has for now, up to a batch (none once it has caught up).
async fn fetch(
    consumer: &consumer::PullConsumer,
) -> Result<Vec<async_nats::jetstream::Message>, String> {
    let fail = |e: String| format!("cannot read the lake: {e}");
    let mut messages = consumer
        .fetch()
        .max_messages(BATCH)
        .messages()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut batch = Vec::new();
    while let Some(message) = messages.next().await {
        batch.push(message.map_err(|e| fail(e.to_string()))?);
    }
    Ok(batch)
}

/// Runs the service's handler on one event of the lake for the rebuild into `stores`, as the
/// live consumer would (retries, faults), and returns its stream sequence.
async fn apply(
    shared: &Shared,
    stores: &Arc<HashMap<String, Arc<kv::Store>>>,
    message: &async_nats::jetstream::Message,
    progress: &mut Progress,
) -> u64 {
    let Ok(info) = message.info() else {
        return 0;
    };
    let sequence = info.stream_sequence;
    progress.done += 1;
    let Ok(event) = Event::decode(
        &message.subject,
        message.headers.as_ref(),
        message.payload.clone(),
    ) else {
        // The live consumer made it a fault when it came.
        return sequence;
    };
    if event.resubmitted_for.is_some() {
        // A copy of a fact, which is applied in its own place in the lake.
        return sequence;
    }
    let Some(registered) = shared.handlers.get(&event.event_type) else {
        return sequence;
    };
    let event = event.replayed(&format!("rebuild:{}", progress.id));
    let handling = Handling {
        sequence,
        rebuild: Some(stores.clone()),
    };
    let (mut attempt, mut waits) = (1, 0);
    loop {
        let span = tracing::info_span!(
            "rebuild",
            otel.name = format!("rebuild {}", message.subject),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %message.subject,
            messaging.message.id = %event.id,
            fractal.event.type = %event.event_type,
            fractal.partition_key = %event.key,
            fractal.rebuild = %progress.id,
        );
        telemetry::continue_trace(&span, message.headers.as_ref());
        let result = handling
            .clone()
            .scope((registered.handler)(event.clone()))
            .instrument(span)
            .await;
        let (kind, reason) = match result {
            Ok(()) => return sequence,
            Err(HandlerError::Permanent(e)) => (FaultKind::Permanent, e.to_string()),
            Err(HandlerError::Retryable(e)) if attempt < shared.config.max_deliveries => {
                tokio::time::sleep(backoff(&shared.config, attempt)).await;
                attempt += 1;
                tracing::debug!(error = %e, "A rebuild's handler failed; retrying.");
                continue;
            }
            Err(HandlerError::Unavailable(e)) if waits < MAX_WAITS => {
                waits += 1;
                tokio::time::sleep(backoff(&shared.config, waits)).await;
                tracing::debug!(error = %e, "The hub cannot answer a rebuild's handler; waiting.");
                continue;
            }
            Err(HandlerError::Retryable(e) | HandlerError::Unavailable(e)) => (
                FaultKind::RetriesExhausted,
                format!("failed {attempt} times; last error: {e}"),
            ),
        };
        progress.faults += 1;
        let origin = Origin {
            stream: &shared.stream,
            sequence,
            deliveries: attempt,
        };
        let reason = format!("in rebuild {}: {reason}", progress.id);
        if let Err(e) = shared
            .faults
            .record(message, origin, kind, &reason, Some(&event.event_type))
            .await
        {
            tracing::error!(error = %e, sequence, "Could not record a rebuild's fault.");
        }
        return sequence;
    }
}
