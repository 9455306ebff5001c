//! The durable lease store (redb, one file). A batch of lease changes is one write transaction
//! whose commit returns only once it is on disk (redb's default `Durability::Immediate`
//! fsyncs), so the caller sends its ACKs after `commit` and a crash or power loss never takes
//! back an ACKed lease. The driver commits every change of a batch of requests together: one
//! fsync for many ACKs (group commit).

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::lease::{ClientKey, Lease, LeaseChange};
use crate::plan::MigrationPlan;

/// Leases, keyed by address (4 bytes) and client key (JSON), valued by the lease (JSON).
const LEASES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("leases");
/// Migration plans by id, valued by the plan (JSON): a plan's state survives a restart.
const PLANS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("plans");

/// A store that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be created or opened (missing directory, permissions, a lock held by
    /// another server, or a file that is not a redb database).
    #[error("lease store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<redb::DatabaseError>,
    },
    /// A read or write failed (I/O error, corruption detected by redb).
    #[error("lease store {path}: {what}: {detail}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// redb's description.
        detail: String,
    },
    /// A stored lease could not be read back.
    #[error("lease store {path}: a stored lease is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoding error.
        detail: String,
    },
}

/// The lease store.
pub struct LeaseStore {
    db: Database,
    path: PathBuf,
}

fn key(ip: std::net::Ipv4Addr, client: &ClientKey) -> Vec<u8> {
    let mut k = ip.octets().to_vec();
    // Serialising a ClientKey to JSON cannot fail: it has no maps and no non-string keys.
    k.extend(serde_json::to_vec(client).unwrap_or_default());
    k
}

impl LeaseStore {
    /// Opens the store at `path`, creating the file if it does not exist (its directory must);
    /// a caller that must not start empty checks for the file first.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |e: redb::DatabaseError| StoreError::Open { path: path.to_owned(), source: Box::new(e) };
        // Owner-only from its first byte (it names every client and its address): created 0600
        // here, before redb opens it, rather than with the umask's mode and tightened later.
        let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
        if let Err(e) = created
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(open_error(redb::DatabaseError::Storage(redb::StorageError::Io(e))));
        }
        let db = Database::create(path).map_err(open_error)?;
        let store = Self { db, path: path.to_owned() };
        // Make sure the table exists, so a fresh store loads as empty.
        store.commit(&[])?;
        Ok(store)
    }

    fn io(&self, what: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io { path: self.path.clone(), what, detail: e.to_string() }
    }

    /// Every stored lease.
    pub fn load(&self) -> Result<Vec<Lease>, StoreError> {
        self.read_all(LEASES)
    }

    /// Every stored migration plan.
    pub fn load_plans(&self) -> Result<Vec<MigrationPlan>, StoreError> {
        self.read_all(PLANS)
    }

    /// Every value of `table`, decoded from JSON.
    fn read_all<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<'_, K, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.io("begin read", e))?;
        let table = tx.open_table(table).map_err(|e| self.io("open table", e))?;
        let mut values = Vec::new();
        for row in table.iter().map_err(|e| self.io("read", e))? {
            let (_, value) = row.map_err(|e| self.io("read", e))?;
            values.push(
                serde_json::from_slice(value.value())
                    .map_err(|e| StoreError::Corrupt { path: self.path.clone(), detail: e.to_string() })?,
            );
        }
        Ok(values)
    }

    /// Applies `changes` in one transaction; returns once they are on disk.
    pub fn commit(&self, changes: &[LeaseChange]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.io("begin write", e))?;
        {
            let mut table = tx.open_table(LEASES).map_err(|e| self.io("open table", e))?;
            let mut plans = tx.open_table(PLANS).map_err(|e| self.io("open table", e))?;
            for change in changes {
                match change {
                    LeaseChange::Put(lease) => {
                        let value = serde_json::to_vec(lease).map_err(|e| self.io("encode", e))?;
                        table.insert(key(lease.ip, &lease.client).as_slice(), value.as_slice()).map(|_| ())
                    }
                    LeaseChange::Delete { ip, client } => table.remove(key(*ip, client).as_slice()).map(|_| ()),
                    LeaseChange::Plan(plan) => {
                        let value = serde_json::to_vec(plan).map_err(|e| self.io("encode", e))?;
                        plans.insert(plan.id, value.as_slice()).map(|_| ())
                    }
                }
                .map_err(|e| self.io("write", e))?;
            }
        }
        tx.commit().map_err(|e| self.io("commit", e))
    }
}
