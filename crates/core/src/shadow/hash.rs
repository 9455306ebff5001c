//! The split hash: which side a new flow goes to. One function, computed by the core and by the
//! XDP fast path (in BPF C), so both decide every new flow alike; it is defined byte for byte
//! here.

use siphasher::sip::SipHasher13;

use super::entry::Affinity;
use crate::flow::FlowKey;

/// Mixed into the second SipHash key: "ipshadow" in ASCII, so that k1 differs from k0 even for a
/// salt whose halves are equal.
pub const SPLIT_KEY_TWEAK: u64 = 0x6970_7368_6164_6f77;

/// The 32-bit split hash of a flow under an entry's `salt`: a new flow goes to B (the
/// destination) when `split_hash(..) as u64 < split_threshold(pct)`.
///
/// SipHash-1-3 (one compression round, three finalization rounds) keyed with
/// `k0 = salt` and `k1 = salt.rotate_left(32) ^ SPLIT_KEY_TWEAK`, over 16 bytes: `w0` then `w1`,
/// each little-endian, where
///
/// - `w0 = client_ip << 32 | shadow_ip` (addresses as numbers, i.e. read in network order:
///   `ntohl` of the header field),
/// - `w1 = client_port << 32 | shadow_port << 16 | protocol << 8 | 1` (ports as numbers).
///
/// As SipHash reads its message in little-endian 64-bit words, a C implementation takes
/// `m0 = w0`, `m1 = w1` and the final block `16 << 56`. The result is the upper 32 bits of the
/// 64-bit hash. With [`Affinity::Client`] the key hashed is
/// [`FlowKey::client_pin`]`(client_ip, shadow_ip)` (ports 0, protocol 0), so every flow of a
/// client goes the same way.
///
/// Keyed with the entry's salt, not a per-process key: routers (and a restarted router) must
/// agree. SipHash, not a faster mix, because remote clients choose the keys and a BPF program must
/// compute it with a few dozen instructions and no tables.
pub fn split_hash(salt: u64, key: &FlowKey, affinity: Affinity) -> u32 {
    let (w0, w1) = match affinity {
        Affinity::Flow => key.words(),
        Affinity::Client => FlowKey::client_pin(key.client_ip, key.shadow_ip).words(),
    };
    let mut message = [0u8; 16];
    message[..8].copy_from_slice(&w0.to_le_bytes());
    message[8..].copy_from_slice(&w1.to_le_bytes());
    let hasher = SipHasher13::new_with_keys(salt, salt.rotate_left(32) ^ SPLIT_KEY_TWEAK);
    (hasher.hash(&message) >> 32) as u32
}

/// The split threshold for `pct` per cent of new flows to B: `round(pct / 100 * 2^32)`, so 0 %
/// sends none (no hash is below 0) and 100 % all (every hash is below 2^32). `pct` is clamped to
/// 0..=100 (not a number: 0).
pub fn split_threshold(pct: f64) -> u64 {
    // `as` saturates, and NaN converts to 0.
    ((pct.clamp(0.0, 100.0) / 100.0) * 4_294_967_296.0).round() as u64
}

#[cfg(test)]
mod tests {
    use core::hash::Hasher;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::flow::Side;

    fn key(n: u32) -> FlowKey {
        FlowKey {
            client_ip: Ipv4Addr::from_bits(0xc633_6400 | (n & 0xff)),
            client_port: 40_000u16.wrapping_add(n as u16),
            shadow_ip: Ipv4Addr::new(10, 0, 0, 10),
            shadow_port: 443,
            protocol: 6,
        }
    }

    /// SipHash-1-3 written out as the reference paper gives it (Aumasson and Bernstein, 2012),
    /// for exactly two message words: what the BPF program implements.
    fn reference(k0: u64, k1: u64, m0: u64, m1: u64) -> u64 {
        let mut v = [
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ];
        let round = |v: &mut [u64; 4]| {
            v[0] = v[0].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(13) ^ v[0];
            v[0] = v[0].rotate_left(32);
            v[2] = v[2].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(16) ^ v[2];
            v[0] = v[0].wrapping_add(v[3]);
            v[3] = v[3].rotate_left(21) ^ v[0];
            v[2] = v[2].wrapping_add(v[1]);
            v[1] = v[1].rotate_left(17) ^ v[2];
            v[2] = v[2].rotate_left(32);
        };
        for m in [m0, m1, 16u64 << 56] {
            v[3] ^= m;
            round(&mut v);
            v[0] ^= m;
        }
        v[2] ^= 0xff;
        for _ in 0..3 {
            round(&mut v);
        }
        v[0] ^ v[1] ^ v[2] ^ v[3]
    }

    /// Fixed values the BPF program's own test must reproduce. Computed once with this function;
    /// a change here changes which VM every new flow goes to.
    #[test]
    fn fixed_vectors() {
        let k = FlowKey {
            client_ip: Ipv4Addr::new(198, 51, 100, 7),
            client_port: 40_000,
            shadow_ip: Ipv4Addr::new(10, 0, 0, 10),
            shadow_port: 443,
            protocol: 6,
        };
        let got = [
            split_hash(0, &k, Affinity::Flow),
            split_hash(0x0123_4567_89ab_cdef, &k, Affinity::Flow),
            split_hash(0x0123_4567_89ab_cdef, &k, Affinity::Client),
            split_hash(u64::MAX, &FlowKey { protocol: 17, client_port: 53, ..k }, Affinity::Flow),
        ];
        assert_eq!(got, VECTORS, "{got:#010x?}");
    }

    const VECTORS: [u32; 4] = [0xa962_27cb, 0x332f_3efc, 0x9b4c_284c, 0xd0c4_2338];

    #[test]
    fn matches_siphash_1_3_over_the_le_words() {
        for (n, salt) in [(0, 0u64), (1, 7), (2, 0x0123_4567_89ab_cdef), (3, u64::MAX)] {
            let k = key(n);
            let (w0, w1) = k.words();
            let k1 = salt.rotate_left(32) ^ SPLIT_KEY_TWEAK;
            let mut h = SipHasher13::new_with_keys(salt, k1);
            h.write(&w0.to_le_bytes());
            h.write(&w1.to_le_bytes());
            let expected = h.finish();
            assert_eq!(split_hash(salt, &k, Affinity::Flow), (expected >> 32) as u32);
            assert_eq!(reference(salt, k1, w0, w1), expected, "salt {salt:#x}");
        }
    }

    #[test]
    fn client_affinity_hashes_the_client_alone() {
        let (a, b) = (key(1), FlowKey { client_port: 1, shadow_port: 80, protocol: 17, ..key(1) });
        assert_eq!(split_hash(9, &a, Affinity::Client), split_hash(9, &b, Affinity::Client));
        let pin = FlowKey::client_pin(a.client_ip, a.shadow_ip);
        assert_eq!(split_hash(9, &a, Affinity::Client), split_hash(9, &pin, Affinity::Flow));
    }

    #[test]
    fn thresholds_span_none_to_all() {
        assert_eq!(split_threshold(0.0), 0);
        assert_eq!(split_threshold(100.0), 1 << 32);
        assert_eq!(split_threshold(50.0), 1 << 31);
        assert_eq!(split_threshold(-3.0), 0);
        assert_eq!(split_threshold(250.0), 1 << 32);
        assert_eq!(split_threshold(f64::NAN), 0);
        // Every hash is below the 100 % threshold; none below 0 %.
        assert!(u64::from(u32::MAX) < split_threshold(100.0));
    }

    proptest::proptest! {
        /// Over many keys the share sent to B is the split, whatever the salt.
        #[test]
        fn share_to_b_is_the_split(salt in proptest::prelude::any::<u64>(), pct in 0.0f64..=100.0) {
            let threshold = split_threshold(pct);
            let n = 20_000u32;
            let to_b = (0..n)
                .filter(|&i| {
                    let k = FlowKey {
                        client_ip: Ipv4Addr::from_bits(0x6440_0000 ^ i.wrapping_mul(2_654_435_761)),
                        client_port: 1024 + (i % 50_000) as u16,
                        ..key(0)
                    };
                    let side = if u64::from(split_hash(salt, &k, Affinity::Flow)) < threshold {
                        Side::Destination
                    } else {
                        Side::Source
                    };
                    side == Side::Destination
                })
                .count();
            let share = to_b as f64 * 100.0 / f64::from(n);
            // Binomial standard deviation at 50 %: 0.35 points; 1.5 points is over 4 sigma.
            proptest::prop_assert!((share - pct).abs() < 1.5, "{share} % to B at split {pct} %");
        }
    }
}
