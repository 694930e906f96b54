//! Faults: messages that could not be processed, kept on the hub's fault stream with the error
//! and the original message (headers and body, unchanged), so nothing is lost and every fault
//! can be inspected and resubmitted.

use std::time::SystemTime;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use prost::Message as _;
use ulid::Ulid;

use crate::Hub;
use crate::metrics::{FaultLabels, PLATFORM};
pub use crate::proto::FaultKind;
use crate::proto::{Fault, Header, OriginalMessage};
use crate::wire;

/// Header naming the kind of a fault, so that tools filter faults without decoding them.
pub const FAULT_KIND: &str = "Fractal-Fault-Kind";

/// Where a faulted message was read from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The stream.
    pub stream: &'a str,
    /// The message's sequence in it.
    pub sequence: u64,
    /// How many times it had been delivered.
    pub deliveries: u64,
}

/// Records faults for one service (or bridge) on a hub's fault stream.
#[derive(Debug, Clone)]
pub struct FaultRecorder {
    hub: Hub,
    service: String,
    consumer: String,
}

impl FaultRecorder {
    /// A recorder for `service`, reading through the durable consumer `consumer`.
    pub fn new(hub: &Hub, service: &str, consumer: &str) -> Self {
        FaultRecorder {
            hub: hub.clone(),
            service: service.to_owned(),
            consumer: consumer.to_owned(),
        }
    }

    /// Stores a fault for `message` and waits until the hub has it. The fault's message id is
    /// derived from the consumer and the original's stream sequence, so recording the same
    /// fault twice (after a crash between recording and acknowledging) stores it once.
    pub async fn record(
        &self,
        message: &async_nats::Message,
        origin: Origin<'_>,
        kind: FaultKind,
        reason: &str,
        event_type: Option<&str>,
    ) -> Result<(), async_nats::Error> {
        let fault = Fault {
            id: Ulid::new().to_string(),
            time: Some(SystemTime::now().into()),
            service: self.service.clone(),
            consumer: self.consumer.clone(),
            kind: kind.into(),
            reason: reason.to_owned(),
            deliveries: origin.deliveries,
            original: Some(OriginalMessage {
                stream: origin.stream.to_owned(),
                stream_sequence: origin.sequence,
                subject: message.subject.to_string(),
                headers: message
                    .headers
                    .as_ref()
                    .map(header_list)
                    .unwrap_or_default(),
                body: message.payload.to_vec(),
            }),
        };
        let event_type = event_type.filter(|t| wire::check_name(t).is_ok());
        let subject = wire::fault_subject(&self.service, event_type);
        let mut headers = HeaderMap::new();
        headers.insert(
            wire::MSG_ID,
            format!(
                "fault:{}:{}:{}",
                self.consumer, origin.stream, origin.sequence
            )
            .as_str(),
        );
        headers.insert(FAULT_KIND, kind.as_str_name());
        if let Some(t) = event_type {
            headers.insert(wire::TYPE, t);
        }
        self.hub
            .jetstream()
            .send_publish(
                subject,
                PublishMessage::build()
                    .headers(headers)
                    .payload(fault.encode_to_vec().into()),
            )
            .await?
            .await?;
        PLATFORM
            .faulted
            .get_or_create(&FaultLabels {
                service: self.service.clone(),
                event_type: event_type.unwrap_or("malformed").to_owned(),
                kind: kind.as_str_name().to_owned(),
            })
            .inc();
        tracing::warn!(
            service = %self.service,
            subject = %message.subject,
            sequence = origin.sequence,
            kind = kind.as_str_name(),
            reason,
            "Message moved to the fault stream."
        );
        Ok(())
    }
}

/// The headers of a message as a list, in order.
pub fn header_list(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .flat_map(|(name, values)| {
            values.iter().map(move |v| Header {
                name: name.to_string(),
                value: v.to_string(),
            })
        })
        .collect()
}

/// The headers of a faulted original, as a header map to publish it again; an error names
/// the first header NATS cannot carry (a fault record written by hand, say).
pub fn header_map(headers: &[Header]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for h in headers {
        let name: async_nats::HeaderName = h
            .name
            .parse()
            .map_err(|e| format!("header name {:?}: {e}", h.name))?;
        let value: async_nats::HeaderValue = h
            .value
            .parse()
            .map_err(|e| format!("header `{}` value {:?}: {e}", h.name, h.value))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_nats_cannot_carry_are_errors_not_panics() {
        let header = |name: &str, value: &str| Header {
            name: name.into(),
            value: value.into(),
        };
        let map = header_map(&[header("Fractal-Type", "a.b"), header("X", "1")]);
        assert!(map.is_ok_and(|m| m.get("X").is_some_and(|v| v.as_str() == "1")));
        let bad_name = header_map(&[header("Bad: name", "v")]);
        assert!(bad_name.is_err_and(|e| e.contains("Bad: name")));
        let bad_value = header_map(&[header("X", "line\nbreak")]);
        assert!(bad_value.is_err_and(|e| e.contains("header `X`")));
    }
}
