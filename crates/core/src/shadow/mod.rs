//! The seed's `ShadowingEntry` and its table, plus the split controller that moves
//! `traffic_split_percentage` over time.

mod entry;
mod hash;
mod params;
mod split;
mod table;

pub use entry::{
    Affinity, ConflictCounters, EntryCounters, EntryState, MigrationOptions, Mode, ShadowingEntry, Strategy, VmId,
};
pub use hash::{SPLIT_KEY_TWEAK, split_hash, split_threshold};
pub use params::{CongestionControlParameters, Ramp, RampStep};
pub use split::{Signal, SignalCounts, SplitChange, SplitController, SplitReason};
pub(crate) use table::{Located, Shadow, ShadowingTable};
