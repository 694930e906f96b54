//! Rebuilding a view from the lake while its service keeps serving it.
//!
//! A view is bound to a bucket through the hub's `views` bucket: the entry named after the view
//! says which bucket holds it (`view_<name>` at first; a rebuild alternates with
//! `view_<name>__b`). [`rebuild`] asks the running service that keeps the view to rebuild it:
//!
//! 1. The service names the view's buckets, its own and its indexes'; the operator's side
//!    creates the new ones empty.
//! 2. The service runs its own handlers over every event of its consumer's types in the lake,
//!    in stream order, one at a time, into the new buckets. While they run, the rebuilt views
//!    are read from and written to the new buckets; every other view is read as it is now and
//!    never written, and nothing is published (the events a handler publishes are in the lake
//!    from the first time). The handlers see the events as replays
//!    ([`crate::event::EventData::replay`] is `rebuild:<id>`).
//! 3. Caught up with the lake, the service pauses its live handlers, lets the rebuild apply the
//!    last events any live handler has started, binds the views to the new buckets, and goes
//!    on. Events up to that point, if the live consumer sees them again (a retry, a
//!    redelivery), leave the rebuilt views alone: the rebuild applied them. So no event is
//!    applied twice and none is missed, while events keep arriving.
//! 4. The operator's side compares the old buckets with the new ones as they were at the
//!    switch and reports the entries that differ. The old buckets stay until the next rebuild.
//!
//! What a rebuild cannot bring back: writes a service makes outside its handlers (they are not
//! in the lake), and views kept live in memory ([`super::LiveView`] follows one bucket), which
//! it refuses. It pauses the live handlers of the one process that runs it: a service scaled to
//! several processes should be scaled to one for a rebuild.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

use super::{Binding, ViewError, bucket_of, pass};
use crate::Hub;
use crate::hub::RideOut;
use crate::proto::ViewRecord;

/// The bucket of every hub that binds its views to their buckets.
pub const BINDINGS: &str = "views";

/// How long the operator's side waits for a service to answer a step.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the `views` bucket says about one view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    /// The bucket that holds the view.
    pub bucket: String,
    /// The stream sequence up to which a rebuild applied the hub's events.
    #[serde(default)]
    pub rebuilt_through: u64,
    /// The latest rebuild, on the view it was asked for.
    #[serde(default)]
    pub rebuild: Option<Progress>,
}

/// Where a rebuild is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The rebuild's id.
    pub id: String,
    /// Running, switched or failed.
    pub state: State,
    /// Events applied so far.
    pub done: u64,
    /// Events in the lake of the consumer's types when it started.
    pub total: u64,
    /// Events a handler failed on (recorded as faults of the service).
    pub faults: u64,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Once switched: each rebuilt view, its new and previous bucket and the new bucket's
    /// revision at the switch.
    #[serde(default)]
    pub switched: Vec<Switched>,
}

/// A rebuild's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Applying the lake.
    #[default]
    Running,
    /// Done: the views are bound to their new buckets.
    Switched,
    /// Stopped; the views stay where they were.
    Failed,
}

/// One view a rebuild switched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Switched {
    /// The view.
    pub view: String,
    /// Its bucket now.
    pub bucket: String,
    /// Its bucket before.
    pub previous: String,
    /// The new bucket's revision at the switch: later entries changed since.
    pub revision: u64,
}

/// A step the operator's side asks of a service, on [`control_subject`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Request {
    /// Which buckets would a rebuild of `view` write?
    Plan {
        /// The view.
        view: String,
    },
    /// Rebuild `view` into the planned buckets, which exist and are empty.
    Start {
        /// The view.
        view: String,
        /// The rebuild's id.
        id: String,
    },
}

/// A service's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The views a rebuild writes (the view, then its indexes) and their buckets.
    Plan {
        /// Each view's bucket now and the one it would be rebuilt into.
        targets: Vec<Target>,
    },
    /// The rebuild runs; its progress is in the `views` bucket.
    Started,
    /// The service will not do it, and why.
    Refused {
        /// Why.
        reason: String,
    },
}

/// One view a rebuild writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// The view.
    pub view: String,
    /// Its bucket now.
    pub current: String,
    /// The bucket it is rebuilt into.
    pub next: String,
}

/// Where the service whose consumer is `service` takes requests from operators.
pub fn control_prefix(service: &str) -> String {
    format!("fractal.control.{service}")
}

/// The subject on which the service whose consumer is `service` takes rebuild requests.
pub fn control_subject(service: &str) -> String {
    format!("{}.rebuild", control_prefix(service))
}

/// The bucket of view `name` until a rebuild binds it elsewhere.
pub(crate) fn first_bucket(name: &str) -> String {
    format!("view_{name}")
}

/// The bucket a rebuild of view `name`, now in `current`, writes.
pub(crate) fn next_bucket(name: &str, current: &str) -> String {
    let first = first_bucket(name);
    if current == first {
        format!("{first}__b")
    } else {
        first
    }
}

/// The hub's `views` bucket, created if missing.
pub(crate) async fn bindings(hub: &Hub) -> Result<kv::Store, ViewError> {
    let description = format!("Which bucket holds each view of hub `{}`.", hub.name());
    bucket_of(hub, BINDINGS, BINDINGS, &description).await
}

/// What the `views` bucket says about view `name`, if anything.
pub async fn bound(hub: &Hub, name: &str) -> Result<Option<Bound>, ViewError> {
    let store = bindings(hub).await?;
    read_bound(&store, name).await
}

async fn read_bound(store: &kv::Store, name: &str) -> Result<Option<Bound>, ViewError> {
    let ride_out = RideOut::start();
    let bytes = loop {
        match store.get(name).await {
            Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
            read => {
                break read
                    .map_err(|e| ViewError::new(name, "cannot read the view's binding", e))?;
            }
        }
    };
    bytes
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| {
                ViewError::invalid(
                    name,
                    format!("its binding in `{BINDINGS}` is unreadable: {e}"),
                )
            })
        })
        .transpose()
}

/// Writes what the `views` bucket says about view `name`.
pub(crate) async fn write_bound(
    store: &kv::Store,
    name: &str,
    bound: &Bound,
) -> Result<(), ViewError> {
    let bytes = serde_json::to_vec(bound).expect("a binding serializes");
    let ride_out = RideOut::start();
    loop {
        match store.put(name, bytes.clone().into()).await {
            Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
            put => {
                return put
                    .map(|_| ())
                    .map_err(|e| ViewError::new(name, "cannot write the view's binding", e));
            }
        }
    }
}

tokio::task_local! {
    static HANDLING: Handling;
}

/// What the task running a handler is doing: handling the event at `sequence` of the hub's
/// stream, live or for a rebuild.
#[derive(Debug, Clone)]
pub(crate) struct Handling {
    pub(crate) sequence: u64,
    /// For a rebuild: the buckets the rebuilt views are written to, by view.
    pub(crate) rebuild: Option<Arc<HashMap<String, Arc<kv::Store>>>>,
}

impl Handling {
    /// Runs `handler` as this handling.
    pub(crate) async fn scope<F: Future>(self, handler: F) -> F::Output {
        HANDLING.scope(self, handler).await
    }
}

/// The bucket the current task reads a view from, and whether it may write it:
/// - a rebuild's handler reads and writes a rebuilt view in its new bucket, and reads any other
///   view as it is now without writing it;
/// - a live handler writes the view unless its event is one a rebuild applied already;
/// - anything else (a query, a command) reads and writes the view's bucket.
pub(crate) fn route(binding: &Binding) -> (Arc<kv::Store>, bool) {
    HANDLING
        .try_with(|handling| match &handling.rebuild {
            Some(stores) => match stores.get(&binding.name) {
                Some(store) => (store.clone(), true),
                None => (binding.store(), false),
            },
            None => {
                let applied = binding
                    .rebuilt_through
                    .load(std::sync::atomic::Ordering::Acquire);
                (binding.store(), handling.sequence > applied)
            }
        })
        .unwrap_or_else(|_| (binding.store(), true))
}

/// Whether the current task runs a handler for a rebuild, which publishes nothing.
pub(crate) fn rebuilding() -> bool {
    HANDLING
        .try_with(|handling| handling.rebuild.is_some())
        .unwrap_or(false)
}

/// Why a rebuild did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No process of the service answers on the hub.
    #[error("service `{service}` is not running: nothing answers on `{subject}` of hub `{hub}`")]
    NotRunning {
        /// The service.
        service: String,
        /// The hub.
        hub: String,
        /// Where it was asked.
        subject: String,
    },
    /// The service refused.
    #[error("service `{service}` refuses to rebuild view `{view}`: {reason}")]
    Refused {
        /// The service.
        service: String,
        /// The view.
        view: String,
        /// Why.
        reason: String,
    },
    /// The rebuild started and failed; the view stays where it was.
    #[error("the rebuild of view `{view}` failed: {reason}")]
    Failed {
        /// The view.
        view: String,
        /// Why.
        reason: String,
    },
    /// The hub or a bucket could not be used.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The service's answer was not one.
    #[error("service `{service}` answered `{answer}`, which is not a rebuild answer")]
    Garbled {
        /// The service.
        service: String,
        /// What it said.
        answer: String,
    },
}

/// How the entries of a rebuilt view compare with the view before the rebuild.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verified {
    /// The view.
    pub view: String,
    /// Entries alike in both.
    pub same: usize,
    /// Keys whose entries differ (value or time).
    pub differ: Vec<String>,
    /// Keys only the old bucket has.
    pub only_old: Vec<String>,
    /// Keys only the new bucket has.
    pub only_new: Vec<String>,
    /// Keys written after the switch, not compared.
    pub changed_since: usize,
}

/// What a finished rebuild did.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// Its last progress.
    pub progress: Progress,
    /// The comparison of each rebuilt view with what it was.
    pub verified: Vec<Verified>,
}

/// Asks the running service whose consumer is `service` to rebuild view `view` (and its
/// indexes) from the lake, reports progress to `on_progress` about once a second, and
/// compares the result with the view as it was. `hub` must be allowed to create and delete
/// view buckets (the operator's credential).
pub async fn rebuild(
    hub: &Hub,
    service: &str,
    view: &str,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Rebuilt, RebuildError> {
    let plan = ask(
        hub,
        service,
        &Request::Plan {
            view: view.to_owned(),
        },
    )
    .await?;
    let Answer::Plan { targets } = plan else {
        return Err(garbled(service, &plan));
    };
    for target in &targets {
        // What a previous rebuild left: the next bucket starts empty.
        match hub.jetstream().delete_key_value(&target.next).await {
            Ok(_) => {}
            Err(e) if super::missing(&e) => {}
            Err(e) => {
                let message = format!("cannot remove the old bucket `{}`", target.next);
                return Err(ViewError::new(&target.view, message, e).into());
            }
        }
        let description = format!("View `{}` of hub `{}`.", target.view, hub.name());
        bucket_of(hub, &target.view, &target.next, &description).await?;
    }
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let start = Request::Start {
        view: view.to_owned(),
        id: id.clone(),
    };
    match ask(hub, service, &start).await? {
        Answer::Started => {}
        other => return Err(garbled(service, &other)),
    }
    let bindings = bindings(hub).await?;
    let progress = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let progress = read_bound(&bindings, view)
            .await?
            .and_then(|b| b.rebuild)
            .filter(|p| p.id == id);
        let Some(progress) = progress else { continue };
        on_progress(&progress);
        match progress.state {
            State::Running => {}
            State::Switched => break progress,
            State::Failed => {
                return Err(RebuildError::Failed {
                    view: view.to_owned(),
                    reason: progress.error.unwrap_or_else(|| "no reason given".into()),
                });
            }
        }
    };
    let mut verified = Vec::new();
    for switched in &progress.switched {
        verified.push(verify(hub, switched).await?);
    }
    Ok(Rebuilt { progress, verified })
}

/// Asks the service one step; a refusal is an error.
async fn ask(hub: &Hub, service: &str, request: &Request) -> Result<Answer, RebuildError> {
    let subject = control_subject(service);
    let body = serde_json::to_vec(request).expect("a request serializes");
    let asked = tokio::time::timeout(
        ANSWER_TIMEOUT,
        hub.client().request(subject.clone(), body.into()),
    )
    .await;
    let not_running = || RebuildError::NotRunning {
        service: service.to_owned(),
        hub: hub.name().to_owned(),
        subject: subject.clone(),
    };
    let reply = match asked {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(not_running());
        }
        Ok(Err(e)) => {
            let view = match request {
                Request::Plan { view } | Request::Start { view, .. } => view,
            };
            return Err(ViewError::new(view, format!("cannot ask service `{service}`"), e).into());
        }
        Err(_) => return Err(not_running()),
    };
    let answer: Answer =
        serde_json::from_slice(&reply.payload).map_err(|_| RebuildError::Garbled {
            service: service.to_owned(),
            answer: String::from_utf8_lossy(&reply.payload).into_owned(),
        })?;
    match answer {
        Answer::Refused { reason } => Err(RebuildError::Refused {
            service: service.to_owned(),
            view: match request {
                Request::Plan { view } | Request::Start { view, .. } => view.clone(),
            },
            reason,
        }),
        answer => Ok(answer),
    }
}

fn garbled(service: &str, answer: &Answer) -> RebuildError {
    RebuildError::Garbled {
        service: service.to_owned(),
        answer: format!("{answer:?}"),
    }
}

/// Compares a rebuilt view's new bucket, as it was at the switch, with its previous one: by
/// value and event time (an entry's trace and an index's primary revision differ by nature).
async fn verify(hub: &Hub, switched: &Switched) -> Result<Verified, ViewError> {
    let open = |bucket: &str| {
        let description = format!("View `{}` of hub `{}`.", switched.view, hub.name());
        let bucket = bucket.to_owned();
        async move { bucket_of(hub, &switched.view, &bucket, &description).await }
    };
    let old = pass(
        &switched.view,
        &open(&switched.previous).await?,
        hub.client(),
        ">",
    )
    .await?;
    let new = pass(
        &switched.view,
        &open(&switched.bucket).await?,
        hub.client(),
        ">",
    )
    .await?;
    let entry = |bytes: &[u8]| {
        ViewRecord::decode(bytes)
            .ok()
            .filter(|r| !r.removed)
            .map(|r| (r.value, r.time))
    };
    use prost::Message as _;
    let old: HashMap<&String, _> = old
        .iter()
        .filter_map(|(k, (_, bytes))| entry(bytes).map(|e| (k, e)))
        .collect();
    let mut verified = Verified {
        view: switched.view.clone(),
        ..Verified::default()
    };
    let mut seen = std::collections::HashSet::new();
    for (key, (revision, bytes)) in &new {
        seen.insert(key);
        if *revision > switched.revision {
            verified.changed_since += 1;
            continue;
        }
        match (old.get(key), entry(bytes)) {
            (Some(before), Some(now)) if *before == now => verified.same += 1,
            (Some(_), Some(_)) => verified.differ.push(key.clone()),
            (None, Some(_)) => verified.only_new.push(key.clone()),
            (Some(_), None) => verified.only_old.push(key.clone()),
            (None, None) => {}
        }
    }
    let mut only_old: Vec<String> = old
        .keys()
        .filter(|k| !seen.contains(*k))
        .map(|k| (*k).clone())
        .collect();
    only_old.sort();
    verified.only_old.extend(only_old);
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_alternates_between_two_buckets() {
        assert_eq!(first_bucket("orders"), "view_orders");
        assert_eq!(next_bucket("orders", "view_orders"), "view_orders__b");
        assert_eq!(next_bucket("orders", "view_orders__b"), "view_orders");
    }

    #[test]
    fn requests_and_answers_read_as_json() {
        let request: Request =
            serde_json::from_str(r#"{"step":"start","view":"orders","id":"x"}"#).unwrap();
        assert_eq!(
            request,
            Request::Start {
                view: "orders".into(),
                id: "x".into()
            }
        );
        let answer = serde_json::to_string(&Answer::Refused {
            reason: "no".into(),
        })
        .unwrap();
        assert_eq!(answer, r#"{"answer":"refused","reason":"no"}"#);
    }
}
