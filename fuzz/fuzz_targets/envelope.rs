//! Reads an event message made from arbitrary bytes (subject, headers and body; see
//! [`fractal_fuzz::Message`]) as a consumer or a bridge reads one from a hub's event stream.
//!
//! Besides never panicking, the reader must agree with itself and with prost: the in-place
//! [`EventView`] and [`Event::decode`] give the same verdict and fields; whatever the view
//! accepts, prost decodes as an `Envelope` with the same fields; when the subject and headers
//! are those a publisher would set, the view accepts exactly the envelopes with an id, a type, a
//! payload type and a valid time; and a decoded event, encoded again, decodes to itself.

#![no_main]

use std::collections::HashMap;
use std::time::SystemTime;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use fractal::proto::Envelope;
use fractal::wire::{self, Scope};
use fractal::{Event, EventView};
use fractal_fuzz::Message;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let message = Message::parse(data);
    let full = Envelope::decode(message.body);

    let mut subject = message.subject.clone();
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        // A hub never delivers a header NATS cannot carry.
        if let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), value.parse::<HeaderValue>()) {
            headers.insert(name, value);
        }
    }
    let mut expected = None;
    if message.has(Message::CONSISTENT)
        && let Ok(envelope) = &full
    {
        let scope = if message.has(Message::EXTERNAL) {
            Scope::External
        } else {
            Scope::Internal
        };
        subject = wire::event_subject(scope, &envelope.r#type);
        let id = envelope.id.parse::<HeaderValue>();
        let event_type = envelope.r#type.parse::<HeaderValue>();
        if let (Ok(id), Ok(event_type)) = (id, event_type) {
            headers.insert(wire::MSG_ID, id);
            headers.insert(wire::TYPE, event_type);
            expected = Some(
                !envelope.id.is_empty()
                    && !envelope.r#type.is_empty()
                    && !envelope.payload_type.is_empty()
                    && time_of(envelope).is_some(),
            );
        }
    }
    let headers = (!message.has(Message::HEADERLESS) || expected.is_some()).then_some(&headers);

    let body = Bytes::copy_from_slice(message.body);
    let view = EventView::parse(&subject, headers, &body);
    let event = Event::decode(&subject, headers, body.clone());
    match (&view, &event) {
        (Ok(view), Ok(event)) => {
            assert_eq!(fields(&view.to_event(&body)), fields(event));
            assert_eq!(view.hubs().count(), event.path.len());
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("the view says {view:?} but the decode says {event:?}"),
    }
    if let Some(expected) = expected {
        assert_eq!(view.is_ok(), expected, "{view:?}");
    }

    let Ok(event) = event else {
        return;
    };
    let envelope = full.expect("prost decodes every envelope the view reads");
    assert_eq!(event.id, envelope.id);
    assert_eq!(event.event_type, envelope.r#type);
    assert_eq!(Some(event.time), time_of(&envelope));
    assert_eq!(event.key, envelope.partition_key);
    assert_eq!(event.source, envelope.source);
    assert_eq!(event.tags, envelope.tags);
    assert_eq!(event.payload_type, envelope.payload_type);
    assert_eq!(event.payload, envelope.payload);

    // Encoded again, the event decodes to itself.
    let again = Envelope {
        id: event.id.clone(),
        r#type: event.event_type.clone(),
        time: Some(event.time.into()),
        partition_key: event.key.clone(),
        source: event.source.clone(),
        tags: event.tags.clone(),
        payload_type: event.payload_type.clone(),
        payload: event.payload.clone(),
    };
    let decoded = Event::decode(&subject, headers, again.encode_to_vec().into())
        .expect("an event encoded again decodes");
    assert_eq!(fields(&decoded), fields(&event));

    // What handlers do with an event must not panic either.
    let _ = event.derived_id("fuzz.derived");
    let _ = event.payload::<fractal::proto::Header>();
});

fn time_of(envelope: &Envelope) -> Option<SystemTime> {
    envelope
        .time
        .and_then(|time| SystemTime::try_from(time).ok())
}

type Fields<'a> = (
    [&'a str; 5],
    Scope,
    SystemTime,
    &'a HashMap<String, String>,
    &'a [u8],
    &'a str,
    &'a [String],
    [Option<&'a str>; 2],
);

fn fields(event: &Event) -> Fields<'_> {
    (
        [
            &event.id,
            &event.event_type,
            &event.key,
            &event.source,
            &event.payload_type,
        ],
        event.scope,
        event.time,
        &event.tags,
        &event.payload,
        &event.origin,
        &event.path,
        [event.resubmitted_for.as_deref(), event.replay.as_deref()],
    )
}
