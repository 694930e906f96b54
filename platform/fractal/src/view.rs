//! Views: the state a service keeps for its queries and commands, built from events and stored
//! in a JetStream key-value bucket of its hub (`view_<name>`).
//!
//! Events arrive at least once and, after a redelivery, possibly out of order. A view stays
//! right if every update is a function of the stored record and the event that is idempotent
//! and keeps the newest by event time; [`View::update`] runs such a function under optimistic
//! concurrency (compare-and-set on the entry's revision), so concurrent updates of one key
//! never lose each other.
//!
//! Queries cost what they return:
//! - keys are dot-separated tokens (`d-17.o-42`, built with [`key`]), and [`View::scan`] reads
//!   only the entries under a prefix of whole tokens, in one pass (one consumer on the
//!   bucket's stream, values included); [`View::list`] reads the whole bucket the same way;
//! - an [`Index`] is a second view of the same records under other keys (deliveries by driver,
//!   tickets by restaurant), kept in step by every [`View::update`];
//! - a [`LiveView`] is a copy of a view in the service's memory, kept current from the bucket,
//!   for a service that reads a view on every event or request.
//!
//! A view can be rebuilt from the lake into a new bucket while the service keeps serving the
//! old one ([`rebuild`]): a view is bound to its bucket through the hub's `views` bucket, and
//! a rebuild switches the binding.

mod live;
pub mod rebuild;

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt as _;
use prost::Message as _;

pub use live::{LiveView, PrefixWatch};

use crate::Hub;
use crate::hub::RideOut;
use crate::proto::ViewRecord;
use crate::telemetry;

/// How many times an update is retried when another writer changed the entry meanwhile.
const MAX_CONFLICTS: usize = 64;

/// How long one pass over a bucket may take before it is given up as an error.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a write was refused because the entry changed since it was read. A clustered hub
/// may say so with error 10164 ("wrong last sequence", without the sequence), which the client
/// library reports as a publish failure rather than as a wrong revision.
fn conflicted(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.to_string().contains("wrong last sequence") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A view could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("view `{view}`: {message}")]
pub struct ViewError {
    view: String,
    message: String,
    #[source]
    source: Option<async_nats::Error>,
    /// Retrying cannot help: a stored entry that does not decode, or a key that is not one.
    corrupt: bool,
}

impl ViewError {
    /// An error of the hub; its cause is part of the message, for logs that show one line.
    fn new(view: &str, message: impl Into<String>, source: impl Into<async_nats::Error>) -> Self {
        let source = source.into();
        ViewError {
            view: view.to_owned(),
            message: format!("{}: {source}", message.into()),
            source: Some(source),
            corrupt: false,
        }
    }

    fn invalid(view: &str, message: impl Into<String>) -> Self {
        ViewError {
            view: view.to_owned(),
            message: message.into(),
            source: None,
            corrupt: true,
        }
    }

    fn busy(view: &str, message: impl Into<String>) -> Self {
        ViewError {
            view: view.to_owned(),
            message: message.into(),
            source: None,
            corrupt: false,
        }
    }

    /// Whether retrying cannot help (a stored entry is unreadable, or a key is not one), as
    /// opposed to the hub being unreachable or busy.
    pub fn is_corrupt(&self) -> bool {
        self.corrupt
    }
}

/// A view error is worth retrying unless an entry is unreadable; one that says the hub cannot
/// answer right now waits for it without counting as an attempt.
impl From<ViewError> for crate::HandlerError {
    fn from(error: ViewError) -> Self {
        if error.corrupt {
            crate::HandlerError::Permanent(Box::new(error))
        } else if crate::hub::unavailable(&error) {
            crate::HandlerError::Unavailable(Box::new(error))
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

/// A key made of `tokens`, one token each whatever they hold (`key(&["d-17", "o-42"])` is
/// `d-17.o-42`), for views queried by prefix with [`View::scan`]: `scan(&key(&["d-17"]))`.
/// Letters, digits, `-`, `_` and `/` stand for themselves; any other byte is written `=XX`
/// (`.` is `=2E`) and an empty token `=`, so two different lists of tokens never make the same
/// key.
pub fn key(tokens: &[&str]) -> String {
    let mut key = String::new();
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        if token.is_empty() {
            key.push('=');
        }
        for byte in token.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'/') {
                key.push(byte as char);
            } else {
                key.push_str(&format!("={byte:02X}"));
            }
        }
    }
    key
}

/// Why `key` cannot be a view's key (or a prefix of whole tokens of one), if it cannot.
fn check_key(key: &str) -> Result<(), String> {
    let valid_token = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '/'))
    };
    if key.split('.').all(valid_token) {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not a key: dot-separated tokens of letters, digits, `-`, `_`, `=` and `/`"
        ))
    }
}

/// Makes sure the key-value bucket of view `name` exists on `hub` (`view_<name>`, or the one
/// a rebuild bound it to), replicated like the hub's streams, and the hub's `views` bucket of
/// bindings too: what a hub's provisioning step does for each view up front, so that services
/// need no right to create streams, and [`View::open`] does for a view nobody provisioned.
pub async fn provision(hub: &Hub, name: &str) -> Result<kv::Store, ViewError> {
    Ok(bound_bucket(hub, name).await?.0)
}

/// [`provision`], also returning the stream sequence up to which a rebuild applied the hub's
/// events to the bucket (0 if none did).
async fn bound_bucket(hub: &Hub, name: &str) -> Result<(kv::Store, u64), ViewError> {
    let bound = rebuild::bound(hub, name).await?;
    let rebuilt_through = bound.as_ref().map_or(0, |b| b.rebuilt_through);
    let bucket = bound.map_or_else(|| rebuild::first_bucket(name), |b| b.bucket);
    let description = format!("View `{name}` of hub `{}`.", hub.name());
    let store = bucket_of(hub, name, &bucket, &description).await?;
    Ok((store, rebuilt_through))
}

/// Opens key-value bucket `bucket` (for view `name`, in errors) on `hub`, creating it if
/// missing, waiting out a hub that cannot answer.
async fn bucket_of(
    hub: &Hub,
    name: &str,
    bucket: &str,
    description: &str,
) -> Result<kv::Store, ViewError> {
    let ride_out = RideOut::start();
    loop {
        match hub.jetstream().get_key_value(bucket).await {
            Ok(store) => return Ok(store),
            Err(e) if missing(&e) => break,
            Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
            Err(e) => {
                return Err(ViewError::new(
                    name,
                    format!("cannot open bucket `{bucket}`"),
                    e,
                ));
            }
        }
    }
    let config = kv::Config {
        bucket: bucket.to_owned(),
        description: description.to_owned(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: hub.replicas(),
        ..Default::default()
    };
    loop {
        match hub.jetstream().create_key_value(config.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
            Err(e) => {
                return Err(ViewError::new(
                    name,
                    format!("cannot create bucket `{bucket}`"),
                    e,
                ));
            }
        }
    }
}

/// Whether `error` (or a cause of it) says the bucket does not exist.
fn missing(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.to_string().to_lowercase().contains("stream not found") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Where a view's entries are: the bucket it reads and writes now, which a rebuild switches.
/// One per view and hub connection, shared by every handle on the view.
#[derive(Debug)]
pub(crate) struct Binding {
    name: String,
    /// Shared, so that reading which bucket it is costs a reference count, not a copy of the
    /// bucket's cached stream information.
    store: std::sync::RwLock<Arc<kv::Store>>,
    /// Events of the hub's stream up to this sequence are in the bucket already (a rebuild
    /// applied them): a consumer handling one of them again leaves the view alone.
    rebuilt_through: AtomicU64,
    /// The indexes kept in step with it.
    indexes: Mutex<Vec<String>>,
    /// The view this one is an index of.
    index_of: Mutex<Option<String>>,
    /// Whether a live copy follows its bucket.
    live: AtomicBool,
}

/// The views opened through one hub connection, by name.
pub(crate) type Bindings = Arc<Mutex<HashMap<String, Arc<Binding>>>>;

impl Binding {
    fn store(&self) -> Arc<kv::Store> {
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn bucket_name(&self) -> String {
        self.store().name.clone()
    }

    pub(crate) fn rebuilt_through(&self) -> u64 {
        self.rebuilt_through.load(Ordering::Acquire)
    }

    pub(crate) fn indexes(&self) -> Vec<String> {
        self.indexes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn index_of(&self) -> Option<String> {
        self.index_of
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Binds the view to `store`, which a rebuild filled with the hub's events up to
    /// `rebuilt_through`.
    pub(crate) fn switch(&self, store: Arc<kv::Store>, rebuilt_through: u64) {
        *self.store.write().unwrap_or_else(PoisonError::into_inner) = store;
        self.rebuilt_through
            .store(rebuilt_through, Ordering::Release);
    }
}

/// A typed view over one key-value bucket, and the indexes every update keeps in step.
///
/// ```no_run
/// # async fn example(hub: fractal::Hub) -> Result<(), fractal::view::ViewError> {
/// use std::time::SystemTime;
/// use fractal::proto::Header;
/// use fractal::view::{Record, View};
///
/// let view = View::<Header>::open(&hub, "settings").await?;
/// let value = Header { name: "colour".into(), value: "blue".into() };
/// // Newer facts win: an update that is older than the entry leaves it as it is.
/// let now = SystemTime::now();
/// view.update("colour", |current| match current {
///     Some(entry) if entry.time > now => None,
///     _ => Some(Record::new(value.clone(), now)),
/// })
/// .await?;
/// let stored = view.get("colour").await?.expect("stored");
/// assert_eq!(stored.value.value, "blue");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct View<T> {
    name: String,
    binding: Arc<Binding>,
    client: async_nats::Client,
    indexes: Vec<Index<T>>,
    _value: PhantomData<fn() -> T>,
}

impl<T> View<T> {
    /// The bucket this task reads the view from (see [`rebuild::route`]).
    fn bucket(&self) -> Arc<kv::Store> {
        rebuild::route(&self.binding).0
    }
}

impl<T: prost::Message + Default + Clone + PartialEq> View<T> {
    /// Opens the view `name` on `hub`, creating its bucket (`view_<name>`) if missing.
    pub async fn open(hub: &Hub, name: &str) -> Result<View<T>, ViewError> {
        if name.is_empty()
            || name.contains("__")
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ViewError::invalid(
                name,
                "a view name is letters, digits, `_` and `-`, without `__`",
            ));
        }
        let open = hub
            .views()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        let binding = match open {
            Some(binding) => binding,
            None => {
                // A credential that may not use the bucket gets no reply at all; its refusal,
                // reported on the connection, fails the open at once.
                let refused = |subject: &str| {
                    subject.starts_with("$JS.API.")
                        && (subject.contains(&format!("KV_view_{name}"))
                            || subject.contains(rebuild::BINDINGS))
                };
                let opening = format!("opening view `{name}`");
                let (store, rebuilt_through) = hub
                    .unless_refused(&opening, refused, bound_bucket(hub, name))
                    .await
                    .map_err(|e| ViewError::new(name, "the hub refused this credential", e))??;
                let binding = Arc::new(Binding {
                    name: name.to_owned(),
                    store: std::sync::RwLock::new(Arc::new(store)),
                    rebuilt_through: AtomicU64::new(rebuilt_through),
                    indexes: Mutex::default(),
                    index_of: Mutex::default(),
                    live: AtomicBool::new(false),
                });
                hub.views()
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(name.to_owned())
                    .or_insert(binding)
                    .clone()
            }
        };
        Ok(View {
            name: name.to_owned(),
            binding,
            client: hub.client().clone(),
            indexes: Vec::new(),
            _value: PhantomData,
        })
    }

    /// The same view, keeping `index` in step with every [`View::update`] from now on.
    pub fn indexed_by(mut self, index: Index<T>) -> Self {
        let mut indexes = self
            .binding
            .indexes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !indexes.contains(&index.view.name) {
            indexes.push(index.view.name.clone());
        }
        drop(indexes);
        *index
            .view
            .binding
            .index_of
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(self.name.clone());
        self.indexes.push(index);
        self
    }

    /// The entry for `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Record<T>>, ViewError> {
        Ok(self.entry(key).await?.and_then(|(_, record)| record))
    }

    /// Every entry, in key order, read in one pass over the bucket.
    pub async fn list(&self) -> Result<Vec<(String, Record<T>)>, ViewError> {
        self.read(">").await
    }

    /// The entries whose keys start with the whole tokens of `prefix` (`scan("d-17")` reads
    /// `d-17.o-42` but not `d-170.o-1`), in key order, read in one pass that touches only
    /// those entries.
    pub async fn scan(&self, prefix: &str) -> Result<Vec<(String, Record<T>)>, ViewError> {
        check_key(prefix).map_err(|problem| ViewError::invalid(&self.name, problem))?;
        self.read(&format!("{prefix}.>")).await
    }

    /// Reads the newest entry of every key matching `filter` with one ordered consumer,
    /// waiting out a hub that cannot answer (as a read or write does).
    async fn read(&self, filter: &str) -> Result<Vec<(String, Record<T>)>, ViewError> {
        let ride_out = RideOut::start();
        loop {
            match self.read_once(filter).await {
                Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
                read => return read,
            }
        }
    }

    /// One pass of [`View::read`].
    async fn read_once(&self, filter: &str) -> Result<Vec<(String, Record<T>)>, ViewError> {
        let store = self.bucket();
        let mut entries = Vec::new();
        for (key, (_, bytes)) in pass(&self.name, &store, &self.client, filter).await? {
            let record = decode(&bytes)
                .map_err(|e| {
                    ViewError::new(&self.name, format!("entry `{key}` does not decode"), e)
                })?
                .0;
            if let Some(record) = record {
                entries.push((key, record));
            }
        }
        Ok(entries)
    }
}

/// The newest stored value of every key of `store` matching `filter`, with its revision, read
/// with one ordered consumer (deleted keys left out), for view `name` in errors.
async fn pass(
    name: &str,
    store: &kv::Store,
    client: &async_nats::Client,
    filter: &str,
) -> Result<BTreeMap<String, (u64, bytes::Bytes)>, ViewError> {
    let fail = |e: async_nats::Error| ViewError::new(name, "cannot read the bucket", e);
    let consumer = store
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            description: Some(format!("A pass over view `{name}`.")),
            filter_subject: format!("{}{filter}", store.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(e.into()))?;
    // By key: writes made during the pass arrive too, and the newest of each key wins.
    let mut entries = BTreeMap::new();
    if consumer.cached_info().num_pending == 0 {
        remove_consumer(store, consumer.cached_info().name.clone());
        return Ok(entries);
    }
    let consumer_name = consumer.cached_info().name.clone();
    let mut messages = consumer.messages().await.map_err(|e| fail(e.into()))?;
    let reading = async {
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| fail(e.into()))?;
            let info = message.info().map_err(fail)?;
            let pending = info.pending;
            let key = message
                .subject
                .strip_prefix(store.prefix.as_str())
                .unwrap_or(&message.subject)
                .to_owned();
            let headers = message.headers.as_ref();
            let operation = headers
                .and_then(|h| h.get("KV-Operation"))
                .map(|v| v.as_str());
            // A marker the server leaves when it removes a message (a TTL, a purge).
            let marker = headers.is_some_and(|h| h.get("Nats-Marker-Reason").is_some());
            if operation.is_none_or(|op| op == "PUT") && !marker {
                entries.insert(key, (info.stream_sequence, message.payload.clone()));
            } else {
                entries.remove(&key);
            }
            if pending == 0 {
                break;
            }
        }
        Ok::<_, ViewError>(())
    };
    let result = tokio::time::timeout(SCAN_TIMEOUT, reading).await;
    drop(messages);
    remove_consumer(store, consumer_name);
    match result {
        Ok(Ok(())) => Ok(entries),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ViewError::busy(
            name,
            format!("a pass over `{filter}` took longer than {SCAN_TIMEOUT:?}"),
        )),
    }
}

/// Deletes a pass's consumer in the background; the hub would drop it when idle anyway.
fn remove_consumer(store: &kv::Store, name: String) {
    let stream = store.stream.clone();
    tokio::spawn(async move {
        let _ = stream.delete_consumer(&name).await;
    });
}

impl<T: prost::Message + Default + Clone + PartialEq> View<T> {
    /// Applies `change` to the entry for `key` and stores the result; `change` returns `None`
    /// to leave the entry as it is. Runs again on the newer entry if another writer got there
    /// first. Then brings every index in step with the stored entry (also when it did not
    /// change, so that a step interrupted between the two writes is completed on redelivery).
    /// Returns the entry as stored afterwards.
    pub async fn update<F>(&self, key: &str, mut change: F) -> Result<Option<Record<T>>, ViewError>
    where
        F: FnMut(Option<Record<T>>) -> Option<Record<T>>,
    {
        check_key(key).map_err(|problem| ViewError::invalid(&self.name, problem))?;
        let (store, writes) = rebuild::route(&self.binding);
        if !writes {
            // The view holds this event's effect already (see `rebuild::route`).
            return self.get(key).await;
        }
        let ride_out = RideOut::start();
        for attempt in 0..MAX_CONFLICTS {
            let (revision, current) = match self.entry(key).await? {
                Some((revision, record)) => (revision, record),
                None => (0, None),
            };
            let Some(next) = change(current.clone()) else {
                self.check_indexes(key, revision, current.as_ref()).await?;
                return Ok(current);
            };
            let bytes = encode(&next).into();
            // Revision 0 means "only if the key has never been written".
            match store.update(key, bytes, revision).await {
                Ok(written) => {
                    self.sync_indexes(key, written, Some(&next), current.as_ref())
                        .await?;
                    return Ok(Some(next));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || conflicted(&e) => {
                    // Someone else wrote first; back off a little and read again.
                    back_off(attempt).await;
                }
                // A node gone, a cluster electing a leader: read again and write once more,
                // for a while; the revision keeps a write that did land from applying twice.
                Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
                Err(e) => {
                    return Err(ViewError::new(
                        &self.name,
                        format!("cannot write `{key}`"),
                        e,
                    ));
                }
            }
        }
        Err(ViewError::busy(
            &self.name,
            format!("`{key}` kept changing under {MAX_CONFLICTS} attempts to update it"),
        ))
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

    /// Removes the entry for `key`, and marks its entries in the indexes removed. (A process
    /// that stops between the two leaves the index entry; no later update of the key can tell
    /// where it was.)
    pub async fn delete(&self, key: &str) -> Result<(), ViewError> {
        let (store, writes) = rebuild::route(&self.binding);
        if !writes {
            return Ok(());
        }
        let ride_out = RideOut::start();
        if self.indexes.is_empty() {
            loop {
                match store.delete(key).await {
                    Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
                    deleted => {
                        return deleted.map_err(|e| {
                            ViewError::new(&self.name, format!("cannot delete `{key}`"), e)
                        });
                    }
                }
            }
        }
        for attempt in 0..MAX_CONFLICTS {
            let Some((revision, Some(previous))) = self.entry(key).await? else {
                return Ok(());
            };
            match store.delete_expect_revision(key, Some(revision)).await {
                Ok(()) => {
                    // As the entry is now: deleted (the marker's revision), or written again
                    // by someone else since, whose own step files it.
                    let (now, record) = self.entry(key).await?.unwrap_or((0, None));
                    return self
                        .sync_indexes(key, now, record.as_ref(), Some(&previous))
                        .await;
                }
                Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision || conflicted(&e) => {
                    back_off(attempt).await;
                }
                Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
                Err(e) => {
                    return Err(ViewError::new(
                        &self.name,
                        format!("cannot delete `{key}`"),
                        e,
                    ));
                }
            }
        }
        Err(ViewError::busy(
            &self.name,
            format!("`{key}` kept changing under {MAX_CONFLICTS} attempts to delete it"),
        ))
    }

    /// After an update that changed nothing (a redelivery, or an event a command already
    /// applied): reads each index and brings it in step only if a step was cut short before.
    async fn check_indexes(
        &self,
        key: &str,
        revision: u64,
        record: Option<&Record<T>>,
    ) -> Result<(), ViewError> {
        let Some(record) = record else {
            return Ok(());
        };
        for index in &self.indexes {
            if !index.reflects(key, revision, record).await? {
                return self.sync_indexes(key, revision, Some(record), None).await;
            }
        }
        Ok(())
    }

    /// Files the entry for `key` as stored at `revision` (`record`, or none once deleted) in
    /// every index, and marks the index entry `previous` had as removed if its index key
    /// differs. Each index entry remembers the revision it reflects and is only ever replaced by
    /// a newer one, so concurrent writers leave the index as the newest entry is.
    async fn sync_indexes(
        &self,
        key: &str,
        revision: u64,
        record: Option<&Record<T>>,
        previous: Option<&Record<T>>,
    ) -> Result<(), ViewError> {
        for index in &self.indexes {
            if let Some(previous) = previous {
                let old = (index.key)(key, &previous.value);
                let new = record.map(|r| (index.key)(key, &r.value));
                if new.as_ref() != Some(&old) {
                    index.put(&old, revision, None).await?;
                }
            }
            if let Some(record) = record {
                let place = (index.key)(key, &record.value);
                let kept = (index.only)(&record.value).then_some(record);
                index.put(&place, revision, kept).await?;
            }
        }
        Ok(())
    }

    /// The entry's revision (a deleted entry has one too) and its record, if it holds one.
    async fn entry(&self, key: &str) -> Result<Option<(u64, Option<Record<T>>)>, ViewError> {
        Ok(self
            .stored(key)
            .await?
            .map(|(revision, record, _)| (revision, record)))
    }

    /// The entry as stored: its revision, its record if it holds one, and (in an index) the
    /// primary revision it reflects.
    async fn stored(&self, key: &str) -> Result<Option<(u64, Option<Record<T>>, u64)>, ViewError> {
        let ride_out = RideOut::start();
        let store = self.bucket();
        let entry = loop {
            match store.entry(key).await {
                // A node gone, a cluster electing a leader: wait it out, for a while.
                Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
                read => {
                    break read.map_err(|e| {
                        ViewError::new(&self.name, format!("cannot read `{key}`"), e)
                    })?;
                }
            }
        };
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != Operation::Put {
            return Ok(Some((entry.revision, None, 0)));
        }
        let (record, source) = decode(&entry.value)
            .map_err(|e| ViewError::new(&self.name, format!("entry `{key}` does not decode"), e))?;
        Ok(Some((entry.revision, record, source)))
    }
}

/// Where an index puts an entry of its view: its key in the index, from the entry's key in the
/// view and its value.
type IndexKey<T> = Arc<dyn Fn(&str, &T) -> String + Send + Sync>;

/// Whether an index holds an entry of its view.
type IndexFilter<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// A secondary view: the records of a primary view under other keys, so that a query by
/// something other than the primary key reads only what it returns (`deliveries_by_driver`
/// keyed `<driver>.<order>`, scanned by driver).
///
/// Every [`View::update`] of the primary writes the stored record to the index in the same
/// step, so the index follows the primary's own order (newest by event time, idempotent) and
/// a redelivered event completes a step a crash interrupted. Each index entry remembers the
/// revision of the primary entry it copies and is only replaced by a newer one, so two writers
/// of the same entry leave the index as the newer entry is, whichever writes the index last,
/// and a reader never sees an older state come back. [`Index::only`] keeps just the records a
/// query wants (deliveries not yet delivered); the others are marked removed, which readers
/// ([`View::get`], [`View::scan`], [`LiveView`]) do not see. An entry's index key should stay
/// the same for the entry's life (a delivery's driver, a ticket's restaurant); when it changes,
/// the old index entry is marked removed in the step that changes it.
#[derive(Clone)]
pub struct Index<T> {
    view: View<T>,
    key: IndexKey<T>,
    only: IndexFilter<T>,
    /// The highest revision of the index this process wrote.
    written: Arc<AtomicU64>,
}

impl<T> std::fmt::Debug for Index<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("view", &self.view.name)
            .finish_non_exhaustive()
    }
}

impl<T: prost::Message + Default + Clone + PartialEq> Index<T> {
    /// Opens the index view `name` on `hub`, which files an entry `(key, value)` of its primary
    /// view under `index_key(key, value)`.
    pub async fn open(
        hub: &Hub,
        name: &str,
        index_key: impl Fn(&str, &T) -> String + Send + Sync + 'static,
    ) -> Result<Index<T>, ViewError> {
        Ok(Index {
            view: View::open(hub, name).await?,
            key: Arc::new(index_key),
            only: Arc::new(|_| true),
            written: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The same index, holding only the records for which `filter` is true.
    pub fn only(mut self, filter: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.only = Arc::new(filter);
        self
    }

    /// The index as a view of its own, to [`View::scan`] or to copy with [`View::live`].
    pub fn view(&self) -> &View<T> {
        &self.view
    }

    /// The highest revision of the index this process has written or found in step: a live
    /// copy of the index that reached it ([`LiveView::wait_for`]) holds the index as every
    /// update this process finished left it.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether the index reflects the primary's entry for `key` as stored at `revision`, or a
    /// newer one.
    async fn reflects(
        &self,
        key: &str,
        revision: u64,
        record: &Record<T>,
    ) -> Result<bool, ViewError> {
        let place = (self.key)(key, &record.value);
        let (current, source) = self.stored(&place).await?;
        if source < revision {
            return Ok(false);
        }
        // Another task of this process may have written it and not yet counted it.
        self.written.fetch_max(current, Ordering::AcqRel);
        Ok(true)
    }

    /// The index entry at `place`: its own revision (0 if never written) and the primary
    /// revision it reflects (0 if none).
    async fn stored(&self, place: &str) -> Result<(u64, u64), ViewError> {
        check_key(place).map_err(|problem| ViewError::invalid(&self.view.name, problem))?;
        Ok(self
            .view
            .stored(place)
            .await?
            .map_or((0, 0), |(revision, _, source)| (revision, source)))
    }

    /// Writes `record` at `place` as of the primary's `revision` (`None`: marks it removed),
    /// unless the index entry there already reflects that revision or a newer one.
    async fn put(
        &self,
        place: &str,
        revision: u64,
        record: Option<&Record<T>>,
    ) -> Result<(), ViewError> {
        let (store, writes) = rebuild::route(&self.view.binding);
        if !writes {
            return Ok(());
        }
        let ride_out = RideOut::start();
        for attempt in 0..MAX_CONFLICTS {
            let (current, source) = self.stored(place).await?;
            if source >= revision {
                // Another task of this process may have written it and not yet counted it.
                self.written.fetch_max(current, Ordering::AcqRel);
                return Ok(());
            }
            let bytes = encode_indexed(record, revision).into();
            match store.update(place, bytes, current).await {
                Ok(written) => {
                    self.written.fetch_max(written, Ordering::AcqRel);
                    return Ok(());
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || conflicted(&e) => {
                    back_off(attempt).await;
                }
                Err(e) if ride_out.waits_for(&e) => RideOut::pause().await,
                Err(e) => {
                    return Err(ViewError::new(
                        &self.view.name,
                        format!("cannot write `{place}`"),
                        e,
                    ));
                }
            }
        }
        Err(ViewError::busy(
            &self.view.name,
            format!("`{place}` kept changing under {MAX_CONFLICTS} attempts to write it"),
        ))
    }
}

/// A short random pause after losing a compare-and-set, growing with the attempts.
async fn back_off(attempt: usize) {
    let jitter = rand::random::<u64>() % (1 + attempt as u64 * 2);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
}

fn encode<T: prost::Message>(record: &Record<T>) -> Vec<u8> {
    encode_indexed(Some(record), 0)
}

/// An index entry: a copy of the primary's record as of its `source_revision`, or a removal.
fn encode_indexed<T: prost::Message>(record: Option<&Record<T>>, source_revision: u64) -> Vec<u8> {
    match record {
        Some(record) => ViewRecord {
            time: Some(record.time.into()),
            trace: record.trace.clone(),
            value: record.value.encode_to_vec(),
            source_revision,
            removed: false,
        },
        None => ViewRecord {
            source_revision,
            removed: true,
            ..Default::default()
        },
    }
    .encode_to_vec()
}

/// A stored entry's record (none if it is an index's removal) and the primary revision it
/// reflects (0 outside indexes).
fn decode<T: prost::Message + Default>(
    bytes: &[u8],
) -> Result<(Option<Record<T>>, u64), prost::DecodeError> {
    let stored = ViewRecord::decode(bytes)?;
    if stored.removed {
        return Ok((None, stored.source_revision));
    }
    let record = Record {
        value: T::decode(stored.value.as_ref())?,
        time: stored
            .time
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        trace: stored.trace,
    };
    Ok((Some(record), stored.source_revision))
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
        let (back, source) = decode::<Header>(&encode(&record)).unwrap();
        assert_eq!((back, source), (Some(record.clone()), 0));
        let (back, source) = decode::<Header>(&encode_indexed(Some(&record), 7)).unwrap();
        assert_eq!((back, source), (Some(record), 7));
        let (back, source) = decode::<Header>(&encode_indexed::<Header>(None, 9)).unwrap();
        assert_eq!((back, source), (None, 9));
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

    #[test]
    fn keys_are_dot_separated_tokens() {
        assert_eq!(key(&["d-17", "o-42"]), "d-17.o-42");
        assert_eq!(key(&["d.1", "", "a=b c"]), "d=2E1.=.a=3Db=20c");
        assert_ne!(key(&["d.1", "o"]), key(&["d", "1.o"]));
        for tokens in [&["d.1", "o"][..], &["", "x"], &["ünï", "*>"]] {
            assert!(check_key(&key(tokens)).is_ok(), "{tokens:?}");
        }
        assert!(check_key("d-17.o-42").is_ok());
        assert!(check_key("m0000012345").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>"] {
            assert!(check_key(bad).is_err(), "{bad:?} passed");
        }
    }
}
