//! The flow hash: the one keyed function that turns a 5-tuple into the
//! numbers the XDP program uses to index a VIP's lookup table and the
//! connection table, and that `fulcrum` uses to predict where a flow goes.
//! It is SipHash-1-3 (the kernel's own `hsiphash` on 64-bit) under a secret
//! 128-bit seed, so nobody who lacks the seed can choose 5-tuples that land
//! on one backend or one connection-table set.

use crate::maps::{FAMILY_IPV4, FlowKey, VIP_INDEX_SLOTS, VipKey};

/// The secret key of the flow hash. `fulcrum` generates it once per host
/// (or takes it from the config, so that a group of hosts shares it) and
/// writes it into the data plane's config map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowSeed(pub [u64; 2]);

/// The VIP index's fixed seed: VIPs come from the operator's config, not
/// from the network, so their placement needs no secret.
const VIP_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The 64-bit finaliser of MurmurHash3: full avalanche in two multiplies.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline(always)]
const fn word(bytes: &[u8; 16], half: usize) -> u64 {
    let b = half * 8;
    u64::from_le_bytes([
        bytes[b],
        bytes[b + 1],
        bytes[b + 2],
        bytes[b + 3],
        bytes[b + 4],
        bytes[b + 5],
        bytes[b + 6],
        bytes[b + 7],
    ])
}

/// SipHash's state of four words.
struct Sip([u64; 4]);

impl Sip {
    #[inline(always)]
    fn new(seed: &FlowSeed) -> Sip {
        let [k0, k1] = seed.0;
        Sip([
            k0 ^ 0x736f_6d65_7073_6575,
            k1 ^ 0x646f_7261_6e64_6f6d,
            k0 ^ 0x6c79_6765_6e65_7261,
            k1 ^ 0x7465_6462_7974_6573,
        ])
    }

    #[inline(always)]
    fn round(&mut self) {
        let v = &mut self.0;
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
    }

    /// One compression round per message word.
    #[inline(always)]
    fn absorb(&mut self, m: u64) {
        self.0[3] ^= m;
        self.round();
        self.0[0] ^= m;
    }

    /// The final block (the message length, whole words only) and three
    /// finalisation rounds.
    #[inline(always)]
    fn finish(mut self, words: u64) -> u64 {
        self.absorb((words * 8) << 56);
        self.0[2] ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.0[0] ^ self.0[1] ^ self.0[2] ^ self.0[3]
    }
}

/// SipHash-1-3 of `N` little-endian words under `seed`.
#[inline(always)]
fn siphash13<const N: usize>(seed: &FlowSeed, words: [u64; N]) -> u64 {
    let mut sip = Sip::new(seed);
    let mut i = 0;
    while i < N {
        sip.absorb(words[i]);
        i += 1;
    }
    sip.finish(N as u64)
}

/// Hashes a flow's 5-tuple under the secret seed. Identical in the kernel
/// and in userspace. An IPv4 flow hashes two words (both addresses, then
/// ports, protocol and family), an IPv6 flow five.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: &FlowSeed) -> u64 {
    let tail = (key.src_port as u64)
        | ((key.dst_port as u64) << 16)
        | ((key.proto as u64) << 32)
        | ((key.family as u64) << 40);
    if key.family == FAMILY_IPV4 {
        let addrs = (word(&key.src_addr, 0) & 0xffff_ffff) | (word(&key.dst_addr, 0) << 32);
        siphash13(seed, [addrs, tail])
    } else {
        siphash13(
            seed,
            [
                word(&key.src_addr, 0),
                word(&key.src_addr, 1),
                word(&key.dst_addr, 0),
                word(&key.dst_addr, 1),
                tail,
            ],
        )
    }
}

/// The home slot of a VIP in the VIP index.
#[inline(always)]
pub const fn vip_home_slot(key: &VipKey) -> u32 {
    let tail = (key.port as u64) | ((key.proto as u64) << 16) | ((key.family as u64) << 24);
    let mut h = mix64(VIP_SEED ^ word(&key.addr, 0));
    h = mix64(h ^ word(&key.addr, 1));
    h = mix64(h ^ tail);
    (h as u32) & (VIP_INDEX_SLOTS - 1)
}

/// The lookup-table slot a flow hash selects in a table of `table_size`
/// entries (slot 0 holds the size itself, see `maps::TABLE_HEADER_SLOTS`);
/// `None` for an empty table. It uses the hash's low 32 bits.
#[inline(always)]
pub const fn table_slot(hash: u64, table_size: u32) -> Option<u32> {
    match (hash as u32).checked_rem(table_size) {
        Some(index) => Some(crate::maps::TABLE_HEADER_SLOTS + index),
        None => None,
    }
}

/// The connection-table set of a flow: the hash's top bits under the
/// table's mask (sets are a power of two), independent of the table slot.
#[inline(always)]
pub const fn flow_set(hash: u64, set_mask: u32) -> u32 {
    ((hash >> 40) as u32) & set_mask
}

/// A flow's tag in its set: never zero, which marks an empty way.
#[inline(always)]
pub const fn flow_tag(hash: u64) -> u32 {
    ((hash >> 8) as u32) | 1
}

/// The check word of a connection entry: binds the flow's tag to the state
/// the entry names, so a reader that races a writer on another CPU and sees
/// half of each detects it and treats the entry as a miss.
#[inline(always)]
pub const fn flow_check(tag: u32, backend_id: u32, vip_id: u32, generation: u32) -> u32 {
    let state = (backend_id as u64) | ((generation as u64) << 32);
    tag ^ (mix64(state ^ ((vip_id as u64) << 20)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::PROTO_TCP;

    const SEED: FlowSeed = FlowSeed([0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908]);

    fn v4_flow(src: [u8; 4], src_port: u16) -> FlowKey {
        let mut key = FlowKey {
            src_port,
            dst_port: 80,
            proto: PROTO_TCP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        key.src_addr[..4].copy_from_slice(&src);
        key.dst_addr[..4].copy_from_slice(&[198, 18, 0, 100]);
        key
    }

    /// The reference SipHash-1-3 (the `siphasher` crate) over the same
    /// bytes gives the same value: this is SipHash, not a look-alike.
    #[test]
    fn matches_reference_siphash13() {
        use core::hash::Hasher;
        let key = v4_flow([198, 18, 0, 2], 40000);
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&key.src_addr[..4]);
        bytes[4..8].copy_from_slice(&key.dst_addr[..4]);
        bytes[8..10].copy_from_slice(&key.src_port.to_le_bytes());
        bytes[10..12].copy_from_slice(&key.dst_port.to_le_bytes());
        bytes[12] = key.proto;
        bytes[13] = key.family;
        let mut reference = siphasher::sip::SipHasher13::new_with_keys(SEED.0[0], SEED.0[1]);
        reference.write(&bytes);
        assert_eq!(flow_hash(&key, &SEED), reference.finish());
    }

    /// Flipping any single input bit flips about half the output bits.
    #[test]
    fn every_input_bit_avalanches() {
        for base in [v4_flow([198, 18, 0, 2], 40000), {
            let mut k = v4_flow([0; 4], 40000);
            k.family = 6;
            k.src_addr = [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
            k
        }] {
            let base_hash = flow_hash(&base, &SEED);
            // SAFETY: FlowKey is 40 plain bytes.
            let bytes: [u8; 40] = unsafe { core::mem::transmute(base) };
            let used = if base.family == FAMILY_IPV4 {
                [0..4, 16..20, 32..36]
            } else {
                [0..16, 16..32, 32..36]
            };
            for range in used {
                for bit in range.start * 8..range.end * 8 {
                    let mut flipped = bytes;
                    flipped[bit / 8] ^= 1 << (bit % 8);
                    // SAFETY: as above.
                    let key: FlowKey = unsafe { core::mem::transmute(flipped) };
                    let changed = (flow_hash(&key, &SEED) ^ base_hash).count_ones();
                    assert!(
                        (16..=48).contains(&changed),
                        "bit {bit}: only {changed} of 64 output bits changed"
                    );
                }
            }
        }
    }

    /// Even-only source ports (Linux connect()) still spread over odd and
    /// even buckets and over small moduli.
    #[test]
    fn even_source_ports_spread_evenly() {
        for modulus in [2u32, 3, 4, 7, 65537] {
            let buckets = modulus.min(7) as usize;
            let mut counts = [0u32; 7];
            let samples = 14_000u32;
            for i in 0..samples {
                let port = 32768 + 2 * (i as u16 % 14000);
                let h = table_slot(flow_hash(&v4_flow([198, 18, 0, 2], port), &SEED), modulus)
                    .expect("non-empty")
                    - 1;
                counts[(h as usize) % buckets] += 1;
            }
            let expected = samples as f64 / buckets as f64;
            for (bucket, &count) in counts[..buckets].iter().enumerate() {
                let deviation = (count as f64 - expected).abs() / expected;
                assert!(
                    deviation < 0.08,
                    "mod {modulus} bucket {bucket}: {count} vs {expected}"
                );
            }
        }
    }

    /// A torn entry (the tag of one flow, the state of another) fails its
    /// check.
    #[test]
    fn the_check_binds_tag_and_state() {
        let check = flow_check(0x1234_5679, 7, 3, 1);
        assert_eq!(check, flow_check(0x1234_5679, 7, 3, 1));
        assert_ne!(check, flow_check(0x1234_5679, 8, 3, 1));
        assert_ne!(check, flow_check(0x1234_5679, 7, 4, 1));
        assert_ne!(check, flow_check(0x1234_5679, 7, 3, 2));
        assert_ne!(check, flow_check(0x1234_5671, 7, 3, 1));
    }
}
