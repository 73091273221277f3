//! The flow hash: the one function that turns a 5-tuple into the number the
//! XDP program uses to index a VIP's lookup table, and that `fulcrum` uses to
//! predict where a flow goes. It mixes every input bit into every output bit,
//! so client port patterns (Linux `connect()` picks only even ports) cannot
//! skew the spread.

use crate::maps::{FlowKey, VIP_INDEX_SLOTS, VipKey};

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

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

/// Hashes a flow's 5-tuple. Identical in the kernel and in userspace.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let ports_proto = (key.src_port as u64)
        | ((key.dst_port as u64) << 16)
        | ((key.proto as u64) << 32)
        | ((key.family as u64) << 40);
    let mut h = mix64(SEED ^ word(&key.src_addr, 0));
    h = mix64(h ^ word(&key.src_addr, 1));
    h = mix64(h ^ word(&key.dst_addr, 0));
    h = mix64(h ^ word(&key.dst_addr, 1));
    h = mix64(h ^ ports_proto);
    (h ^ (h >> 32)) as u32
}

/// The home slot of a VIP in the VIP index.
#[inline(always)]
pub const fn vip_home_slot(key: &VipKey) -> u32 {
    let tail = (key.port as u64) | ((key.proto as u64) << 16) | ((key.family as u64) << 24);
    let mut h = mix64(SEED ^ word(&key.addr, 0));
    h = mix64(h ^ word(&key.addr, 1));
    h = mix64(h ^ tail);
    (h as u32) & (VIP_INDEX_SLOTS - 1)
}

/// The lookup-table slot a flow hash selects in a table of `table_size`
/// entries (slot 0 holds the size itself, see `maps::TABLE_HEADER_SLOTS`);
/// `None` for an empty table.
#[inline(always)]
pub const fn table_slot(hash: u32, table_size: u32) -> Option<u32> {
    match hash.checked_rem(table_size) {
        Some(index) => Some(crate::maps::TABLE_HEADER_SLOTS + index),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{FAMILY_IPV4, PROTO_TCP};

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

    /// Flipping any single input bit flips about half the output bits.
    #[test]
    fn every_input_bit_avalanches() {
        let base = v4_flow([198, 18, 0, 2], 40000);
        let base_hash = flow_hash(&base);
        let bytes: [u8; 40] = unsafe { core::mem::transmute(base) };
        for bit in 0..(36 * 8) {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            let key: FlowKey = unsafe { core::mem::transmute(flipped) };
            let changed = (flow_hash(&key) ^ base_hash).count_ones();
            assert!(
                (6..=26).contains(&changed),
                "bit {bit}: only {changed} of 32 output bits changed"
            );
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
                let h = flow_hash(&v4_flow([198, 18, 0, 2], port)) % modulus;
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
}
