//! The key of the hash tables that remote input fills (the flow table, the fragment table).
//!
//! A key known in advance lets remote clients choose flow keys that all land in one probe run:
//! every lookup then walks the whole run. So the product draws the key at random once per
//! process; the simulator and tests fix it so that a run is reproducible for its seed (the table's
//! slot order decides which embryonic flow is evicted and in which order flows expire).
//!
//! Both halves of foldhash's key are drawn: the per-table seed and the shared seed. With the
//! shared seed left at foldhash's published constant, a key whose second word XORs that constant
//! to a power of two hashes to a rotation of its first word, whatever the per-table seed: the
//! collisions would not depend on the secret.
//!
//! The split hash is not keyed here: it is seeded by each migration's salt, so that routers
//! restarted or running side by side send a flow to the same VM.

use core::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::fast::SeedableRandomState;

/// The hash builder of a table fed by remote input: `Some(key)` fixes it (the simulator and
/// tests), `None` draws it at random for this process (the product).
pub(crate) fn hasher(key: Option<u64>) -> SeedableRandomState {
    match key {
        // The same hash as `foldhash::fast::FixedState::with_seed(key)`.
        Some(key) => SeedableRandomState::with_seed(key, SharedSeed::global_fixed()),
        None => {
            static SHARED: OnceLock<SharedSeed> = OnceLock::new();
            let shared = SHARED.get_or_init(|| SharedSeed::from_u64(os_random(0)));
            SeedableRandomState::with_seed(os_random(1), shared)
        }
    }
}

/// 64 bits from the operating system's random source. std's `RandomState` keys its SipHash from
/// it (getrandom(2) on Linux) and SipHash of any input under a secret key is uniform to whoever
/// does not know the key; foldhash's own random state mixes addresses and the time instead, which
/// its documentation calls no defence against a determined attacker. No extra dependency.
fn os_random(tag: u64) -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_key_is_the_old_fixed_state_and_random_keys_differ() {
        let words = (0x0123_4567_89ab_cdef_u64, 0xfedc_ba98_7654_3211_u64);
        let fixed = foldhash::fast::FixedState::with_seed(0x1b5d_ad0e).hash_one(words);
        assert_eq!(hasher(Some(0x1b5d_ad0e)).hash_one(words), fixed);
        assert_ne!(hasher(None).hash_one(words), hasher(None).hash_one(words));
    }
}
