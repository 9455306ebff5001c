//! Traffic patterns a router measures for each shadowed address from the moment the migration is
//! requested, in bounded memory, and the drain forecast made from them (the seed's "predictive
//! optimisation"). Sans-IO like the rest of the core: fed from the packet path, read by the
//! status and the split logic.

mod census;
mod float;
mod forecast;
mod histogram;
mod traffic;

pub use census::AgeCensus;
pub use forecast::{DrainForecast, OpenGroup, Survival, Tail, erfc};
pub use histogram::{LogHistogram, Quantiles};
pub(crate) use traffic::Answer;
pub use traffic::{CanaryReport, PatternsReport, SidePatterns, TrafficPatterns};
