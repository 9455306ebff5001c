//! OpenAPI schemas for the core crate's types that travel in the API (strategy, mode, affinity,
//! ramp). The core crate knows nothing of OpenAPI, so these mirrors describe the same JSON; the
//! tests below check that every value of the real types reads back through its mirror, so a
//! change in the core crate that the document does not follow fails here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How inbound traffic is divided: `flow` (what ipshadow does), `packet` (the seed's literal
/// per-packet split, to show why it breaks TCP), `instant` (the classic move).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Strategy)]
pub enum StrategySchema {
    /// Per flow.
    Flow,
    /// Per packet.
    Packet,
    /// Everything at once.
    Instant,
}

/// Whether B runs its own stack (`independent`) or is a state-synchronised copy of A (`replica`).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Mode)]
pub enum ModeSchema {
    /// B independent.
    Independent,
    /// B a replica of A.
    Replica,
}

/// What a split decision pins: each `flow`, or every flow of a `client` address.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Affinity)]
pub enum AffinitySchema {
    /// Per flow.
    Flow,
    /// Per client address.
    Client,
}

/// How the split rises once B's lease is bound.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = Ramp)]
pub enum RampSchema {
    /// Rises continuously from 0.
    Linear {
        /// Percentage points per second (positive).
        pct_per_sec: f64,
    },
    /// Holds each step's percentage for its duration; the last holds until cut-over.
    Steps {
        /// The steps; percentages must not decrease.
        steps: Vec<RampStepSchema>,
    },
}

/// One step of a stepped ramp.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RampStep)]
pub struct RampStepSchema {
    /// Split during this step, percent.
    pub pct: f64,
    /// How long the step lasts, milliseconds.
    pub hold_ms: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ipshadow_core::{Affinity, Mode, Ramp, Strategy};
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::*;

    /// `real` serialises to JSON its mirror reads, and the mirror writes the same JSON back.
    fn mirrors<R: Serialize, M: Serialize + DeserializeOwned>(real: R) {
        let json = serde_json::to_value(&real).unwrap();
        let mirror: M = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&mirror).unwrap(), json);
    }

    #[test]
    fn the_mirrors_describe_the_real_json() {
        for s in [Strategy::Flow, Strategy::Packet, Strategy::Instant] {
            mirrors::<_, StrategySchema>(s);
        }
        for m in [Mode::Independent, Mode::Replica] {
            mirrors::<_, ModeSchema>(m);
        }
        for a in [Affinity::Flow, Affinity::Client] {
            mirrors::<_, AffinitySchema>(a);
        }
        mirrors::<_, RampSchema>(Ramp::default());
        mirrors::<_, RampSchema>(Ramp::Linear { pct_per_sec: 2.5 });
    }
}
