//! The in-flight window of one consumer session, with no I/O: the source messages being
//! relayed or faulted, in source order, and how much of the stored prefix the source has not
//! been told about yet. The session feeds it deliveries, the target's answers and the fault
//! recorder's results, and does what it says: acknowledge, wait, publish again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, StatusCode, Subject};
use bytes::Bytes;
use fractal::fault::FaultKind;
use serde::Deserialize;

/// Acknowledge the source at least every this many settled messages.
pub(super) const ACK_EVERY: usize = 256;

/// How long the target has to acknowledge a relay before everything unacknowledged is
/// published again.
pub(super) const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The first wait after a relay fails; it doubles on each failure in a row, up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What became of one source message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Relayed { duplicate: bool },
    Skipped,
    Faulted,
}

/// A relayed event as it goes to the target, kept until the target has stored it.
#[derive(Debug)]
pub(super) struct Copy {
    pub(super) subject: Subject,
    pub(super) headers: HeaderMap,
    pub(super) payload: Bytes,
}

/// A delivery that cannot be relayed, to keep on the source hub's fault stream.
#[derive(Debug)]
pub(super) struct Fault {
    pub(super) original: async_nats::Message,
    pub(super) sequence: u64,
    pub(super) deliveries: u64,
    pub(super) kind: FaultKind,
    pub(super) reason: String,
    pub(super) event_type: Option<String>,
}

/// Where one source message is.
#[derive(Debug)]
pub(super) enum State {
    /// Published to the target at `since`; its acknowledgement is awaited.
    Sent {
        copy: Copy,
        since: Instant,
    },
    /// The target refused it, or the publish failed: to publish again.
    Failed {
        copy: Copy,
        error: String,
    },
    /// Being recorded as a fault on the source hub.
    Recording(Arc<Fault>),
    /// The fault could not be recorded: to record again.
    NotRecorded {
        fault: Arc<Fault>,
        error: String,
    },
    Settled(Outcome),
}

/// One source message in flight.
#[derive(Debug)]
struct Slot {
    /// The delivery's reply subject: acknowledging it acknowledges every earlier delivery.
    ack: Option<Subject>,
    state: State,
}

/// The source messages in flight, in source order. Each is numbered; a relay's number is the
/// last token of its publish's reply subject, under `inbox`.
#[derive(Debug)]
pub(super) struct Window {
    slots: VecDeque<Slot>,
    /// The number of the first slot.
    first: u64,
    inbox: String,
    /// The newest settled delivery the source has not been told about.
    stored: Option<Subject>,
    /// How many settled messages that covers.
    unacked: usize,
    retry_delay: Duration,
}

impl Window {
    pub(super) fn new(inbox: String) -> Self {
        Window {
            slots: VecDeque::new(),
            first: 0,
            inbox,
            stored: None,
            unacked: 0,
            retry_delay: FIRST_RETRY_DELAY,
        }
    }

    /// How many messages are in flight.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The subject the target's answers arrive on.
    pub(super) fn answers(&self) -> String {
        format!("{}.*", self.inbox)
    }

    /// The number the next delivery gets.
    pub(super) fn next_number(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    /// The reply subject of the publish numbered `number`.
    pub(super) fn reply(&self, number: u64) -> String {
        format!("{}.{number}", self.inbox)
    }

    /// Adds the next delivery, numbered [`Window::next_number`], with its acknowledgement
    /// subject and where it is.
    pub(super) fn push(&mut self, ack: Option<Subject>, state: State) {
        self.slots.push_back(Slot { ack, state });
    }

    fn slot(&mut self, number: u64) -> Option<&mut Slot> {
        let index = usize::try_from(number.checked_sub(self.first)?).ok()?;
        self.slots.get_mut(index)
    }

    /// Applies the target's answer to the publish numbered by the last token of its subject.
    /// A late answer, to a publish made again and settled already, changes nothing.
    pub(super) fn answer(&mut self, message: &async_nats::Message) {
        let Some(number) = message
            .subject
            .rsplit_once('.')
            .and_then(|(_, number)| number.parse().ok())
        else {
            return;
        };
        let Some(slot) = self.slot(number) else {
            return;
        };
        let answer = publish_answer(message);
        let placeholder = State::Settled(Outcome::Skipped);
        slot.state = match (std::mem::replace(&mut slot.state, placeholder), answer) {
            (State::Sent { .. } | State::Failed { .. }, Ok(duplicate)) => {
                State::Settled(Outcome::Relayed { duplicate })
            }
            (State::Sent { copy, .. } | State::Failed { copy, .. }, Err(error)) => {
                State::Failed { copy, error }
            }
            (state, _) => state,
        };
    }

    /// Applies the fault recorder's result for the message numbered `number`.
    pub(super) fn recorded(&mut self, number: u64, result: Result<(), String>) {
        if let Some(slot) = self.slot(number)
            && let State::Recording(fault) = &slot.state
        {
            slot.state = match result {
                Ok(()) => State::Settled(Outcome::Faulted),
                Err(error) => State::NotRecorded {
                    fault: fault.clone(),
                    error,
                },
            };
        }
    }

    /// Takes every settled message off the front, in order, giving each outcome to `count`;
    /// what they cover is acknowledged by [`Window::ack_due`] or [`Window::take_ack`]. A
    /// message settling ends a run of failures: the next wait is the first again.
    pub(super) fn settle(&mut self, mut count: impl FnMut(Outcome)) {
        while let Some(slot) = self.slots.front() {
            let State::Settled(outcome) = slot.state else {
                return;
            };
            let Some(slot) = self.slots.pop_front() else {
                return;
            };
            self.first += 1;
            count(outcome);
            self.stored = slot.ack.or(self.stored.take());
            self.unacked += 1;
            self.retry_delay = FIRST_RETRY_DELAY;
        }
    }

    /// The delivery to acknowledge now, if it is time: every [`ACK_EVERY`] settled messages,
    /// and whenever nothing is left in flight.
    pub(super) fn ack_due(&mut self) -> Option<Subject> {
        if self.unacked >= ACK_EVERY || (self.unacked > 0 && self.slots.is_empty()) {
            self.take_ack()
        } else {
            None
        }
    }

    /// The delivery that acknowledges everything settled so far, if any is not yet.
    pub(super) fn take_ack(&mut self) -> Option<Subject> {
        self.unacked = 0;
        self.stored.take()
    }

    /// Why the front message cannot settle without help, if it cannot: its relay was refused
    /// or failed, its fault could not be recorded, or the target has not answered in time.
    pub(super) fn stuck(&self, now: Instant) -> Option<String> {
        match &self.slots.front()?.state {
            State::Failed { error, .. } | State::NotRecorded { error, .. } => Some(error.clone()),
            State::Sent { since, .. } if now.duration_since(*since) >= PUBLISH_TIMEOUT => Some(
                format!("no acknowledgement from the target in {PUBLISH_TIMEOUT:?}"),
            ),
            _ => None,
        }
    }

    /// When the front message's publish times out, if it is awaiting one.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.slots.front()?.state {
            State::Sent { since, .. } => Some(*since + PUBLISH_TIMEOUT),
            _ => None,
        }
    }

    /// How long to wait before publishing again; each call doubles the next wait.
    pub(super) fn backoff(&mut self) -> Duration {
        let delay = self.retry_delay;
        self.retry_delay = (delay * 2).min(MAX_RETRY_DELAY);
        delay
    }

    /// The front message's delivery, to keep the source from delivering it again while it
    /// waits.
    pub(super) fn front_ack(&self) -> Option<&Subject> {
        self.slots.front()?.ack.as_ref()
    }

    /// Takes the state of the message at `index` (its number and reply subject with it), to
    /// act on it and [put it back](Window::put).
    pub(super) fn take(&mut self, index: usize) -> (u64, String, State) {
        let number = self.first + index as u64;
        let placeholder = State::Settled(Outcome::Skipped);
        let state = std::mem::replace(&mut self.slots[index].state, placeholder);
        (number, self.reply(number), state)
    }

    /// Puts back the state of the message at `index`.
    pub(super) fn put(&mut self, index: usize, state: State) {
        self.slots[index].state = state;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// What the target answered to a publish: stored (a duplicate or not), or why not.
fn publish_answer(message: &async_nats::Message) -> Result<bool, String> {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        return Err("no stream on the target hub stores the subject".into());
    }
    // The common answer, `{"stream":"EVENTS","seq":42}`, or with `"duplicate": true`, is read
    // without parsing it; anything else is parsed whole.
    let payload = message.payload.as_ref();
    if payload.starts_with(b"{\"stream\":")
        && find(payload, b"\"seq\":").is_some()
        && find(payload, b"\"error\"").is_none()
    {
        return Ok(find(payload, b"\"duplicate\"").is_some_and(|at| {
            let rest = &payload[at + b"\"duplicate\"".len()..];
            let value = rest.trim_ascii_start().strip_prefix(b":").unwrap_or(rest);
            value.trim_ascii_start().starts_with(b"true")
        }));
    }
    /// A stored publish names its stream and sequence; an error has neither.
    #[derive(Deserialize)]
    struct PubAck {
        stream: Option<String>,
        seq: Option<u64>,
        #[serde(default)]
        duplicate: bool,
        error: Option<ApiError>,
    }
    #[derive(Deserialize)]
    struct ApiError {
        #[serde(default)]
        description: String,
        #[serde(default)]
        err_code: u64,
    }
    match serde_json::from_slice::<PubAck>(&message.payload) {
        Ok(PubAck { error: Some(e), .. }) => Err(format!(
            "the target refused it: {} (error {})",
            e.description, e.err_code
        )),
        Ok(PubAck {
            stream: Some(_),
            seq: Some(_),
            duplicate,
            ..
        }) => Ok(duplicate),
        Ok(_) => Err(format!(
            "the answer is not a JetStream acknowledgement: {}",
            String::from_utf8_lossy(&message.payload)
        )),
        Err(e) => Err(format!("unreadable acknowledgement from the target: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = r#"{"stream":"EVENTS","seq":1}"#;
    const DUPLICATE: &str = r#"{"stream":"EVENTS","seq":1,"duplicate": true}"#;
    const REFUSED: &str = r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"EVENTS"}"#;

    fn message(subject: &str, payload: &str) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    fn answer(payload: &str) -> Result<bool, String> {
        publish_answer(&message("_INBOX.x.1", payload))
    }

    fn copy() -> Copy {
        Copy {
            subject: "fractal.events.external.a".into(),
            headers: HeaderMap::new(),
            payload: Bytes::from_static(b"event"),
        }
    }

    fn fault() -> Arc<Fault> {
        Arc::new(Fault {
            original: message("fractal.events.external.a", "not an event"),
            sequence: 1,
            deliveries: 1,
            kind: FaultKind::Malformed,
            reason: "not an event".into(),
            event_type: None,
        })
    }

    /// A window with `n` relays sent at `since`, acknowledged by deliveries `d0`, `d1`, ….
    fn sent(n: u64, since: Instant) -> Window {
        let mut window = Window::new("_INBOX.r".into());
        for i in 0..n {
            assert_eq!(window.next_number(), i);
            let state = State::Sent {
                copy: copy(),
                since,
            };
            window.push(Some(format!("d{i}").into()), state);
        }
        window
    }

    /// Settles what can be, returning the outcomes in order.
    fn settle(window: &mut Window) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        window.settle(|outcome| outcomes.push(outcome));
        outcomes
    }

    fn ack(subject: Option<Subject>) -> Option<String> {
        subject.map(|s| s.to_string())
    }

    /// The answers as nats-server 2.15 writes them.
    #[test]
    fn publish_answers_are_read() {
        assert_eq!(answer(STORED), Ok(false));
        assert_eq!(answer(DUPLICATE), Ok(true));
        assert_eq!(
            answer(r#"{"stream":"EVENTS","domain":"hub","seq":7,"duplicate":true}"#),
            Ok(true)
        );
        let refused = answer(REFUSED);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("maximum messages exceeded (error 10077)")),
            "{refused:?}"
        );
        assert!(answer("not json").is_err());
        // Something else answering on the subject is not the target storing it.
        assert!(answer("{}").is_err());
        assert!(answer(r#"{"ok":true}"#).is_err());
    }

    #[test]
    fn answers_out_of_order_settle_in_source_order() {
        let mut window = sent(3, Instant::now());
        assert_eq!(window.reply(2), "_INBOX.r.2");
        window.answer(&message("_INBOX.r.2", STORED));
        window.answer(&message("_INBOX.r.1", STORED));
        // The first is unanswered: nothing settles, nothing is acknowledged.
        assert!(settle(&mut window).is_empty());
        assert_eq!(ack(window.ack_due()), None);
        assert_eq!(window.len(), 3);

        window.answer(&message("_INBOX.r.0", STORED));
        assert_eq!(
            settle(&mut window),
            [Outcome::Relayed { duplicate: false }; 3]
        );
        // Nothing left in flight: the last delivery acknowledges all three.
        assert_eq!(ack(window.ack_due()), Some("d2".into()));
        assert_eq!(ack(window.ack_due()), None);
        assert_eq!(window.next_number(), 3);
    }

    #[test]
    fn duplicates_settle_as_such_and_late_answers_change_nothing() {
        let mut window = sent(2, Instant::now());
        window.answer(&message("_INBOX.r.0", DUPLICATE));
        assert_eq!(settle(&mut window), [Outcome::Relayed { duplicate: true }]);
        // Answers to a settled number, twice over, or not numbered at all.
        window.answer(&message("_INBOX.r.0", REFUSED));
        window.answer(&message("_INBOX.r.0", STORED));
        window.answer(&message("_INBOX.r.x", STORED));
        window.answer(&message("_INBOX.r.9", STORED));
        assert_eq!(window.len(), 1);
        window.answer(&message("_INBOX.r.1", STORED));
        window.answer(&message("_INBOX.r.1", DUPLICATE));
        assert_eq!(settle(&mut window), [Outcome::Relayed { duplicate: false }]);
        assert_eq!(ack(window.ack_due()), Some("d1".into()));
    }

    #[test]
    fn a_refused_front_relay_holds_the_window_until_it_is_stored() {
        let now = Instant::now();
        let mut window = sent(3, now);
        window.answer(&message("_INBOX.r.0", STORED));
        window.answer(&message("_INBOX.r.1", REFUSED));
        window.answer(&message("_INBOX.r.2", STORED));
        assert_eq!(settle(&mut window), [Outcome::Relayed { duplicate: false }]);
        let stuck = window.stuck(now).expect("stuck on the refusal");
        assert!(stuck.contains("maximum messages exceeded"), "{stuck}");
        // What was stored before it can be acknowledged; nothing after it.
        assert_eq!(ack(window.take_ack()), Some("d0".into()));
        assert_eq!(window.front_ack().map(|s| s.to_string()), Some("d1".into()));
        // The waits double, up to their limit.
        let waits: Vec<u64> = (0..8)
            .map(|_| window.backoff().as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);

        // Published again: the target stores it this time.
        let (number, reply, state) = window.take(0);
        assert_eq!((number, reply.as_str()), (1, "_INBOX.r.1"));
        let State::Failed { copy, .. } = state else {
            panic!("not failed: {state:?}");
        };
        window.put(0, State::Sent { copy, since: now });
        assert_eq!(window.stuck(now), None);
        window.answer(&message("_INBOX.r.1", STORED));
        assert_eq!(settle(&mut window).len(), 2);
        assert_eq!(ack(window.ack_due()), Some("d2".into()));
        // Settling ended the run of failures.
        assert_eq!(window.backoff(), FIRST_RETRY_DELAY);
    }

    #[test]
    fn an_unanswered_relay_times_out() {
        let since = Instant::now();
        let window = sent(2, since);
        assert_eq!(window.deadline(), Some(since + PUBLISH_TIMEOUT));
        assert_eq!(window.stuck(since + PUBLISH_TIMEOUT / 2), None);
        let stuck = window.stuck(since + PUBLISH_TIMEOUT).expect("timed out");
        assert!(stuck.contains("no acknowledgement"), "{stuck}");
    }

    #[test]
    fn faults_settle_in_their_place_and_a_failed_record_holds_the_window() {
        let now = Instant::now();
        let mut window = Window::new("_INBOX.r".into());
        window.push(Some("d0".into()), State::Recording(fault()));
        window.push(Some("d1".into()), State::Settled(Outcome::Skipped));
        window.push(Some("d2".into()), State::Recording(fault()));
        window.recorded(2, Ok(()));
        assert!(
            settle(&mut window).is_empty(),
            "the first fault is not recorded yet"
        );
        window.recorded(0, Err("cannot record fault: no stream".into()));
        assert_eq!(
            window.stuck(now).as_deref(),
            Some("cannot record fault: no stream")
        );
        let (_, _, State::NotRecorded { fault, .. }) = window.take(0) else {
            panic!("not to record again");
        };
        window.put(0, State::Recording(fault));
        window.recorded(0, Ok(()));
        // A result for a message that is not being recorded changes nothing.
        window.recorded(1, Err("stale".into()));
        assert_eq!(
            settle(&mut window),
            [Outcome::Faulted, Outcome::Skipped, Outcome::Faulted]
        );
        assert_eq!(ack(window.ack_due()), Some("d2".into()));
    }

    #[test]
    fn the_source_is_acknowledged_every_so_often_while_relays_go_on() {
        let mut window = sent(ACK_EVERY as u64 + 2, Instant::now());
        for number in 0..ACK_EVERY as u64 {
            window.answer(&message(&window.reply(number), STORED));
        }
        assert_eq!(settle(&mut window).len(), ACK_EVERY);
        assert_eq!(window.len(), 2, "two still in flight");
        assert_eq!(ack(window.ack_due()), Some(format!("d{}", ACK_EVERY - 1)));
    }

    #[test]
    fn draining_at_shutdown_acknowledges_only_the_stored_prefix() {
        let mut window = sent(4, Instant::now());
        window.answer(&message("_INBOX.r.0", STORED));
        window.answer(&message("_INBOX.r.1", DUPLICATE));
        window.answer(&message("_INBOX.r.3", STORED));
        settle(&mut window);
        // Shutdown: what is settled is acknowledged; the rest is left to be delivered again
        // (the target drops the copies it has as duplicates).
        assert_eq!(ack(window.take_ack()), Some("d1".into()));
        assert_eq!(window.len(), 2);
        assert_eq!(ack(window.take_ack()), None);
    }
}
