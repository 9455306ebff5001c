//! Following a prefix for as long as it takes: read it, then watch from the revision of that
//! read; when the watch ends (etcd compacted past a watcher that fell behind, a stream cut), read
//! it again and watch again. The follower is told so ([`Change::Reset`], the whole current
//! state): what it holds is then replaced, never patched from a gap.

use std::time::Duration;

use super::{KeyValue, Next, Store, StoreError, WatchEvent, Watcher};

/// How many times a re-read is tried when etcd compacts past it before the watch starts.
const RESET_TRIES: usize = 5;

/// What a follower hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The whole state of the prefix at `revision`: replaces whatever the follower held. The
    /// first change of a follow, and the one after a watch that ended.
    Reset {
        /// Every key of the prefix, in key order.
        snapshot: Vec<KeyValue>,
        /// The store's revision at the read; events that follow are after it.
        revision: u64,
    },
    /// One change after the last one delivered.
    Event(WatchEvent),
}

/// A follower of a prefix that survives compactions.
pub struct Follow<S: Store> {
    store: S,
    prefix: String,
    /// `None` before the first read and after a watch ended: the next call reads again.
    watcher: Option<Watcher>,
    revision: u64,
}

impl<S: Store> Follow<S> {
    /// A follower of `prefix`; its first change is the [`Change::Reset`] of the current state.
    pub fn new(store: S, prefix: &str) -> Self {
        Self { store, prefix: prefix.to_owned(), watcher: None, revision: 0 }
    }

    /// A follower that already holds the prefix as of `revision`: it watches from there, and
    /// resets only if that history is gone.
    pub fn resume(store: S, prefix: &str, revision: u64) -> Self {
        let watcher = store.watch(prefix, revision).ok();
        Self { store, prefix: prefix.to_owned(), watcher, revision }
    }

    /// The revision of the last change delivered (of the read, after a reset).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The next change, waiting up to `timeout` for one (`None`: nothing came). A store error
    /// other than a compaction (etcd unreachable) is returned; the next call reads again.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Change>, StoreError> {
        let Some(watcher) = &self.watcher else { return self.reset().map(Some) };
        match watcher.next_or_end(timeout) {
            Next::Event(event) => {
                self.revision = event.revision();
                Ok(Some(Change::Event(event)))
            }
            Next::Quiet => Ok(None),
            Next::Ended => {
                let failure = watcher.failure();
                self.watcher = None;
                match failure {
                    // Fell behind a compaction, or the stream ended for no reason given.
                    Some(StoreError::Compacted { .. }) | None => self.reset().map(Some),
                    Some(e) => Err(e),
                }
            }
        }
    }

    /// Reads the prefix and watches from the read's revision.
    fn reset(&mut self) -> Result<Change, StoreError> {
        let mut tries = 0;
        loop {
            let (snapshot, revision) = self.store.range(&self.prefix)?;
            match self.store.watch(&self.prefix, revision) {
                Ok(watcher) => {
                    self.watcher = Some(watcher);
                    self.revision = revision;
                    return Ok(Change::Reset { snapshot, revision });
                }
                // Compacted between the read and the watch: read again.
                Err(StoreError::Compacted { .. }) if tries < RESET_TRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}
