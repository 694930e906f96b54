//! Events as people read and write them: a hub's events decoded to JSON (`fractal tail`), and
//! simulated events from JSON (`fractal publish`). Payloads are converted with the system's
//! contracts, loaded at run time.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use bytes::Bytes;
use fractal::{Event, Hub, NewEvent, Publisher, Scope};
use fractal_bridge::Contracts;
use futures::StreamExt as _;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use tokio_util::sync::CancellationToken;

/// The payload of an event as JSON, or why it cannot be shown.
pub(crate) fn payload_json(contracts: &Contracts, payload_type: &str, payload: &[u8]) -> String {
    let Some(descriptor) = contracts.find(payload_type) else {
        return format!("\"<{} bytes of unknown {payload_type}>\"", payload.len());
    };
    match DynamicMessage::decode(descriptor, payload) {
        Ok(message) => {
            serde_json::to_string(&message).unwrap_or_else(|e| format!("\"<cannot show: {e}>\""))
        }
        Err(e) => format!("\"<does not decode as {payload_type}: {e}>\""),
    }
}

/// One event as a line: time, scope and type, id, key, origin, payload.
pub(crate) fn line(contracts: &Contracts, event: &Event) -> String {
    let time: chrono_like::Rfc3339 = event.time.into();
    format!(
        "{time}  {}.{}  id={}  key={}  origin={}  {}",
        event.scope.token(),
        event.event_type,
        event.id,
        event.key,
        event.origin,
        payload_json(contracts, &event.payload_type, &event.payload)
    )
}

/// Prints `hub`'s events as they arrive (with `all`, from the first one kept), of `event_type`
/// only if given, until `count` were printed or `shutdown`.
pub(crate) async fn tail(
    hub: &Hub,
    contracts: &Contracts,
    event_type: Option<&str>,
    all: bool,
    count: Option<usize>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let filter = match event_type {
        Some(t) => {
            fractal::wire::check_name(t).map_err(|e| anyhow::anyhow!("--type: event type {e}"))?;
            fractal::wire::event_filter(t)
        }
        None => format!("{}.>", fractal::wire::EVENTS_PREFIX),
    };
    let stream = hub
        .jetstream()
        .get_stream(hub.events_stream())
        .await
        .with_context(|| format!("hub `{}` has no event stream", hub.name()))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter,
            deliver_policy: if all {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        })
        .await
        .context("cannot read the event stream")?;
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read the event stream")?;
    let mut printed = 0;
    loop {
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let Some(message) = message else {
            bail!("the hub closed the stream");
        };
        let message = message.context("reading the event stream")?;
        match Event::decode(
            &message.subject,
            message.headers.as_ref(),
            message.payload.clone(),
        ) {
            Ok(event) => println!("{}", line(contracts, &event)),
            Err(e) => println!("{}  <malformed: {e}>", message.subject),
        }
        printed += 1;
    }
}

/// Encodes `json` as the protobuf message `contract`, naming what is wrong if it does not fit.
pub(crate) fn encode_json(
    contracts: &Contracts,
    contract: &str,
    json: &str,
) -> anyhow::Result<Bytes> {
    let Some(descriptor) = contracts.find(contract) else {
        bail!(contracts.unknown(contract));
    };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(descriptor, &mut deserializer)
        .map_err(|e| anyhow::anyhow!("the JSON is not a `{contract}`: {e}"))?;
    deserializer
        .end()
        .map_err(|e| anyhow::anyhow!("the JSON has more after the message: {e}"))?;
    Ok(message.encode_to_vec().into())
}

/// The partition key of a payload: the first top-level string field ending in `_id`.
pub(crate) fn key_of(contracts: &Contracts, contract: &str, payload: &[u8]) -> Option<String> {
    let descriptor = contracts.find(contract)?;
    let message = DynamicMessage::decode(descriptor.clone(), payload).ok()?;
    descriptor
        .fields()
        .filter(|f| f.name().ends_with("_id"))
        .find_map(|f| {
            message
                .get_field(&f)
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
}

/// Publishes a simulated event on `hub`.
pub(crate) async fn publish(
    hub: &Hub,
    scope: Scope,
    event_type: &str,
    key: &str,
    contract: &str,
    payload: Bytes,
) -> anyhow::Result<String> {
    let event = NewEvent::from_parts(scope, event_type, key, contract, payload);
    let published = tokio::time::timeout(
        Duration::from_secs(30),
        Publisher::new(hub, "fractal/cli").publish(event),
    )
    .await
    .context("the hub did not acknowledge within 30 s")??;
    Ok(published.id.to_string())
}

/// RFC 3339 times without another dependency.
pub(crate) mod chrono_like {
    use std::fmt;
    use std::time::SystemTime;

    /// A time shown as `2026-11-28T18:54:14.123Z`.
    pub(crate) struct Rfc3339(SystemTime);

    impl From<SystemTime> for Rfc3339 {
        fn from(time: SystemTime) -> Self {
            Rfc3339(time)
        }
    }

    impl fmt::Display for Rfc3339 {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let since = self
                .0
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let secs = since.as_secs() as i64;
            let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
            // Civil date from days since the epoch (Howard Hinnant's algorithm).
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z.rem_euclid(146_097);
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let day = doy - (153 * mp + 2) / 5 + 1;
            let month = if mp < 10 { mp + 3 } else { mp - 9 };
            let year = yoe + era * 400 + i64::from(month <= 2);
            write!(
                f,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
                rest / 3600,
                rest % 3600 / 60,
                rest % 60,
                since.subsec_millis()
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::time::Duration;

        #[test]
        fn times_are_shown_in_rfc3339() {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_892_054_123);
            assert_eq!(Rfc3339(t).to_string(), "2026-11-28T18:54:14.123Z");
            assert_eq!(
                Rfc3339(SystemTime::UNIX_EPOCH).to_string(),
                "1970-01-01T00:00:00.000Z"
            );
        }
    }
}

/// The last `n` messages of `stream` on `hub`, oldest first: a read of `n` messages whatever
/// the stream holds.
pub(crate) async fn latest(
    hub: &Hub,
    stream: &str,
    n: u64,
) -> anyhow::Result<Vec<async_nats::jetstream::Message>> {
    let mut stream = hub
        .jetstream()
        .get_stream(stream)
        .await
        .with_context(|| format!("hub `{}` has no stream `{stream}`", hub.name()))?;
    let state = stream.info().await?.state.clone();
    if state.messages == 0 || n == 0 {
        return Ok(Vec::new());
    }
    let start = state
        .last_sequence
        .saturating_sub(n - 1)
        .max(state.first_sequence);
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut read = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let message = message?;
        let last = message
            .info()
            .is_ok_and(|i| i.stream_sequence >= state.last_sequence);
        read.push(message);
        if last || read.len() as u64 >= n {
            break;
        }
    }
    Ok(read)
}
