//! ipshadow's control plane (issue 6, in progress): the store the network manager keeps its
//! inventory and migrations in, with revisions and watches (embedded on redb today, etcd
//! later), the migration's state machine with its history, and the versioned REST API in
//! front of them ([`api`]).

pub mod admission;
pub mod api;
pub mod bus;
pub mod election;
pub mod extend;
pub mod inventory;
pub mod manager;
pub mod migration;
pub mod mirror;
pub mod orchestrator;
pub mod plan;
pub mod project;
pub mod reassign;
pub mod retention;
pub mod store;

pub use store::etcd::{DEFAULT_ETCD_PREFIX, EtcdStore};
pub use store::redb::RedbStore;
pub use store::{Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent, Watcher};
