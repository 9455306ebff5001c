//! How long ended migrations stay in the store. Every migration is a record with its whole
//! history, and every list, watch and projection reads them all: without a policy a busy
//! provider's store, and the cost of each of those reads, would grow with every migration ever
//! made. An ended migration (completed, rolled back, aborted, failed) is kept for an age after it
//! ended and, of those younger, only the newest up to a count; migrations that have not ended
//! are never removed.

use std::time::Duration;

use crate::inventory::{InventoryError, decode};
use crate::reassign::Migration;
use crate::store::{Compare, Store, Txn, TxnOutcome};

/// Deletes per transaction.
const BATCH: usize = 128;

/// Which ended migrations are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// An ended migration is removed this long after it ended.
    pub max_age: Duration,
    /// At most this many ended migrations are kept (the newest by end time).
    pub max_ended: usize,
}

impl Default for Retention {
    /// A month, and 10,000 migrations: enough to look back on any incident, small enough that
    /// a full read of the migrations stays in milliseconds.
    fn default() -> Self {
        Self { max_age: Duration::from_secs(30 * 24 * 3600), max_ended: 10_000 }
    }
}

/// When a migration ended: its last step's time (its creation if it has none).
fn ended_ms(m: &Migration) -> u64 {
    m.lifecycle.history.last().map_or(m.created_ms, |h| h.at_ms)
}

/// Removes the ended migrations `retention` does not keep at `now_ms`, each delete conditional on
/// the record being the one read. Returns how many were removed. A record that cannot be read is
/// left alone (the API reports it; deleting what we cannot read would hide the evidence).
pub fn purge_ended<S: Store>(store: &S, retention: &Retention, now_ms: u64) -> Result<usize, InventoryError> {
    let (kvs, _) = store.range("/v1/migrations/")?;
    let mut ended: Vec<(u64, String, u64)> = kvs
        .iter()
        .filter_map(|kv| {
            let m: Migration = decode(kv).ok()?.value;
            m.lifecycle.state.is_final().then(|| (ended_ms(&m), kv.key.clone(), kv.mod_revision))
        })
        .collect();
    // Newest first: the first `max_ended` younger than the age are kept.
    ended.sort_by_key(|e| std::cmp::Reverse(e.0));
    let max_age_ms = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
    let expired: Vec<(String, u64)> = ended
        .into_iter()
        .enumerate()
        .filter(|(i, (at, _, _))| *i >= retention.max_ended || now_ms.saturating_sub(*at) > max_age_ms)
        .map(|(_, (_, key, revision))| (key, revision))
        .collect();
    let delete = |txn: Txn, (key, revision): &(String, u64)| {
        txn.when(Compare::ModRevision(key.clone(), *revision)).delete(key.clone())
    };
    let mut purged = 0;
    for batch in expired.chunks(BATCH) {
        match store.txn(batch.iter().fold(Txn::new(), delete))? {
            TxnOutcome::Committed(_) => purged += batch.len(),
            TxnOutcome::Failed(_) => {
                for one in batch {
                    if let TxnOutcome::Committed(_) = store.txn(delete(Txn::new(), one))? {
                        purged += 1;
                    }
                }
            }
        }
    }
    Ok(purged)
}
