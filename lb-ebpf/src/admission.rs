//! Whether a VIP admits a packet, on values as the maps hold them: its
//! source rules' verdict (the longest matching prefix decides; a VIP with
//! allow rules refuses a source none of them covers) and its limits (a
//! generic cell rate algorithm per bucket; a source prefix's new flows in
//! two buckets of a fixed sketch). The trie keys and the sketch's buckets
//! a packet reads are built here too, so host tests check them bit for
//! bit.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::maps::{
    ADMIT_ALLOW_LIST, ADMIT_SOURCES, Admission, AdmissionDrop, FAMILY_IPV4, FlowKey, Rate,
    SOURCE_BUCKET_ROWS, SOURCE_DENY, SOURCE_LIST_BITS, SourceRule, SourceV4, SourceV6,
};

/// The IPv4 trie key that finds the longest rule of list `list` covering
/// `src` (network order, in its first 4 bytes).
#[inline(always)]
pub fn source_v4(list: u32, src: &[u8; 16]) -> Key<SourceV4> {
    Key::new(
        SOURCE_LIST_BITS + 32,
        SourceV4 {
            list: list.to_be_bytes(),
            addr: [src[0], src[1], src[2], src[3]],
        },
    )
}

/// The same for IPv6.
#[inline(always)]
pub fn source_v6(list: u32, src: &[u8; 16]) -> Key<SourceV6> {
    Key::new(
        SOURCE_LIST_BITS + 128,
        SourceV6 {
            list: list.to_be_bytes(),
            addr: *src,
        },
    )
}

/// Whether the VIP refuses a source, and why: `rule` is the longest rule
/// of its list that covers the source, if one does.
#[inline(always)]
pub fn judge(admission: &Admission, rule: Option<&SourceRule>) -> Option<AdmissionDrop> {
    if admission.flags & ADMIT_SOURCES == 0 {
        return None;
    }
    match rule {
        Some(rule) if rule.action == SOURCE_DENY => Some(AdmissionDrop::Denied),
        Some(_) => None,
        None if admission.flags & ADMIT_ALLOW_LIST != 0 => Some(AdmissionDrop::NotAllowed),
        None => None,
    }
}

/// The bucket's next theoretical arrival time if a packet arriving at
/// `now` conforms to `rate` (the bucket's is `tat`), else `None`.
#[inline(always)]
pub fn conforms(tat: u64, now: u64, rate: &Rate) -> Option<u64> {
    let start = if tat > now { tat } else { now };
    (start - now <= rate.burst_ns).then_some(start + rate.interval_ns)
}

/// What the source sketch hashes for a packet of `key` to VIP `vip_id`:
/// the source with its host bits cleared (the admission's prefix length
/// for its family) and the VIP; no ports, no destination.
#[inline(always)]
pub fn source_bucket_key(key: &FlowKey, vip_id: u32, admission: &Admission) -> FlowKey {
    let len = if key.family == FAMILY_IPV4 {
        admission.source_len_v4
    } else {
        admission.source_len_v6
    };
    // The address as two big-endian words, each masked without a loop or
    // a branch per byte (the verifier walks every branch).
    let len = u32::from(len);
    let s = &key.src_addr;
    let high = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
    let low = u64::from_be_bytes([s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]]);
    let keep = |bits: u32| !u64::MAX.checked_shr(bits).unwrap_or(0);
    let high = high & keep(len.min(64));
    let low = low & keep(len.saturating_sub(64));
    let mut bucket = FlowKey {
        family: key.family,
        ..FlowKey::default()
    };
    let (high, low) = (high.to_be_bytes(), low.to_be_bytes());
    bucket.src_addr = [
        high[0], high[1], high[2], high[3], high[4], high[5], high[6], high[7], low[0], low[1],
        low[2], low[3], low[4], low[5], low[6], low[7],
    ];
    let vip = vip_id.to_be_bytes();
    bucket.dst_addr[0] = vip[0];
    bucket.dst_addr[1] = vip[1];
    bucket.dst_addr[2] = vip[2];
    bucket.dst_addr[3] = vip[3];
    bucket
}

/// The two buckets (one per row) of a source prefix whose key hashed to
/// `hash`.
#[inline(always)]
pub fn source_buckets(hash: u64) -> (u32, u32) {
    let row = |bits: u64| (bits as u32) & (SOURCE_BUCKET_ROWS - 1);
    (row(hash), SOURCE_BUCKET_ROWS + row(hash >> 32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maps::SOURCE_ALLOW;

    const DENY: SourceRule = SourceRule {
        slot: 7,
        action: SOURCE_DENY,
    };
    const ALLOW: SourceRule = SourceRule {
        slot: 0,
        action: SOURCE_ALLOW,
    };

    #[test]
    fn the_longest_rule_decides_and_an_allow_list_refuses_the_rest() {
        let deny_only = Admission {
            flags: ADMIT_SOURCES,
            ..Admission::default()
        };
        let allow_list = Admission {
            flags: ADMIT_SOURCES | ADMIT_ALLOW_LIST,
            ..Admission::default()
        };
        let none = Admission::default();
        let cases = [
            (none, Some(DENY), None),
            (deny_only, Some(DENY), Some(AdmissionDrop::Denied)),
            (deny_only, Some(ALLOW), None),
            (deny_only, None, None),
            (allow_list, Some(ALLOW), None),
            (allow_list, Some(DENY), Some(AdmissionDrop::Denied)),
            (allow_list, None, Some(AdmissionDrop::NotAllowed)),
        ];
        for (admission, rule, want) in cases {
            assert_eq!(
                judge(&admission, rule.as_ref()),
                want,
                "{admission:?} {rule:?}"
            );
        }
    }

    #[test]
    fn a_bucket_admits_its_rate_and_a_burst_and_only_admitted_packets_move_it() {
        // 1,000 a second, bursts of 11.
        let rate = Rate {
            interval_ns: 1_000_000,
            burst_ns: 10_000_000,
        };
        let now = 5_000_000_000u64;
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..100 {
            if let Some(next) = conforms(tat, now, &rate) {
                tat = next;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 11, "a burst at one instant");
        assert_eq!(conforms(tat, now + 999_999, &rate), None);
        assert!(
            conforms(tat, now + 1_000_000, &rate).is_some(),
            "a ms later"
        );
        // A second on, the bucket holds no debt from the refused packets.
        assert_eq!(
            conforms(tat, now + 1_000_000_000, &rate),
            Some(now + 1_001_000_000)
        );
    }

    #[test]
    fn a_source_is_counted_under_its_prefix_and_vip() {
        let admission = Admission {
            source_len_v4: 24,
            source_len_v6: 60,
            ..Admission::default()
        };
        let mut key = FlowKey {
            family: FAMILY_IPV4,
            src_port: 40000,
            dst_port: 80,
            proto: 6,
            ..FlowKey::default()
        };
        key.src_addr[..4].copy_from_slice(&[198, 18, 99, 77]);
        let bucket = source_bucket_key(&key, 7, &admission);
        assert_eq!(bucket.src_addr[..4], [198, 18, 99, 0]);
        assert_eq!(bucket.dst_addr[..4], [0, 0, 0, 7]);
        assert_eq!((bucket.src_port, bucket.dst_port, bucket.proto), (0, 0, 0));
        let mut other = key;
        other.src_addr[3] = 1;
        other.src_port = 50000;
        assert_eq!(source_bucket_key(&other, 7, &admission), bucket);
        assert_ne!(source_bucket_key(&other, 8, &admission), bucket);
        let mut v6 = FlowKey {
            family: lb_common::maps::FAMILY_IPV6,
            ..FlowKey::default()
        };
        v6.src_addr = [0xff; 16];
        let bucket = source_bucket_key(&v6, 7, &admission);
        assert_eq!(
            bucket.src_addr[..8],
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0]
        );
        assert_eq!(bucket.src_addr[8..], [0; 8]);
        let (first, second) = source_buckets(0x0001_2345_0000_0007);
        assert_eq!(first, 7);
        assert_eq!(second, SOURCE_BUCKET_ROWS + 0x2345);
    }

    #[test]
    fn keys_put_the_list_first_and_count_its_bits() {
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[198, 18, 5, 9]);
        let v4 = source_v4(0x0102_0304, &src);
        let (len, data) = (v4.prefix_len, v4.data);
        assert_eq!(len, 64);
        assert_eq!(data.list, [1, 2, 3, 4]);
        assert_eq!(data.addr, [198, 18, 5, 9]);
        let v6 = source_v6(1025, &[0x20; 16]);
        let (len, data) = (v6.prefix_len, v6.data);
        assert_eq!(len, 160);
        assert_eq!(data.list, [0, 0, 4, 1]);
        assert_eq!(data.addr, [0x20; 16]);
    }
}
