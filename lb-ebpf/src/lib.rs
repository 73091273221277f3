//! Header decisions of the XDP programs, as pure functions over header
//! fields so that host unit tests reach them, and the one way they find a
//! header in a frame. `main.rs` (the load balancer) and `decap.rs` (the
//! backends' decapsulation) are the glue that talks to the maps.
#![cfg_attr(not(test), no_std)]

pub mod outer;

use aya_ebpf::programs::XdpContext;
use lb_common::maps::{PROTO_TCP, PROTO_UDP, Reason};

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

/// Whom an Ethernet frame is addressed to, seen from the interface whose
/// MAC is `own`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressee {
    /// This interface.
    Us,
    /// Another host's unicast address: a switch flooded it here.
    OtherHost,
    /// A broadcast or multicast address (the group bit is set).
    Group,
}

/// Whom a frame with destination MAC `dst` is for. Compared byte by byte
/// (folded): the BPF target has no `memcmp` to call.
#[inline(always)]
pub fn addressee(dst: &[u8; 6], own: &[u8; 6]) -> Addressee {
    let differs = (dst[0] ^ own[0])
        | (dst[1] ^ own[1])
        | (dst[2] ^ own[2])
        | (dst[3] ^ own[3])
        | (dst[4] ^ own[4])
        | (dst[5] ^ own[5]);
    if differs == 0 {
        Addressee::Us
    } else if dst[0] & 1 == 0 {
        Addressee::OtherHost
    } else {
        Addressee::Group
    }
}

/// Whether two addresses as flow keys hold them (IPv6, or IPv4 in the
/// first four bytes and zeros after) are equal, in four word compares:
/// the BPF target has no `memcmp` to call.
#[inline(always)]
pub fn same_address(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let word = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    word(a, 0) == word(b, 0)
        && word(a, 4) == word(b, 4)
        && word(a, 8) == word(b, 8)
        && word(a, 12) == word(b, 12)
}

/// Where an IP packet starting at `l3` ends, from its length field: it
/// claims `total` bytes with its `header_len`-byte header, in a frame of
/// `frame_len` bytes. A claim shorter than the header is malformed; one
/// past the frame's end is a truncated packet (a frame may be longer:
/// Ethernet pads short frames).
#[inline(always)]
pub fn ip_packet_end(
    l3: usize,
    header_len: usize,
    total: usize,
    frame_len: usize,
) -> Result<usize, Reason> {
    if total < header_len {
        return Err(Reason::DropMalformed);
    }
    let end = l3 + total;
    if end > frame_len {
        return Err(Reason::DropTruncated);
    }
    Ok(end)
}

/// Whether a TCP header at `l4` whose data-offset byte (byte 12) is
/// `offset_byte` is well formed: at least 5 words, and within the IP
/// packet, which ends at `end`.
#[inline(always)]
pub fn tcp_header_fits(offset_byte: u8, l4: usize, end: usize) -> bool {
    let len = usize::from(offset_byte >> 4) * 4;
    len >= 20 && l4 + len <= end
}

/// Whether a UDP header at `l4` with length field `len` is well formed:
/// at least its own 8 bytes, and within the IP packet, which ends at
/// `end` (a shorter UDP length is allowed: receivers trim the rest).
#[inline(always)]
pub fn udp_length_fits(len: u16, l4: usize, end: usize) -> bool {
    len >= 8 && l4 + usize::from(len) <= end
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
    fn frames_are_for_us_another_host_or_a_group() {
        let own = [0x02, 0xfc, 0, 0, 0, 1];
        assert_eq!(addressee(&own, &own), Addressee::Us);
        for at in 0..6 {
            let mut other = own;
            other[at] ^= 0x40;
            assert_eq!(addressee(&other, &own), Addressee::OtherHost, "byte {at}");
        }
        assert_eq!(addressee(&[0xff; 6], &own), Addressee::Group, "broadcast");
        assert_eq!(
            addressee(&[0x33, 0x33, 0xff, 0, 0, 1], &own),
            Addressee::Group,
            "IPv6 solicited-node multicast"
        );
        assert_eq!(
            addressee(&[0x01, 0, 0x5e, 0, 0, 0x12], &own),
            Addressee::Group,
            "IPv4 multicast (VRRP)"
        );
    }

    #[test]
    fn addresses_are_compared_whole() {
        let a = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(same_address(&a, &a));
        for at in 0..16 {
            let mut b = a;
            b[at] ^= 1;
            assert!(!same_address(&a, &b), "byte {at}");
        }
    }

    #[test]
    fn ip_lengths_must_cover_the_header_and_fit_the_frame() {
        // 14 bytes of Ethernet, a 20-byte header, 40 bytes claimed.
        assert_eq!(ip_packet_end(14, 20, 40, 54), Ok(54));
        assert_eq!(ip_packet_end(14, 20, 40, 60), Ok(54), "Ethernet padding");
        assert_eq!(ip_packet_end(14, 20, 41, 54), Err(Reason::DropTruncated));
        assert_eq!(ip_packet_end(14, 24, 20, 60), Err(Reason::DropMalformed));
        assert_eq!(ip_packet_end(14, 20, 0, 60), Err(Reason::DropMalformed));
    }

    #[test]
    fn tcp_data_offsets_must_be_5_words_and_within_the_packet() {
        assert!(tcp_header_fits(5 << 4, 34, 54));
        assert!(tcp_header_fits(15 << 4, 34, 94), "40 bytes of options");
        assert!(!tcp_header_fits(4 << 4, 34, 54), "below 5 words");
        assert!(!tcp_header_fits(0, 34, 54));
        assert!(!tcp_header_fits(6 << 4, 34, 54), "options past the end");
    }

    #[test]
    fn udp_lengths_must_cover_the_header_and_fit_the_packet() {
        assert!(udp_length_fits(8, 34, 42));
        assert!(
            udp_length_fits(8, 34, 50),
            "a shorter UDP length is trimmed"
        );
        assert!(!udp_length_fits(7, 34, 42));
        assert!(!udp_length_fits(0, 34, 42));
        assert!(!udp_length_fits(9, 34, 42), "past the packet's end");
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
