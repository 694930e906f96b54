//! Views: the state a service keeps for its queries and commands, built from events and stored
//! in a JetStream key-value bucket of its hub (`view_<name>`).
//!
//! Events arrive at least once and, after a redelivery, possibly out of order. A view stays
//! right if every update is a function of the stored record and the event that is idempotent
//! and keeps the newest by event time; [`View::update`] runs such a function under optimistic
//! concurrency (compare-and-set on the entry's revision), so concurrent updates of one key
//! never lose each other.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv::{self, Operation};
use futures::TryStreamExt as _;
use prost::Message as _;

use crate::Hub;
use crate::proto::ViewRecord;
use crate::telemetry;

/// How many times an update is retried when another writer changed the entry meanwhile.
const MAX_CONFLICTS: usize = 64;

/// A view could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("view `{view}`: {message}")]
pub struct ViewError {
    view: String,
    message: String,
    #[source]
    source: Option<async_nats::Error>,
    /// Retrying cannot help: a stored entry that does not decode.
    corrupt: bool,
}

impl ViewError {
    fn new(view: &str, message: impl Into<String>, source: impl Into<async_nats::Error>) -> Self {
        ViewError {
            view: view.to_owned(),
            message: message.into(),
            source: Some(source.into()),
            corrupt: false,
        }
    }
}

impl ViewError {
    /// Whether a stored entry is unreadable (retrying cannot help), as opposed to the hub
    /// being unreachable or busy.
    pub fn is_corrupt(&self) -> bool {
        self.corrupt
    }
}

/// A view error is worth retrying (the hub may be back in a moment) unless an entry is
/// unreadable.
impl From<ViewError> for crate::HandlerError {
    fn from(error: ViewError) -> Self {
        if error.corrupt {
            crate::HandlerError::Permanent(Box::new(error))
        } else {
            crate::HandlerError::Retryable(Box::new(error))
        }
    }
}

/// One entry of a view: the service's value, the time of the newest fact it reflects, and the
/// trace context of the fact that created it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    /// The value.
    pub value: T,
    /// Event time of the newest fact applied.
    pub time: SystemTime,
    /// Trace context (`traceparent`, `tracestate`) of the fact that created the entry.
    pub trace: HashMap<String, String>,
}

impl<T> Record<T> {
    /// A record of `value` as of `time`, remembering the current span's trace context.
    pub fn new(value: T, time: SystemTime) -> Self {
        Record {
            value,
            time,
            trace: telemetry::carrier(&tracing::Span::current()),
        }
    }

    /// The same record with a new value as of `time` (if newer), keeping its trace.
    pub fn with(self, value: T, time: SystemTime) -> Self {
        Record {
            value,
            time: self.time.max(time),
            trace: self.trace,
        }
    }
}

/// A typed view over one key-value bucket.
#[derive(Debug, Clone)]
pub struct View<T> {
    name: String,
    store: kv::Store,
    _value: PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default + Clone> View<T> {
    /// Opens the view `name` on `hub`, creating its bucket (`view_<name>`) if missing.
    pub async fn open(hub: &Hub, name: &str) -> Result<View<T>, ViewError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ViewError {
                view: name.to_owned(),
                message: "a view name is letters, digits, `_` and `-`".into(),
                source: None,
                corrupt: false,
            });
        }
        let bucket = format!("view_{name}");
        let store = match hub.jetstream().get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => hub
                .jetstream()
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: format!("View `{name}` of hub `{}`.", hub.name()),
                    history: 1,
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| ViewError::new(name, format!("cannot create bucket `{bucket}`"), e))?,
        };
        Ok(View {
            name: name.to_owned(),
            store,
            _value: PhantomData,
        })
    }

    /// The entry for `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Record<T>>, ViewError> {
        Ok(self.entry(key).await?.and_then(|(_, record)| record))
    }

    /// Every entry, in key order.
    pub async fn list(&self) -> Result<Vec<(String, Record<T>)>, ViewError> {
        let mut keys: Vec<String> = match self.store.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| ViewError::new(&self.name, "cannot list keys", e))?,
            Err(e) => return Err(ViewError::new(&self.name, "cannot list keys", e)),
        };
        keys.sort();
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(record) = self.get(&key).await? {
                entries.push((key, record));
            }
        }
        Ok(entries)
    }

    /// Applies `change` to the entry for `key` and stores the result; `change` returns `None`
    /// to leave the entry as it is. Runs again on the newer entry if another writer got there
    /// first. Returns the entry as stored afterwards.
    pub async fn update<F>(&self, key: &str, mut change: F) -> Result<Option<Record<T>>, ViewError>
    where
        F: FnMut(Option<Record<T>>) -> Option<Record<T>>,
    {
        for attempt in 0..MAX_CONFLICTS {
            let (revision, current) = match self.entry(key).await? {
                Some((revision, record)) => (Some(revision), record),
                None => (None, None),
            };
            let Some(next) = change(current.clone()) else {
                return Ok(current);
            };
            let bytes = encode(&next).into();
            // Revision 0 means "only if the key has never been written".
            match self.store.update(key, bytes, revision.unwrap_or(0)).await {
                Ok(_) => return Ok(Some(next)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // Someone else wrote first; back off a little and read again.
                    let jitter = rand::random::<u64>() % (1 + attempt as u64 * 2);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(e) => {
                    return Err(ViewError::new(
                        &self.name,
                        format!("cannot write `{key}`"),
                        e,
                    ));
                }
            }
        }
        Err(ViewError {
            view: self.name.clone(),
            message: format!("`{key}` kept changing under {MAX_CONFLICTS} attempts to update it"),
            source: None,
            corrupt: false,
        })
    }

    /// Stores `record` for `key` unless an entry exists; returns whether it was stored.
    pub async fn create(&self, key: &str, record: &Record<T>) -> Result<bool, ViewError> {
        let mut created = false;
        self.update(key, |current| {
            created = current.is_none();
            created.then(|| record.clone())
        })
        .await?;
        Ok(created)
    }

    /// Removes the entry for `key`.
    pub async fn delete(&self, key: &str) -> Result<(), ViewError> {
        self.store
            .delete(key)
            .await
            .map_err(|e| ViewError::new(&self.name, format!("cannot delete `{key}`"), e))
    }

    /// The entry's revision (a deleted entry has one too) and its record, if it holds one.
    async fn entry(&self, key: &str) -> Result<Option<(u64, Option<Record<T>>)>, ViewError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|e| ViewError::new(&self.name, format!("cannot read `{key}`"), e))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != Operation::Put {
            return Ok(Some((entry.revision, None)));
        }
        let record = decode(&entry.value)
            .map_err(|e| ViewError::new(&self.name, format!("entry `{key}` does not decode"), e))?;
        Ok(Some((entry.revision, Some(record))))
    }
}

fn encode<T: prost::Message>(record: &Record<T>) -> Vec<u8> {
    ViewRecord {
        time: Some(record.time.into()),
        trace: record.trace.clone(),
        value: record.value.encode_to_vec(),
    }
    .encode_to_vec()
}

fn decode<T: prost::Message + Default>(bytes: &[u8]) -> Result<Record<T>, prost::DecodeError> {
    let stored = ViewRecord::decode(bytes)?;
    Ok(Record {
        value: T::decode(stored.value.as_ref())?,
        time: stored
            .time
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        trace: stored.trace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Header;

    #[test]
    fn a_record_round_trips() {
        let record = Record {
            value: Header {
                name: "a".into(),
                value: "b".into(),
            },
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            trace: HashMap::from([("traceparent".into(), "00-abc-def-01".into())]),
        };
        let back: Record<Header> = decode(&encode(&record)).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn with_keeps_the_newest_time_and_the_trace() {
        let early = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let late = SystemTime::UNIX_EPOCH + Duration::from_secs(20);
        let mut record = Record::new(1u32, late);
        record.trace.insert("traceparent".into(), "x".into());
        let next = record.clone().with(2, early);
        assert_eq!(next.time, late);
        assert_eq!(next.trace, record.trace);
        assert_eq!(next.value, 2);
    }
}
