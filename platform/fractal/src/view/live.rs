//! A live copy of a view in the service's memory, for reads on every event or request.
//!
//! What a reader may see:
//! - The copy follows the bucket through a watch, entry by entry in the bucket's order, so it
//!   never goes back in time and never shows a write without the writes before it.
//! - Without [`LiveView::sync`], it lags the bucket by the watch's delivery: usually well under
//!   a millisecond on one host, longer while the hub is busy or unreachable. It is not
//!   read-your-own-writes by itself: a write acknowledged by the hub may not be in the copy yet.
//! - After `sync()` returns, the copy holds every write the hub had acknowledged when `sync()`
//!   was called, from any process: a writer that calls it after its own write reads that
//!   write, and two handlers that each write and then `sync()` before reading see at least one
//!   of each other's writes. `sync()` costs one request to the hub, whatever the view holds.
//! - [`LiveView::wait_for`] a revision this process wrote (an [`super::Index::written`]) gives
//!   read-your-own-writes without asking the hub; another process's copy may still lag.
//! - [`LiveView::watch_prefix`] wakes a long poll when an entry under its prefix changes, and
//!   only then.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use futures::StreamExt as _;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Record, View, ViewError, decode};

/// How long [`LiveView::sync`] waits for the copy to catch up before it is an error.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// A copy of a [`View`] in memory, kept current from its bucket (see the module's docs for what
/// a reader may see). Cheap to clone; the copy stops following the bucket when the last clone
/// is dropped.
#[derive(Clone)]
pub struct LiveView<T> {
    inner: Arc<Inner<T>>,
}

impl<T> std::fmt::Debug for LiveView<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveView")
            .field("view", &self.inner.name)
            .field("revision", &*self.inner.seen.borrow())
            .finish_non_exhaustive()
    }
}

/// Senders of the revision of the latest change under each watched prefix.
type Watchers = Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>>;

/// Changes under one prefix of a [`LiveView`], from [`LiveView::watch_prefix`].
#[derive(Debug)]
pub struct PrefixWatch {
    changes: tokio::sync::watch::Receiver<u64>,
}

impl PrefixWatch {
    /// Waits for a change under the prefix since the watch started (or since the last call),
    /// for at most `timeout`; returns whether one came.
    pub async fn changed(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.changes.changed()).await,
            Ok(Ok(()))
        )
    }
}

struct Inner<T> {
    name: String,
    copy: Arc<RwLock<BTreeMap<String, Record<T>>>>,
    watchers: Watchers,
    /// The bucket's revision the copy has reached.
    seen: tokio::sync::watch::Receiver<u64>,
    stream: async_nats::jetstream::stream::Stream,
    _stop: DropGuard,
}

impl<T: prost::Message + Default + Clone + PartialEq + Send + Sync + 'static> View<T> {
    /// A live copy of this view, loaded and following the bucket once this returns.
    pub async fn live(&self) -> Result<LiveView<T>, ViewError> {
        // A copy follows one bucket: a rebuild, which switches buckets, refuses this view.
        self.binding
            .live
            .store(true, std::sync::atomic::Ordering::Release);
        let copy = Arc::new(RwLock::new(BTreeMap::new()));
        let watchers = Watchers::default();
        let (seen_tx, seen) = tokio::sync::watch::channel(0);
        let stop = CancellationToken::new();
        tokio::spawn(follow(
            self.clone(),
            copy.clone(),
            watchers.clone(),
            seen_tx,
            stop.clone(),
        ));
        let live = LiveView {
            inner: Arc::new(Inner {
                name: self.name.clone(),
                copy,
                watchers,
                seen,
                stream: self.bucket().stream.clone(),
                _stop: stop.drop_guard(),
            }),
        };
        live.sync().await?;
        Ok(live)
    }
}

impl<T: Clone> LiveView<T> {
    /// Waits until the copy holds every write the hub acknowledged before this call.
    pub async fn sync(&self) -> Result<(), ViewError> {
        let name = &self.inner.name;
        let last = self
            .inner
            .stream
            .get_info()
            .await
            .map_err(|e| ViewError::new(name, "cannot read the bucket's revision", e))?
            .state
            .last_sequence;
        self.wait_for(last).await
    }

    /// Waits until the copy has reached `revision` of the bucket (one this process wrote, such
    /// as [`super::Index::written`]): read-your-own-writes without asking the hub.
    pub async fn wait_for(&self, revision: u64) -> Result<(), ViewError> {
        let name = &self.inner.name;
        let mut seen = self.inner.seen.clone();
        let reached = tokio::time::timeout(SYNC_TIMEOUT, seen.wait_for(|&at| at >= revision))
            .await
            .map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(ViewError::busy(name, "the live copy stopped")),
            Err(_) => Err(ViewError::busy(
                name,
                format!(
                    "the live copy is at revision {} of {revision} after {SYNC_TIMEOUT:?}",
                    self.revision()
                ),
            )),
        }
    }

    /// Starts watching for changes to entries under the whole tokens of `prefix`, for a long
    /// poll: watch, read, and if there is nothing yet, wait with [`PrefixWatch::changed`]. Only
    /// the watchers of a changed entry's prefixes are woken.
    pub fn watch_prefix(&self, prefix: &str) -> PrefixWatch {
        let mut watchers = self
            .inner
            .watchers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changes = watchers
            .entry(prefix.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe();
        PrefixWatch { changes }
    }

    /// The bucket's revision the copy has reached.
    pub fn revision(&self) -> u64 {
        *self.inner.seen.borrow()
    }

    /// Runs `read` on the copy's entries (by key) as they are now, without copying them.
    pub fn read<R>(&self, read: impl FnOnce(&BTreeMap<String, Record<T>>) -> R) -> R {
        let copy = self
            .inner
            .copy
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        read(&copy)
    }

    /// The entry for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Record<T>> {
        self.read(|entries| entries.get(key).cloned())
    }

    /// The entries whose keys start with the whole tokens of `prefix`, in key order; costs
    /// what it returns.
    pub fn scan(&self, prefix: &str) -> Vec<(String, Record<T>)> {
        // Keys under `p.` sort between `p.` and `p/` (`/` follows `.`).
        let (from, to) = (format!("{prefix}."), format!("{prefix}/"));
        self.read(|entries| {
            entries
                .range(from..to)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// How many entries the copy holds.
    pub fn len(&self) -> usize {
        self.read(BTreeMap::len)
    }

    /// Whether the copy holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How often a copy that has not moved checks whether its bucket has: a watch whose server
/// died with the consumer behind it may neither deliver nor fail (its client retries the
/// consumer quietly), so the copy starts it again itself.
const CHECK_EVERY: Duration = Duration::from_secs(3);

/// Follows the bucket from its first revision into `copy` until `stop`, starting the watch
/// again after the revision it reached whenever it ends, fails, or stands still while the
/// bucket moves on.
async fn follow<T: prost::Message + Default + Clone + PartialEq>(
    view: View<T>,
    copy: Arc<RwLock<BTreeMap<String, Record<T>>>>,
    watchers: Watchers,
    seen: tokio::sync::watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut next = 1;
    loop {
        let bucket = view.bucket();
        let watch = tokio::select! {
            _ = stop.cancelled() => return,
            watch = bucket.watch_all_from_revision(next) => watch,
        };
        match watch {
            Ok(mut watch) => {
                let mut check = tokio::time::interval_at(
                    tokio::time::Instant::now() + CHECK_EVERY,
                    CHECK_EVERY,
                );
                let mut checked_at = next;
                loop {
                    let entry = tokio::select! {
                        _ = stop.cancelled() => return,
                        entry = watch.next() => entry,
                        _ = check.tick() => {
                            if next == checked_at && behind(&view, next).await {
                                tracing::warn!(view = %view.name, revision = next - 1, "The live copy's watch stands still while its bucket moves on; starting it again.");
                                break;
                            }
                            checked_at = next;
                            continue;
                        }
                    };
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => {
                            tracing::warn!(view = %view.name, error = %e, "The live copy lost its watch; starting it again.");
                            break;
                        }
                        None => break,
                    };
                    let record = match entry.operation {
                        Operation::Put => match decode::<T>(&entry.value) {
                            // An index's removal marker holds no record.
                            Ok((record, _)) => record,
                            Err(e) => {
                                tracing::error!(view = %view.name, key = %entry.key, error = %e, "An entry does not decode; the live copy leaves it out.");
                                None
                            }
                        },
                        Operation::Delete | Operation::Purge => None,
                    };
                    {
                        let mut copy = copy.write().unwrap_or_else(PoisonError::into_inner);
                        match record {
                            Some(record) => copy.insert(entry.key.clone(), record),
                            None => copy.remove(&entry.key),
                        };
                    }
                    next = entry.revision + 1;
                    seen.send_replace(entry.revision);
                    notify(&watchers, &entry.key, entry.revision);
                }
            }
            Err(e) => {
                tracing::warn!(view = %view.name, error = %e, "The live copy cannot watch its bucket; retrying.");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Whether `view`'s bucket holds a revision at or past `next`, one the copy has not reached. A
/// bucket that cannot be asked counts as not behind: the next check asks again.
async fn behind<T>(view: &View<T>, next: u64) -> bool {
    let info = tokio::time::timeout(CHECK_EVERY, view.bucket().stream.get_info()).await;
    matches!(info, Ok(Ok(info)) if info.state.last_sequence >= next)
}

/// Wakes the watchers of every prefix of `key` (`a`, `a.b`, `a.b.c` for `a.b.c`), and forgets
/// those nobody watches any more.
fn notify(watchers: &Watchers, key: &str, revision: u64) {
    let mut watchers = watchers.lock().unwrap_or_else(PoisonError::into_inner);
    if watchers.is_empty() {
        return;
    }
    let ends = key
        .char_indices()
        .filter(|(_, c)| *c == '.')
        .map(|(i, _)| i)
        .chain([key.len()]);
    for end in ends {
        let prefix = &key[..end];
        if let Some(sender) = watchers.get(prefix) {
            if sender.is_closed() {
                watchers.remove(prefix);
            } else {
                sender.send_replace(revision);
            }
        }
    }
}
