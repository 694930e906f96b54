//! `fractal lake export`: a hub's event lake, or part of it, as JSON lines for analytics. It
//! reads through an ordered consumer from where the range starts and stops at the last event
//! stored when the export began, so its memory stays the same however much the lake holds.

use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use fractal::{Event, Hub};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::events::{chrono_like::Rfc3339, payload_json};
use fractal_bridge::Contracts;

/// One end of a range of the lake: a stream sequence, or a time the hub stored events at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// A sequence of the hub's event stream.
    Sequence(u64),
    /// A time, RFC 3339.
    Time(time::OffsetDateTime),
}

impl std::str::FromStr for Bound {
    type Err = String;

    fn from_str(text: &str) -> Result<Bound, String> {
        if let Ok(sequence) = text.parse::<u64>() {
            return Ok(Bound::Sequence(sequence));
        }
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map(Bound::Time)
            .map_err(|_| {
                format!(
                    "`{text}` is neither a stream sequence (42) nor an RFC 3339 time \
                     (2026-11-01T00:00:00Z)"
                )
            })
    }
}

/// A part of the lake, as `fractal lake export` and `fractal replay` take it.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Range {
    /// Only these event types (comma-separated); default: every type.
    #[arg(long, value_delimiter = ',')]
    pub(crate) types: Vec<String>,
    /// From this stream sequence (42) or storage time (2026-11-01T00:00:00Z) on.
    #[arg(long)]
    pub(crate) from: Option<Bound>,
    /// Up to and including this stream sequence or storage time.
    #[arg(long)]
    pub(crate) until: Option<Bound>,
}

impl Range {
    /// Checks the range on its own, before the hub is asked.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        for event_type in &self.types {
            fractal::wire::check_name(event_type)
                .map_err(|e| anyhow::anyhow!("--types: event type {e}"))?;
        }
        let before = match (self.from, self.until) {
            (Some(Bound::Sequence(from)), Some(Bound::Sequence(until))) => until < from,
            (Some(Bound::Time(from)), Some(Bound::Time(until))) => until < from,
            _ => false,
        };
        if before {
            bail!("--until is before --from: the range holds nothing");
        }
        Ok(())
    }

    fn includes(&self, sequence: u64, stored: time::OffsetDateTime) -> bool {
        match self.until {
            Some(Bound::Sequence(until)) => sequence <= until,
            Some(Bound::Time(until)) => stored <= until,
            None => true,
        }
    }
}

/// One exported event: the envelope's fields, the payload in protobuf's JSON mapping, and
/// where the hub stored it.
fn json_line(
    contracts: &Contracts,
    sequence: u64,
    stored: time::OffsetDateTime,
    event: &Event,
) -> serde_json::Value {
    let payload = payload_json(contracts, &event.payload_type, &event.payload);
    let payload: serde_json::Value =
        serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
    serde_json::json!({
        "sequence": sequence,
        "stored_at": Rfc3339::from(SystemTime::from(stored)).to_string(),
        "id": event.id,
        "type": event.event_type,
        "scope": event.scope.token(),
        "time": Rfc3339::from(event.time).to_string(),
        "key": event.key,
        "source": event.source,
        "origin": event.origin,
        "path": event.path,
        "tags": event.tags,
        "payload_type": event.payload_type,
        "payload": payload,
        "replay": event.replay,
    })
}

/// The events of a range of a hub's lake, in stream order, from where the range starts to
/// the last event stored when the reading began.
pub(crate) struct Reading {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    range: Range,
    /// The first sequence the reading may return.
    pub(crate) start: u64,
    /// The last sequence it may return.
    pub(crate) last: u64,
    done: bool,
}

impl Reading {
    /// The next message of the range with its stream sequence and storage time; `None` at
    /// the end of the range.
    pub(crate) async fn next(
        &mut self,
    ) -> anyhow::Result<Option<(async_nats::jetstream::Message, u64, time::OffsetDateTime)>> {
        while !self.done {
            // Nothing for 5 s: the hub is slow, wait on.
            let Ok(next) = tokio::time::timeout(Duration::from_secs(5), self.messages.next()).await
            else {
                continue;
            };
            let message = match next {
                Some(message) => message.context("reading the event stream")?,
                None => bail!("the hub closed the stream"),
            };
            let info = message
                .info()
                .map_err(|e| anyhow::anyhow!("a message without its metadata: {e}"))?;
            let (sequence, stored) = (info.stream_sequence, info.published);
            if sequence > self.last || !self.range.includes(sequence, stored) {
                break;
            }
            self.done = info.pending == 0 || sequence == self.last;
            return Ok(Some((message, sequence, stored)));
        }
        self.done = true;
        Ok(None)
    }
}

/// Starts reading `range` of `hub`'s lake, only `subjects` if any are given (else the
/// range's types), from sequence `resume` if given (a reading taken up again). An error names
/// what the hub holds if the range holds nothing.
pub(crate) async fn read(
    hub: &Hub,
    range: &Range,
    subjects: Vec<String>,
    resume: Option<u64>,
) -> anyhow::Result<Reading> {
    range.check()?;
    let mut stream = hub
        .jetstream()
        .get_stream(hub.events_stream())
        .await
        .with_context(|| format!("hub `{}` has no event stream", hub.name()))?;
    let state = stream
        .info()
        .await
        .context("cannot read the event stream")?
        .state
        .clone();
    let (first, last) = (state.first_sequence, state.last_sequence);
    let span = || {
        format!(
            "hub `{}` stores sequences {first} to {last}, from {} to {}",
            hub.name(),
            Rfc3339::from(SystemTime::from(state.first_timestamp)),
            Rfc3339::from(SystemTime::from(state.last_timestamp))
        )
    };
    let nothing = |why: &str| anyhow::anyhow!("nothing in that range: {why}; {}", span());
    if state.messages == 0 {
        return Err(nothing("the lake is empty"));
    }
    let deliver_policy = match (resume, range.from) {
        (Some(next), _) => DeliverPolicy::ByStartSequence {
            start_sequence: next.max(first),
        },
        (None, None) => DeliverPolicy::All,
        (None, Some(Bound::Sequence(from))) if from > last => {
            return Err(nothing(&format!("--from {from} is past the last event")));
        }
        (None, Some(Bound::Sequence(from))) => DeliverPolicy::ByStartSequence {
            start_sequence: from.max(first),
        },
        (None, Some(Bound::Time(from))) if from > state.last_timestamp => {
            return Err(nothing("--from is after the last event was stored"));
        }
        (None, Some(Bound::Time(start_time))) => DeliverPolicy::ByStartTime { start_time },
    };
    let start = match (resume, range.from) {
        (Some(next), _) => next.max(first),
        (None, Some(Bound::Sequence(from))) => from.max(first),
        _ => first,
    };
    if range.until.is_some_and(|until| match until {
        Bound::Sequence(until) => until < first,
        Bound::Time(until) => until < state.first_timestamp,
    }) {
        return Err(nothing("--until is before the first event"));
    }
    let filter_subjects = if subjects.is_empty() {
        range
            .types
            .iter()
            .map(|t| fractal::wire::event_filter(t))
            .collect()
    } else {
        subjects
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("cannot read the event stream")?;
    let matching = consumer.cached_info().num_pending;
    if matching == 0 && resume.is_none() {
        return Err(nothing("no event in that range matches"));
    }
    let messages = consumer
        .messages()
        .await
        .context("cannot read the event stream")?;
    Ok(Reading {
        messages,
        range: range.clone(),
        start,
        last,
        done: matching == 0,
    })
}

/// Writes the events of `range` on `hub` to `out` as JSON lines, with progress on stderr;
/// returns how many it wrote. A message that is not a well-formed event is written too, as
/// its sequence, subject and what is wrong with it: an export loses nothing.
pub(crate) async fn export(
    hub: &Hub,
    contracts: &Contracts,
    range: &Range,
    out: &mut dyn Write,
    shutdown: CancellationToken,
) -> anyhow::Result<u64> {
    let mut reading = read(hub, range, Vec::new(), None).await?;
    let mut progress = Progress::new("exported", reading.start, reading.last);
    let mut written = 0u64;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = reading.next() => next?,
        };
        let Some((message, sequence, stored)) = next else {
            break;
        };
        let line = match Event::decode(
            &message.subject,
            message.headers.as_ref(),
            message.payload.clone(),
        ) {
            Ok(event) => json_line(contracts, sequence, stored, &event),
            Err(e) => serde_json::json!({
                "sequence": sequence,
                "subject": message.subject.as_str(),
                "malformed": e.to_string(),
            }),
        };
        writeln!(out, "{line}").context("cannot write the export")?;
        written += 1;
        progress.show(sequence, written);
    }
    out.flush().context("cannot write the export")?;
    progress.done(written);
    Ok(written)
}

/// Progress on stderr: redrawn in place on a terminal, a plain line every 5 s otherwise.
pub(crate) struct Progress {
    what: &'static str,
    start: u64,
    last: u64,
    began: Instant,
    shown: Instant,
    terminal: bool,
}

impl Progress {
    /// Progress of `what` (`exported`) over sequences `start` to `last`.
    pub(crate) fn new(what: &'static str, start: u64, last: u64) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            start,
            last,
            began: now,
            shown: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// `written` events so far, the last at `sequence`.
    pub(crate) fn show(&mut self, sequence: u64, written: u64) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.shown.elapsed() < every {
            return;
        }
        self.shown = Instant::now();
        let span = (self.last - self.start + 1) as f64;
        let done = (sequence - self.start + 1) as f64 / span;
        let rate = written as f64 / self.began.elapsed().as_secs_f64().max(0.001);
        let eta = self.began.elapsed().as_secs_f64() * (1.0 - done) / done.max(0.0001);
        let text = format!(
            "{} {written} events, sequence {sequence} of {}, {:.0}%, {rate:.0}/s, about {eta:.0}s left",
            self.what,
            self.last,
            done * 100.0
        );
        if self.terminal {
            eprint!("\r\x1b[2K{text}");
        } else {
            eprintln!("{text}");
        }
    }

    /// The end: `written` events in all.
    pub(crate) fn done(&self, written: u64) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        let mut what = self.what.to_owned();
        what[..1].make_ascii_uppercase();
        eprintln!(
            "{what} {written} events in {:.1}s.",
            self.began.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_sequences_or_times_and_a_range_must_not_end_before_it_starts() {
        assert_eq!("42".parse::<Bound>(), Ok(Bound::Sequence(42)));
        assert!(matches!(
            "2026-11-01T00:00:00Z".parse::<Bound>(),
            Ok(Bound::Time(_))
        ));
        let error = "yesterday".parse::<Bound>().unwrap_err();
        assert!(error.contains("`yesterday` is neither"), "{error}");
        let range = Range {
            from: Some(Bound::Sequence(10)),
            until: Some(Bound::Sequence(9)),
            ..Range::default()
        };
        assert!(
            range
                .check()
                .unwrap_err()
                .to_string()
                .contains("--until is before --from")
        );
        let range = Range {
            types: vec!["Order Placed".into()],
            ..Range::default()
        };
        assert!(range.check().unwrap_err().to_string().contains("--types"));
    }
}
