//! `fractal replay`: events of a hub's lake delivered again to one durable consumer (a
//! service's, or a bridge route's), and to no other.
//!
//! A replay publishes a copy of each selected event to the same subject, in stream order,
//! marked for its consumer alone (`Fractal-Resubmit-For`, as a resubmitted fault is) and as a
//! replay (`Fractal-Replay: <id>`): every other consumer and route acknowledges it unhandled,
//! the consumer handles it with its normal runtime (lanes keep each key in order, retries,
//! faults), and a service that causes outside effects skips replays (`replays = "skip"`).
//! Each copy's message id is `replay:<id>:<sequence>`, so a replay taken up again after an
//! interruption stores each copy once. Its progress is kept in the hub's `replays` bucket:
//! the same command continues where it stopped; `fractal replay list` and `cancel` show and
//! stop replays.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::kv;
use fractal::{Hub, wire};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::lake::{self, Progress, Range};

/// The bucket that keeps each replay's progress.
const BUCKET: &str = "replays";
/// How many copies may await the hub's acknowledgement at once.
const WINDOW: usize = 256;
/// How often progress is recorded (and a cancel noticed).
const CHECKPOINT: Duration = Duration::from_millis(500);

/// What to replay.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The durable consumer that gets the events.
    pub(crate) durable: String,
    /// Which events, by type and sequence or time.
    pub(crate) range: Range,
    /// Only events of these partition keys, if any.
    pub(crate) keys: Vec<String>,
    /// At most this many events per second.
    pub(crate) rate: Option<u32>,
}

/// A replay as its bucket keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    durable: String,
    /// The request, as text: how the same command finds it again.
    request: String,
    /// The next stream sequence to consider.
    next: u64,
    /// The last stream sequence it covers.
    last: u64,
    /// Copies stored so far.
    replayed: u64,
    /// `running` (or interrupted), `done` or `cancelled`.
    state: String,
}

impl Request {
    fn describe(&self) -> String {
        format!(
            "to={} types={} from={:?} until={:?} keys={} rate={:?}",
            self.durable,
            self.range.types.join(","),
            self.range.from,
            self.range.until,
            self.keys.join(","),
            self.rate
        )
    }
}

async fn bucket(hub: &Hub) -> anyhow::Result<kv::Store> {
    match hub.jetstream().get_key_value(BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => hub
            .jetstream()
            .create_key_value(kv::Config {
                bucket: BUCKET.into(),
                description: "The progress of each replay (fractal replay).".into(),
                history: 1,
                num_replicas: hub.replicas(),
                ..Default::default()
            })
            .await
            .context("cannot create the replays bucket"),
    }
}

async fn records(store: &kv::Store) -> anyhow::Result<Vec<Record>> {
    let mut keys = store.keys().await.context("cannot list replays")?;
    let mut records = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.context("cannot list replays")?;
        if let Some(value) = store.get(&key).await.context("cannot read a replay")?
            && let Ok(record) = serde_json::from_slice::<Record>(&value)
        {
            records.push(record);
        }
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(records)
}

async fn save(store: &kv::Store, record: &Record) -> anyhow::Result<()> {
    store
        .put(&record.id, serde_json::to_vec(record)?.into())
        .await
        .context("cannot record the replay's progress")?;
    Ok(())
}

/// The consumer `durable` on `hub`, checked: it exists, it is being pulled from (its service
/// or bridge runs), and it handles every type asked for. Returns the subjects to replay.
async fn target(hub: &Hub, request: &Request) -> anyhow::Result<Vec<String>> {
    let stream = hub
        .jetstream()
        .get_stream(hub.events_stream())
        .await
        .with_context(|| format!("hub `{}` has no event stream", hub.name()))?;
    let durable = &request.durable;
    let info = match stream.consumer_info(durable).await {
        Ok(info) => info.clone(),
        Err(_) => {
            let mut names = stream.consumer_names();
            let mut known = Vec::new();
            while let Some(Ok(name)) = names.next().await {
                known.push(name);
            }
            known.sort();
            bail!(
                "hub `{}` has no consumer `{durable}` (consumers: {})",
                hub.name(),
                known.join(", ")
            );
        }
    };
    let mut filters = info.config.filter_subjects.clone();
    if !info.config.filter_subject.is_empty() {
        filters.push(info.config.filter_subject.clone());
    }
    let handled: BTreeSet<String> = filters
        .iter()
        .filter_map(|f| f.rsplit_once("*.").map(|(_, t)| t.to_owned()))
        .collect();
    for event_type in &request.range.types {
        if !handled.is_empty() && !handled.contains(event_type) {
            bail!(
                "consumer `{durable}` does not handle `{event_type}` (it handles: {})",
                handled.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    // A running consumer has a pull request waiting or messages in hand; look twice, as
    // one may be between pulls.
    let mut running = info.num_waiting > 0 || info.num_ack_pending > 0;
    if !running {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = stream
            .consumer_info(durable)
            .await
            .context("cannot read the consumer")?;
        running = again.num_waiting > 0 || again.num_ack_pending > 0;
    }
    if !running {
        bail!(
            "consumer `{durable}` on hub `{}` is not running (nothing pulls from it): start its \
             service or bridge first",
            hub.name()
        );
    }
    Ok(if request.range.types.is_empty() {
        filters
    } else {
        request
            .range
            .types
            .iter()
            .map(|t| wire::event_filter(t))
            .collect()
    })
}

/// Counts what a replay would deliver, by type, with the keys it covers; touches nothing.
pub(crate) async fn dry_run(hub: &Hub, request: &Request) -> anyhow::Result<String> {
    let subjects = target(hub, request).await?;
    let mut reading = lake::read(hub, &request.range, subjects, None).await?;
    let keys: HashSet<&str> = request.keys.iter().map(String::as_str).collect();
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen_keys: BTreeSet<String> = BTreeSet::new();
    let mut span = None;
    while let Some((message, sequence, _)) = reading.next().await? {
        if is_copy(&message) {
            continue;
        }
        let header = |name| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let key = header(wire::KEY);
        if !keys.is_empty() && !keys.contains(key.as_str()) {
            continue;
        }
        *by_type.entry(header(wire::TYPE)).or_default() += 1;
        seen_keys.insert(key);
        let (first, _) = span.unwrap_or((sequence, sequence));
        span = Some((first, sequence));
    }
    let total: u64 = by_type.values().sum();
    let mut out = format!(
        "Would replay {total} events to `{}` on hub `{}`",
        request.durable,
        hub.name()
    );
    if let Some((first, last)) = span {
        out.push_str(&format!(" (sequences {first} to {last})"));
    }
    out.push_str(":\n");
    for (event_type, count) in &by_type {
        out.push_str(&format!("  {event_type:<30} {count}\n"));
    }
    match (seen_keys.first(), seen_keys.last()) {
        (Some(first), Some(last)) => out.push_str(&format!(
            "  {} keys, from `{first}` to `{last}`\n",
            seen_keys.len()
        )),
        _ => out.push_str("  no key\n"),
    }
    Ok(out)
}

/// Runs the replay `request` on `hub`, or takes up the unfinished one made by the same
/// command; returns its id and how many copies it stored. Stops early, resumable, on
/// `shutdown`.
pub(crate) async fn run(
    hub: &Hub,
    request: &Request,
    shutdown: CancellationToken,
) -> anyhow::Result<(String, u64)> {
    let subjects = target(hub, request).await?;
    let store = bucket(hub).await?;
    let described = request.describe();
    let resumed = records(&store)
        .await?
        .into_iter()
        .find(|r| r.request == described && r.state == "running");
    let mut reading = lake::read(
        hub,
        &request.range,
        subjects,
        resumed.as_ref().map(|r| r.next),
    )
    .await?;
    let mut record = match resumed {
        Some(record) => {
            eprintln!(
                "Taking up replay {} at sequence {} ({} events replayed so far).",
                record.id, record.next, record.replayed
            );
            record
        }
        None => {
            let record = Record {
                id: ulid::Ulid::new().to_string(),
                durable: request.durable.clone(),
                request: described,
                next: reading.start,
                last: reading.last,
                replayed: 0,
                state: "running".into(),
            };
            eprintln!(
                "Replay {} to `{}` on hub `{}`: sequences {} to {}.",
                record.id,
                record.durable,
                hub.name(),
                record.next,
                record.last
            );
            record
        }
    };
    save(&store, &record).await?;
    let keys: HashSet<&str> = request.keys.iter().map(String::as_str).collect();
    let mut progress = Progress::new("replayed", reading.start, record.last);
    let mut pending: VecDeque<(u64, PublishAckFuture)> = VecDeque::new();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut checkpoint = Instant::now();
    let mut cancelled = false;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = reading.next() => next?,
        };
        let Some((message, sequence, _)) = next else {
            break;
        };
        let key_matches = !is_copy(&message)
            && (keys.is_empty()
                || message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(wire::KEY))
                    .is_some_and(|k| keys.contains(k.as_str())));
        if key_matches {
            if let Some(rate) = request.rate {
                let due = started + Duration::from_secs_f64(sent as f64 / f64::from(rate.max(1)));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
            let mut headers = message.headers.clone().unwrap_or_default();
            headers.insert(wire::MSG_ID, wire::replay_id(&record.id, sequence).as_str());
            headers.insert(wire::RESUBMIT_FOR, record.durable.as_str());
            headers.insert(wire::REPLAY, record.id.as_str());
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .headers(headers)
                .payload(message.payload.clone());
            let ack = hub
                .jetstream()
                .send_publish(message.subject.clone(), publish)
                .await
                .context("cannot publish a replayed event")?;
            pending.push_back((sequence, ack));
            sent += 1;
        }
        if pending.len() >= WINDOW {
            settle(&mut pending, &mut record, WINDOW / 2).await?;
        }
        if checkpoint.elapsed() >= CHECKPOINT {
            settle(&mut pending, &mut record, 0).await?;
            record.next = record.next.max(sequence + 1);
            progress.show(sequence, record.replayed);
            if let Some(current) = store.get(&record.id).await.ok().flatten()
                && serde_json::from_slice::<Record>(&current)
                    .is_ok_and(|current| current.state == "cancelled")
            {
                cancelled = true;
                break;
            }
            save(&store, &record).await?;
            checkpoint = Instant::now();
        } else if pending.is_empty() {
            record.next = record.next.max(sequence + 1);
        }
    }
    settle(&mut pending, &mut record, 0).await?;
    progress.done(record.replayed);
    record.state = if cancelled {
        "cancelled".into()
    } else if shutdown.is_cancelled() {
        eprintln!(
            "Interrupted at sequence {}; the same command takes it up again.",
            record.next
        );
        "running".into()
    } else {
        record.next = record.last + 1;
        "done".into()
    };
    save(&store, &record).await?;
    Ok((record.id, record.replayed))
}

/// Waits for the oldest copies' acknowledgements until at most `keep` are pending, counting
/// those stored and moving the record past them.
async fn settle(
    pending: &mut VecDeque<(u64, PublishAckFuture)>,
    record: &mut Record,
    keep: usize,
) -> anyhow::Result<()> {
    while pending.len() > keep {
        let Some((sequence, ack)) = pending.pop_front() else {
            break;
        };
        let ack = ack
            .await
            .with_context(|| format!("the hub did not store the copy of sequence {sequence}"))?;
        if !ack.duplicate {
            record.replayed += 1;
        }
        record.next = record.next.max(sequence + 1);
    }
    Ok(())
}

/// Whether `message` is itself a copy made for one consumer (a replay or a resubmitted
/// fault): never replayed again.
fn is_copy(message: &async_nats::jetstream::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(wire::RESUBMIT_FOR).is_some())
}

/// Every replay the hub keeps, one line each.
pub(crate) async fn list(hub: &Hub) -> anyhow::Result<String> {
    let store = bucket(hub).await?;
    let records = records(&store).await?;
    if records.is_empty() {
        return Ok("No replays.\n".into());
    }
    let mut out = String::new();
    for r in records {
        out.push_str(&format!(
            "{}  {:<9}  to {:<24} {} replayed, next sequence {} of {}\n",
            r.id, r.state, r.durable, r.replayed, r.next, r.last
        ));
    }
    Ok(out)
}

/// Marks replay `id` cancelled; a running one stops at its next checkpoint.
pub(crate) async fn cancel(hub: &Hub, id: &str) -> anyhow::Result<()> {
    let store = bucket(hub).await?;
    let Some(value) = store.get(id).await.context("cannot read the replay")? else {
        bail!("hub `{}` has no replay `{id}`", hub.name());
    };
    let mut record: Record = serde_json::from_slice(&value).context("a replay record")?;
    record.state = "cancelled".into();
    save(&store, &record).await
}
