//! Events as they travel: [`NewEvent`] is what a service publishes, [`Event`] is what a handler
//! receives. Both map onto the wire as a protobuf [`Envelope`] body plus the headers of
//! [`crate::wire`], so that routing and tracing never need to decode the body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use prost::Message as _;
use ulid::Ulid;

use crate::proto::Envelope;
use crate::wire::{self, Scope};
use fractal_protowire::{Reader, WireError, WireType};

/// An id made from `parts` (an aggregate id and a step, say) and a time in milliseconds: the
/// same for the same inputs, so an event published under it twice (by a retried command, or
/// two at once) is stored once. Its random bits are FNV-1a hashes, stable across builds,
/// unlike the standard library's hasher.
pub fn stable_id(millis: u64, parts: &[&str]) -> Ulid {
    let fnv = |basis: u64| {
        let mut hash = basis;
        for (i, part) in parts.iter().enumerate() {
            let separator = (i > 0).then_some(0u8);
            for byte in separator.into_iter().chain(part.bytes()) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hash
    };
    let random =
        (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x6c62_272e_07bb_0142));
    Ulid::from_parts(millis, random)
}

/// An event to publish: a typed payload with its type, partition key and scope.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use fractal::NewEvent;
/// use fractal::proto::Header;
///
/// let payload = Header { name: "colour".into(), value: "blue".into() };
/// // Internal: only the subsystem's own services see it.
/// let changed = NewEvent::new("setting.changed", "colour", &payload);
/// // External: a contract that bridges may relay to other hubs; when it happened, if not
/// // now, and tags that travel with it.
/// let published = NewEvent::external("setting.published", "colour", &payload)
///     .at(SystemTime::now() - Duration::from_secs(60))
///     .tag("tenant", "north");
/// # let _ = (changed, published);
/// ```
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub(crate) id: Ulid,
    pub(crate) scope: Scope,
    pub(crate) event_type: String,
    pub(crate) key: String,
    pub(crate) time: SystemTime,
    pub(crate) tags: HashMap<String, String>,
    pub(crate) payload_type: String,
    pub(crate) payload: Bytes,
}

impl NewEvent {
    /// An internal event of `event_type` about the aggregate `key`, carrying `payload`.
    pub fn new<M: prost::Name>(event_type: &str, key: impl Into<String>, payload: &M) -> Self {
        Self::from_parts(
            Scope::Internal,
            event_type,
            key,
            M::full_name(),
            payload.encode_to_vec().into(),
        )
    }

    /// An external event (a contract that bridges may relay to other hubs).
    pub fn external<M: prost::Name>(event_type: &str, key: impl Into<String>, payload: &M) -> Self {
        Self::new(event_type, key, payload).scope(Scope::External)
    }

    /// An event whose payload is already encoded; `payload_type` is its fully qualified
    /// message name. Used by tools that publish simulated events from JSON.
    pub fn from_parts(
        scope: Scope,
        event_type: &str,
        key: impl Into<String>,
        payload_type: impl Into<String>,
        payload: Bytes,
    ) -> Self {
        Self {
            id: Ulid::new(),
            scope,
            event_type: event_type.to_owned(),
            key: key.into(),
            time: SystemTime::now(),
            tags: HashMap::new(),
            payload_type: payload_type.into(),
            payload,
        }
    }

    /// Sets the scope: only the platform does, so that an event's scope is its contract's.
    pub(crate) fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Sets the time the fact happened (default: now).
    pub fn at(mut self, time: SystemTime) -> Self {
        self.time = time;
        self
    }

    /// Sets the id. Publishing twice with the same id stores the event once.
    pub fn with_id(mut self, id: Ulid) -> Self {
        self.id = id;
        self
    }

    /// Adds a free label.
    pub fn tag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(name.into(), value.into());
        self
    }

    /// The event's id.
    pub fn id(&self) -> Ulid {
        self.id
    }

    /// The subject the event is published on.
    pub fn subject(&self) -> String {
        wire::event_subject(self.scope, &self.event_type)
    }

    /// Encodes the event as a body and the headers every hub expects, as published by `source`
    /// into `hub`.
    pub(crate) fn encode(self, source: &str, hub: &str) -> (HeaderMap, Bytes) {
        let id = self.id.to_string();
        let mut headers = HeaderMap::new();
        headers.insert(wire::MSG_ID, id.as_str());
        headers.insert(wire::TYPE, self.event_type.as_str());
        headers.insert(wire::KEY, self.key.as_str());
        headers.insert(wire::ORIGIN, hub);
        headers.insert(wire::PATH, hub);
        let envelope = Envelope {
            id,
            r#type: self.event_type,
            time: Some(self.time.into()),
            partition_key: self.key,
            source: source.to_owned(),
            tags: self.tags,
            payload_type: self.payload_type,
            payload: self.payload,
        };
        (headers, envelope.encode_to_vec().into())
    }
}

/// An event as a handler receives it: the envelope's fields, the provenance headers and the
/// raw payload, which [`EventData::payload`] decodes as its contract. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Event(Arc<EventData>);

impl std::ops::Deref for Event {
    type Target = EventData;

    fn deref(&self) -> &EventData {
        &self.0
    }
}

/// What an [`Event`] carries.
#[derive(Debug, Clone)]
pub struct EventData {
    /// Unique, sortable id.
    pub id: String,
    /// Event type (`order.placed`).
    pub event_type: String,
    /// Internal or external.
    pub scope: Scope,
    /// When the fact happened.
    pub time: SystemTime,
    /// The aggregate the event belongs to.
    pub key: String,
    /// Who produced it (`<subsystem>/<service>`).
    pub source: String,
    /// Free labels.
    pub tags: HashMap<String, String>,
    /// Fully qualified name of the payload message.
    pub payload_type: String,
    /// The payload, encoded.
    pub payload: Bytes,
    /// The hub where the event was first published.
    pub origin: String,
    /// Every hub the event has been stored in, the origin first.
    pub path: Vec<String>,
    /// For a resubmitted fault or a replayed event: the one durable consumer it is meant for.
    pub resubmitted_for: Option<String>,
    /// For a replayed copy (`fractal replay`): the replay's id. A handler with outside effects
    /// can tell a replay from the first time.
    pub replay: Option<String>,
}

/// Why a message is not a well-formed Fractal event.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// A required header is absent.
    #[error("header `{0}` is missing")]
    MissingHeader(&'static str),
    /// A header disagrees with the body.
    #[error("header `{header}` is `{header_value}` but the envelope says `{body_value}`")]
    HeaderMismatch {
        /// The header.
        header: &'static str,
        /// Its value.
        header_value: String,
        /// What the envelope says.
        body_value: String,
    },
    /// The subject is not an event subject.
    #[error("subject `{0}` is not an event subject (events.<internal|external>.<type>)")]
    Subject(String),
    /// The body is not a protobuf envelope.
    #[error("body is not a fractal.platform.v1.Envelope: {0}")]
    Body(#[from] WireError),
    /// The envelope decoded but lacks a required field.
    #[error("envelope field `{0}` is empty")]
    EmptyField(&'static str),
    /// The payload is not the message the reader expects.
    #[error("payload is a `{actual}`, expected a `{expected}`")]
    PayloadType {
        /// The message the reader expects.
        expected: String,
        /// The message the envelope names.
        actual: String,
    },
    /// The payload does not decode as its message.
    #[error("payload does not decode as `{message}`: {source}")]
    Payload {
        /// The message.
        message: String,
        /// Why.
        source: prost::DecodeError,
    },
}

impl Event {
    /// The same event, marked as a copy replayed by `replay`.
    pub(crate) fn replayed(&self, replay: &str) -> Event {
        let mut data = (*self.0).clone();
        data.replay = Some(replay.to_owned());
        Event(Arc::new(data))
    }

    /// Decodes a message read from a hub's event stream. The payload shares `body`'s memory.
    pub fn decode(
        subject: &str,
        headers: Option<&HeaderMap>,
        body: Bytes,
    ) -> Result<Self, DecodeError> {
        Ok(EventView::parse(subject, headers, &body)?.to_event(&body))
    }
}

/// A message read from a hub's event stream, checked as [`Event::decode`] checks it but read in
/// place: nothing is copied, for code that passes events on rather than handling them.
#[derive(Debug, Clone)]
pub struct EventView<'a> {
    /// Unique, sortable id.
    pub id: &'a str,
    /// Event type (`order.placed`).
    pub event_type: &'a str,
    /// Internal or external.
    pub scope: Scope,
    /// When the fact happened.
    pub time: SystemTime,
    /// The aggregate the event belongs to.
    pub key: &'a str,
    /// Who produced it (`<subsystem>/<service>`).
    pub source: &'a str,
    /// Fully qualified name of the payload message.
    pub payload_type: &'a str,
    /// The payload, encoded.
    pub payload: &'a [u8],
    /// The hub where the event was first published.
    pub origin: &'a str,
    /// Every hub the event has been stored in, the origin first, comma-separated.
    pub path: &'a str,
    /// For a resubmitted fault or a replayed event: the one durable consumer it is meant for.
    pub resubmitted_for: Option<&'a str>,
    /// For a replayed copy: the replay's id.
    pub replay: Option<&'a str>,
    body: &'a [u8],
    /// Whether the envelope has tags, so that [`EventView::tags`] reads the body again only
    /// then.
    tagged: bool,
}

/// The envelope's field numbers (`fractal.platform.v1.Envelope`).
mod field {
    pub(super) const ID: u32 = 1;
    pub(super) const TYPE: u32 = 2;
    pub(super) const TIME: u32 = 3;
    pub(super) const PARTITION_KEY: u32 = 4;
    pub(super) const SOURCE: u32 = 5;
    pub(super) const TAGS: u32 = 6;
    pub(super) const PAYLOAD_TYPE: u32 = 7;
    pub(super) const PAYLOAD: u32 = 8;
}

impl<'a> EventView<'a> {
    /// Reads and checks a message from a hub's event stream: the subject, the headers and the
    /// envelope must agree.
    pub fn parse(
        subject: &'a str,
        headers: Option<&'a HeaderMap>,
        body: &'a [u8],
    ) -> Result<Self, DecodeError> {
        let (scope, subject_type) = wire::parse_event_subject(subject)
            .ok_or_else(|| DecodeError::Subject(subject.into()))?;
        let header = |name: &'static str| {
            headers
                // A static name is looked up without copying it.
                .and_then(|h| h.get(HeaderName::from_static(name)))
                .map(|v| v.as_str())
                .ok_or(DecodeError::MissingHeader(name))
        };
        let msg_id = header(wire::MSG_ID)?;
        let type_header = header(wire::TYPE)?;
        let mut view = EventView {
            id: "",
            event_type: "",
            scope,
            time: SystemTime::UNIX_EPOCH,
            key: "",
            source: "",
            payload_type: "",
            payload: &[],
            origin: header(wire::ORIGIN).unwrap_or_default(),
            path: header(wire::PATH).unwrap_or_default(),
            resubmitted_for: header(wire::RESUBMIT_FOR).ok(),
            replay: header(wire::REPLAY).ok(),
            body,
            tagged: false,
        };
        let time = view.read_envelope()?;
        let agree = |header: &'static str, header_value: &str, body_value: &str| {
            if header_value == body_value {
                Ok(())
            } else {
                Err(DecodeError::HeaderMismatch {
                    header,
                    header_value: header_value.into(),
                    body_value: body_value.into(),
                })
            }
        };
        if view.id.is_empty() {
            return Err(DecodeError::EmptyField("id"));
        }
        if view.event_type.is_empty() {
            return Err(DecodeError::EmptyField("type"));
        }
        if view.payload_type.is_empty() {
            return Err(DecodeError::EmptyField("payload_type"));
        }
        // A resubmission carries its own message id (see `wire::resubmit_id`).
        if view.resubmitted_for.is_none() {
            agree(wire::MSG_ID, msg_id, view.id)?;
        }
        agree(wire::TYPE, type_header, view.event_type)?;
        if subject_type != view.event_type {
            return Err(DecodeError::Subject(subject.into()));
        }
        view.time = time
            .and_then(|t| SystemTime::try_from(t).ok())
            .ok_or(DecodeError::EmptyField("time"))?;
        Ok(view)
    }

    /// Reads the envelope's fields into `self`, returning its time.
    fn read_envelope(&mut self) -> Result<Option<prost_types::Timestamp>, WireError> {
        let mut time = None;
        let mut reader = Reader::new(self.body);
        while !reader.is_empty() {
            let (number, wire_type) = reader.key()?;
            let string = |reader: &mut Reader<'a>| {
                Reader::expect(number, wire_type, WireType::LengthDelimited, "string")?;
                reader.string(number)
            };
            match number {
                field::ID => self.id = string(&mut reader)?,
                field::TYPE => self.event_type = string(&mut reader)?,
                field::PARTITION_KEY => self.key = string(&mut reader)?,
                field::SOURCE => self.source = string(&mut reader)?,
                field::PAYLOAD_TYPE => self.payload_type = string(&mut reader)?,
                field::PAYLOAD => {
                    Reader::expect(number, wire_type, WireType::LengthDelimited, "bytes")?;
                    self.payload = reader.delimited()?;
                }
                field::TIME => {
                    Reader::expect(number, wire_type, WireType::LengthDelimited, "message")?;
                    let timestamp = time.get_or_insert_with(prost_types::Timestamp::default);
                    read_timestamp(reader.delimited()?, timestamp)?;
                }
                // A map entry must be length-delimited: prost's `Envelope::decode` rejects any
                // other wire type, and the reader accepts what prost accepts.
                field::TAGS => {
                    Reader::expect(number, wire_type, WireType::LengthDelimited, "map entry")?;
                    map_entry(reader.delimited()?)?;
                    self.tagged = true;
                }
                _ => reader.skip(number, wire_type, 0)?,
            }
        }
        Ok(time)
    }

    /// The hubs the event has been stored in, the origin first.
    pub fn hubs(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.path.split(',').filter(|hub| !hub.is_empty())
    }

    /// The free labels.
    pub fn tags(&self) -> HashMap<String, String> {
        let mut tags = HashMap::new();
        if !self.tagged {
            return tags;
        }
        let mut reader = Reader::new(self.body);
        // `parse` read every field already: none of this fails.
        while let Ok((number, wire_type)) = reader.key() {
            if number == field::TAGS {
                if let Ok((key, value)) = reader.delimited().and_then(map_entry) {
                    tags.insert(key.to_owned(), value.to_owned());
                }
            } else if reader.skip(number, wire_type, 0).is_err() {
                break;
            }
        }
        tags
    }

    /// The owned event; `body` is the buffer the view reads, whose memory the payload shares.
    pub fn to_event(&self, body: &Bytes) -> Event {
        Event(Arc::new(EventData {
            id: self.id.to_owned(),
            event_type: self.event_type.to_owned(),
            scope: self.scope,
            time: self.time,
            key: self.key.to_owned(),
            source: self.source.to_owned(),
            tags: self.tags(),
            payload_type: self.payload_type.to_owned(),
            payload: body.slice_ref(self.payload),
            origin: self.origin.to_owned(),
            path: self.hubs().map(str::to_owned).collect(),
            resubmitted_for: self.resubmitted_for.map(str::to_owned),
            replay: self.replay.map(str::to_owned),
        }))
    }
}

fn read_timestamp(bytes: &[u8], timestamp: &mut prost_types::Timestamp) -> Result<(), WireError> {
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        match reader.key()? {
            // int64 and int32 are varints, negative numbers sign-extended to 64 bits.
            (1, WireType::Varint) => timestamp.seconds = reader.varint()? as i64,
            (2, WireType::Varint) => timestamp.nanos = reader.varint()? as i64 as i32,
            (number @ (1 | 2), wire_type) => {
                return Err(WireError::WrongType {
                    field: number,
                    actual: wire_type,
                    expected: "varint",
                });
            }
            (number, wire_type) => reader.skip(number, wire_type, 1)?,
        }
    }
    Ok(())
}

/// A `map<string, string>` entry.
fn map_entry(bytes: &[u8]) -> Result<(&str, &str), WireError> {
    let (mut key, mut value) = ("", "");
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        match reader.key()? {
            (1, WireType::LengthDelimited) => key = reader.string(1)?,
            (2, WireType::LengthDelimited) => value = reader.string(2)?,
            (number @ (1 | 2), wire_type) => {
                return Err(WireError::WrongType {
                    field: number,
                    actual: wire_type,
                    expected: "string",
                });
            }
            (number, wire_type) => reader.skip(number, wire_type, 1)?,
        }
    }
    Ok((key, value))
}

impl EventData {
    /// Decodes the payload as the contract `M`, checking that it is the message the envelope
    /// names.
    pub fn payload<M: prost::Message + prost::Name + Default>(&self) -> Result<M, DecodeError> {
        let expected = M::full_name();
        if self.payload_type != expected {
            return Err(DecodeError::PayloadType {
                expected,
                actual: self.payload_type.clone(),
            });
        }
        M::decode(self.payload.as_ref()).map_err(|source| DecodeError::Payload {
            message: expected,
            source,
        })
    }

    /// The id of an event derived from this one (a translation, a reaction): the same on
    /// every redelivery of this event, so that publishing it again is dropped by the hub's
    /// de-duplication. Keeps this event's time, so ids stay sortable.
    pub fn derived_id(&self, event_type: &str) -> Ulid {
        let millis = Ulid::from_string(&self.id)
            .map(|id| id.timestamp_ms())
            .unwrap_or_else(|_| {
                self.time
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0)
            });
        stable_id(millis, &[&self.id, event_type])
    }
}

#[cfg(test)]
mod tests {
    use rand::distr::{Alphanumeric, SampleString};
    use rand::{Rng, RngCore};
    use std::time::Duration;

    use super::*;
    use crate::proto::OriginalMessage;

    fn random_string(rng: &mut impl Rng, max: usize) -> String {
        let len = rng.random_range(1..=max);
        Alphanumeric.sample_string(rng, len)
    }

    #[test]
    fn round_trip_over_random_contents() {
        let mut rng = rand::rng();
        for _ in 0..500 {
            // Any message will do as a payload; this one has strings, bytes and numbers.
            let mut body = vec![0; rng.random_range(0..512)];
            rng.fill_bytes(&mut body);
            let payload = OriginalMessage {
                stream: random_string(&mut rng, 20),
                stream_sequence: rng.random(),
                subject: random_string(&mut rng, 40),
                headers: vec![],
                body,
            };
            let event_type = format!("t{}.x", rng.random_range(0..1000));
            let key = random_string(&mut rng, 30);
            let time = SystemTime::UNIX_EPOCH
                + Duration::from_nanos(rng.random_range(0..4_000_000_000_000_000_000));
            let scope = if rng.random() {
                Scope::Internal
            } else {
                Scope::External
            };
            let mut new = NewEvent::new(&event_type, key.clone(), &payload)
                .scope(scope)
                .at(time);
            for _ in 0..rng.random_range(0..4) {
                new = new.tag(random_string(&mut rng, 8), random_string(&mut rng, 8));
            }
            let tags = new.tags.clone();
            let id = new.id();
            let subject = new.subject();
            let (headers, body) = new.encode("sub/svc", "hub-a");

            let event = Event::decode(&subject, Some(&headers), body.clone()).expect("decodes");
            assert_eq!(event.id, id.to_string());
            assert_eq!(event.event_type, event_type);
            assert_eq!(event.scope, scope);
            assert_eq!(event.time, time);
            assert_eq!(event.key, key);
            assert_eq!(event.source, "sub/svc");
            assert_eq!(event.tags, tags);
            assert_eq!(event.origin, "hub-a");
            assert_eq!(event.path, vec!["hub-a".to_string()]);
            assert_eq!(
                event.payload::<OriginalMessage>().expect("payload"),
                payload
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut rng = rand::rng();
        let new = NewEvent::new("a.b", "k", &OriginalMessage::default());
        let subject = new.subject();
        let (headers, _) = new.encode("s", "h");
        let mut errors = 0;
        for _ in 0..1000 {
            let mut body = vec![0; rng.random_range(0..256)];
            rng.fill_bytes(&mut body);
            if Event::decode(&subject, Some(&headers), Bytes::from(body)).is_err() {
                errors += 1;
            }
        }
        assert_eq!(errors, 1000);
        assert_eq!(
            Event::decode(&subject, None, Bytes::new()).unwrap_err(),
            DecodeError::MissingHeader(wire::MSG_ID)
        );
        assert!(matches!(
            Event::decode("orders.placed", Some(&headers), Bytes::new()),
            Err(DecodeError::Subject(_))
        ));
    }

    #[test]
    fn headers_must_agree_with_the_body() {
        let new = NewEvent::new("a.b", "k", &OriginalMessage::default());
        let subject = new.subject();
        let (mut headers, body) = new.encode("s", "h");
        headers.insert(wire::MSG_ID, "another");
        assert!(matches!(
            Event::decode(&subject, Some(&headers), body.clone()),
            Err(DecodeError::HeaderMismatch {
                header: wire::MSG_ID,
                ..
            })
        ));
    }

    #[test]
    fn a_tag_is_length_delimited_as_prost_reads_it() {
        let new = NewEvent::new("a.b", "k", &OriginalMessage::default());
        let subject = new.subject();
        let (headers, body) = new.encode("s", "h");
        // Field 6 (`tags`) as a varint, then as a group's end: prost rejects both.
        for key in [0x30, 0x34] {
            let mut bad = body.to_vec();
            bad.extend([key, 0x00]);
            assert!(Envelope::decode(bad.as_slice()).is_err());
            assert!(matches!(
                Event::decode(&subject, Some(&headers), bad.into()),
                Err(DecodeError::Body(WireError::WrongType { field: 6, .. }))
            ));
        }
    }

    #[test]
    fn payload_type_is_checked() {
        let new = NewEvent::new("a.b", "k", &OriginalMessage::default());
        let subject = new.subject();
        let (headers, body) = new.encode("s", "h");
        let event = Event::decode(&subject, Some(&headers), body.clone()).expect("decodes");
        assert!(matches!(
            event.payload::<crate::proto::Fault>(),
            Err(DecodeError::PayloadType { .. })
        ));
    }
}
