//! Header decisions of the XDP programs, as pure functions over header
//! fields so that host unit tests reach them, and the one way they find a
//! header in a frame. `main.rs` (the load balancer) and `decap.rs` (the
//! backends' decapsulation) are the glue that talks to the maps.
#![cfg_attr(not(test), no_std)]

pub mod outer;

use aya_ebpf::programs::XdpContext;
use lb_common::maps::{PROTO_TCP, PROTO_UDP};

/// A pointer to a `T` at `offset` in the frame, if the frame is long
/// enough. Reads the frame's bounds afresh, so it stays right after the
/// frame is grown or shrunk.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// 802.1Q and 802.1ad tag ethertypes, in network byte order as read raw.
const VLAN_ETHERTYPES: [u16; 2] = [0x8100_u16.to_be(), 0x88a8_u16.to_be()];

/// Whether a raw (network-order) ethertype announces a VLAN tag.
#[inline(always)]
pub fn is_vlan(raw_ether_type: u16) -> bool {
    raw_ether_type == VLAN_ETHERTYPES[0] || raw_ether_type == VLAN_ETHERTYPES[1]
}

/// Whether an IPv4 `flags/fragment offset` field marks a fragment (MF set or
/// a non-zero offset). Only the first fragment carries ports, and even it
/// cannot be hashed consistently with the rest, so fragments are passed.
#[inline(always)]
pub fn ipv4_is_fragment(frags: [u8; 2]) -> bool {
    let field = u16::from_be_bytes(frags);
    field & 0x3fff != 0
}

/// The IPv4 header length in bytes if the version/IHL byte is valid.
#[inline(always)]
pub fn ipv4_header_len(vihl: u8) -> Option<usize> {
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 == 4 && ihl >= 5 {
        Some(ihl * 4)
    } else {
        None
    }
}

/// IPv6 next-header value of the fragment extension header.
pub const IPV6_NEXT_FRAGMENT: u8 = 44;

/// Whether an IPv6 next-header value is an extension header (RFC 8200 and
/// the IANA list: hop-by-hop, routing, fragment, ESP, AH, destination
/// options, mobility, HIP, shim6, experimental).
#[inline(always)]
pub fn ipv6_is_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// Whether an ICMP (`family` 4) or ICMPv6 message of type `kind` is an
/// error that quotes the packet it is about: destination unreachable
/// (which carries "fragmentation needed") and time exceeded; for ICMPv6
/// also packet too big.
#[inline(always)]
pub fn icmp_quotes_flow(family: u8, kind: u8) -> bool {
    if family == lb_common::maps::FAMILY_IPV4 {
        kind == 3 || kind == 11
    } else {
        kind == 1 || kind == 2 || kind == 3
    }
}

/// Whether the protocol is one the balancer forwards.
#[inline(always)]
pub fn is_balanced_protocol(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}

/// Whether a TCP segment opens a connection: SYN without ACK. Such a packet
/// always goes through the lookup table, so a reused 5-tuple gets the current
/// table's choice rather than a stale connection entry.
#[inline(always)]
pub fn tcp_opens_flow(flags: u8) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    flags & (SYN | ACK) == SYN
}

/// A TCP segment with FIN or RST: the client is closing its connection.
#[inline(always)]
pub fn tcp_closes_flow(flags: u8) -> bool {
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    flags & (FIN | RST) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fin_and_rst_close_a_flow() {
        assert!(tcp_closes_flow(0x11), "FIN+ACK");
        assert!(tcp_closes_flow(0x04), "RST");
        assert!(tcp_closes_flow(0x14), "RST+ACK");
        assert!(!tcp_closes_flow(0x10), "ACK");
        assert!(!tcp_closes_flow(0x02), "SYN");
    }

    #[test]
    fn vlan_tags_are_recognised_raw() {
        assert!(is_vlan(0x8100_u16.to_be()));
        assert!(is_vlan(0x88a8_u16.to_be()));
        assert!(!is_vlan(0x0800_u16.to_be()));
        assert!(!is_vlan(0x8100));
    }

    #[test]
    fn fragments_are_mf_or_offset() {
        assert!(
            !ipv4_is_fragment([0x40, 0x00]),
            "DF alone is not a fragment"
        );
        assert!(!ipv4_is_fragment([0x00, 0x00]));
        assert!(ipv4_is_fragment([0x20, 0x00]), "MF");
        assert!(ipv4_is_fragment([0x00, 0x01]), "offset 8");
        assert!(ipv4_is_fragment([0x1f, 0xff]), "max offset");
    }

    #[test]
    fn ipv4_header_length_checks_version_and_ihl() {
        assert_eq!(ipv4_header_len(0x45), Some(20));
        assert_eq!(ipv4_header_len(0x4f), Some(60));
        assert_eq!(ipv4_header_len(0x44), None);
        assert_eq!(ipv4_header_len(0x65), None);
    }

    #[test]
    fn ipv6_extension_headers_are_known() {
        for next in [0u8, 43, 44, 60] {
            assert!(ipv6_is_extension(next), "{next}");
        }
        for next in [6u8, 17, 58] {
            assert!(!ipv6_is_extension(next), "{next}");
        }
    }

    #[test]
    fn icmp_errors_quote_flows_and_echoes_do_not() {
        use lb_common::maps::{FAMILY_IPV4, FAMILY_IPV6};
        assert!(icmp_quotes_flow(FAMILY_IPV4, 3), "destination unreachable");
        assert!(icmp_quotes_flow(FAMILY_IPV4, 11), "time exceeded");
        assert!(!icmp_quotes_flow(FAMILY_IPV4, 8), "echo request");
        assert!(icmp_quotes_flow(FAMILY_IPV6, 2), "packet too big");
        assert!(!icmp_quotes_flow(FAMILY_IPV6, 128), "echo request");
    }

    #[test]
    fn only_a_bare_syn_opens_a_flow() {
        assert!(tcp_opens_flow(0x02));
        assert!(tcp_opens_flow(0x02 | 0x08), "SYN+PSH");
        assert!(!tcp_opens_flow(0x12), "SYN+ACK");
        assert!(!tcp_opens_flow(0x10));
        assert!(!tcp_opens_flow(0x01));
    }
}
