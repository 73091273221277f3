//! Whether a VIP admits a packet: its source rules' verdict on values as
//! the maps hold them. The longest matching prefix decides; a VIP with
//! allow rules refuses a source none of them covers. The trie keys a
//! lookup builds live here too, so the host tests check them bit for bit.

use aya_ebpf::maps::lpm_trie::Key;
use lb_common::maps::{
    ADMIT_ALLOW_LIST, ADMIT_SOURCES, Admission, AdmissionDrop, SOURCE_DENY, SOURCE_LIST_BITS,
    SourceRule, SourceV4, SourceV6,
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
