//! The headers the XDP program writes in front of a packet: the outer IPv4
//! or IPv6 header, UDP and GUE headers of an encapsulated packet, and the
//! ICMP "fragmentation needed" / ICMPv6 "packet too big" headers of an
//! answer; with their one's complement checksums and the overhead each
//! forwarding mode adds. Pure functions over bytes, so host tests check
//! them byte for byte.

use lb_common::maps::{Encapsulation, FAMILY_IPV4, PROTO_TCP, PROTO_UDP};

/// IP protocol number of IPv4 inside IP (IPIP).
pub const PROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6 inside IP.
pub const PROTO_IPV6: u8 = 41;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IPv6 next header of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// An IPv4 header without options.
pub const IPV4_LEN: usize = 20;
/// An IPv6 header.
pub const IPV6_LEN: usize = 40;
/// A UDP header.
pub const UDP_LEN: usize = 8;
/// A GUE variant 0 header without extension words.
pub const GUE_LEN: usize = 4;
/// An ICMP or ICMPv6 error header.
pub const ICMP_LEN: usize = 8;
/// Bytes of the offending packet an ICMP "fragmentation needed" quotes:
/// its IP header and more than the 8 bytes RFC 792 asks for (8 + 84 is a
/// multiple of 4, as the kernel's checksum helper needs).
pub const ICMP4_QUOTE: usize = 84;
/// Bytes of the offending packet an ICMPv6 "packet too big" quotes.
pub const ICMP6_QUOTE: usize = 248;
/// TTL / hop limit of every header the program writes.
pub const OUTER_TTL: u8 = 64;
/// The smallest MTU IPv6 allows: a packet-too-big never advertises less.
pub const IPV6_MIN_MTU: u16 = 1280;

/// A one's complement sum (RFC 1071) of big-endian 16-bit words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sum(u64);

impl Sum {
    /// Adds one 16-bit word.
    #[inline(always)]
    pub const fn word(self, word: u16) -> Sum {
        Sum(self.0 + word as u64)
    }

    /// Adds `N` bytes (`N` even) as big-endian words.
    #[inline(always)]
    pub fn bytes<const N: usize>(self, bytes: &[u8; N]) -> Sum {
        let mut sum = self.0;
        let mut i = 0;
        while i + 1 < N {
            sum += u64::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
            i += 2;
        }
        Sum(sum)
    }

    /// Adds what the kernel's `bpf_csum_diff` returned: a 32-bit sum of
    /// native-order loads, whose folded bytes are the big-endian sum's,
    /// swapped on a little-endian machine.
    #[inline(always)]
    pub fn native(self, partial: u32) -> Sum {
        self.word(u16::from_be(fold(u64::from(partial))))
    }

    /// Adds another sum.
    #[inline(always)]
    pub const fn plus(self, other: Sum) -> Sum {
        Sum(self.0 + other.0)
    }

    /// Subtracts a sum: adds its one's complement.
    #[inline(always)]
    pub fn minus(self, other: Sum) -> Sum {
        self.word(!fold(other.0))
    }

    /// The checksum field for this sum: the complement of its fold.
    #[inline(always)]
    pub fn checksum(self) -> u16 {
        !fold(self.0)
    }
}

/// Folds a sum of 16-bit words into 16 bits, with end-around carry.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The protocol number that says "an IP packet of `family` follows".
#[inline(always)]
pub const fn ip_in_ip(family: u8) -> u8 {
    if family == FAMILY_IPV4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6
    }
}

/// An IPv4 header without options, its checksum filled in.
#[inline(always)]
pub fn ipv4_header(
    tos: u8,
    total_len: u16,
    dont_fragment: bool,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
) -> [u8; IPV4_LEN] {
    let [len_hi, len_lo] = total_len.to_be_bytes();
    let flags = if dont_fragment { 0x40 } else { 0 };
    let mut header = [
        0x45, tos, len_hi, len_lo, 0, 0, flags, 0, OUTER_TTL, proto, 0, 0, src[0], src[1], src[2],
        src[3], dst[0], dst[1], dst[2], dst[3],
    ];
    let [check_hi, check_lo] = Sum::default().bytes(&header).checksum().to_be_bytes();
    header[10] = check_hi;
    header[11] = check_lo;
    header
}

/// An IPv6 header.
#[inline(always)]
pub fn ipv6_header(
    traffic_class: u8,
    flow_label: u32,
    payload_len: u16,
    next_header: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> [u8; IPV6_LEN] {
    let mut header = [0u8; IPV6_LEN];
    header[0] = 0x60 | (traffic_class >> 4);
    header[1] = (traffic_class << 4) | ((flow_label >> 16) as u8 & 0x0f);
    header[2] = (flow_label >> 8) as u8;
    header[3] = flow_label as u8;
    header[4..6].copy_from_slice(&payload_len.to_be_bytes());
    header[6] = next_header;
    header[7] = OUTER_TTL;
    header[8..24].copy_from_slice(src);
    header[24..40].copy_from_slice(dst);
    header
}

/// The outer IPv4 source of a flow: the configured prefix, its host bits
/// from the flow's entropy.
#[inline(always)]
pub fn source4(encap: &Encapsulation, entropy: u64) -> [u8; 4] {
    let prefix = u32::from_be_bytes(encap.source4);
    let host = u32::from_be_bytes(encap.source4_host);
    (prefix | (entropy as u32 & host)).to_be_bytes()
}

/// The outer IPv6 source of a flow: the configured prefix, its host bits
/// from the flow's entropy.
#[inline(always)]
pub fn source6(encap: &Encapsulation, entropy: u64) -> [u8; 16] {
    let mut source = encap.source6;
    let bits = entropy.to_be_bytes();
    for (i, byte) in source.iter_mut().enumerate() {
        *byte |= bits[i % 8] & encap.source6_host[i];
    }
    source
}

/// The outer IPv6 flow label of a flow: 20 bits of its entropy, never 0
/// (0 means "no label", RFC 6437).
#[inline(always)]
pub const fn flow_label(entropy: u64) -> u32 {
    let label = (entropy >> 32) as u32 & 0xf_ffff;
    if label == 0 { 1 } else { label }
}

/// The GUE source port of a flow: its entropy in the ephemeral range
/// 49152..=65535 (RFC 8086), so receive-side scaling and ECMP spread flows.
#[inline(always)]
pub const fn gue_source_port(entropy: u64) -> u16 {
    0xc000 | ((entropy >> 16) as u16 & 0x3fff)
}

/// A UDP header.
#[inline(always)]
pub fn udp_header(src_port: u16, dst_port: u16, len: u16, check: u16) -> [u8; UDP_LEN] {
    let [s0, s1] = src_port.to_be_bytes();
    let [d0, d1] = dst_port.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    let [c0, c1] = check.to_be_bytes();
    [s0, s1, d0, d1, l0, l1, c0, c1]
}

/// A GUE variant 0 header without extension words: version 0, no control
/// bit, the inner protocol, no flags.
#[inline(always)]
pub const fn gue_header(inner_proto: u8) -> [u8; GUE_LEN] {
    [0, inner_proto, 0, 0]
}

/// The one's complement sum of a whole IPv4 packet from its header alone,
/// when its checksums make it known: a valid header sums to zero, and a
/// valid TCP or UDP segment to the complement of its pseudo-header (ICMP
/// has none: zero). `None` for a UDP datagram without a checksum.
#[inline(always)]
pub fn ipv4_packet_sum(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    transport_len: u16,
    udp_check: u16,
) -> Option<Sum> {
    if proto == PROTO_UDP && udp_check == 0 {
        return None;
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Some(Sum::default());
    }
    let pseudo = Sum::default()
        .bytes(&src)
        .bytes(&dst)
        .word(u16::from(proto))
        .word(transport_len);
    Some(Sum::default().minus(pseudo))
}

/// The one's complement sum of a whole IPv6 packet (no extension headers,
/// a valid TCP, UDP or ICMPv6 checksum) from its first 8 header bytes: the
/// addresses cancel out against the pseudo-header, leaving the first 8
/// bytes less the payload length and next header.
#[inline(always)]
pub fn ipv6_packet_sum(first8: &[u8; 8]) -> Sum {
    let length = u16::from_be_bytes([first8[4], first8[5]]);
    let pseudo = Sum::default().word(length).word(u16::from(first8[6]));
    Sum::default().bytes(first8).minus(pseudo)
}

/// The ICMP "fragmentation needed" header (type 3, code 4) with the
/// next-hop MTU, checksum 0.
#[inline(always)]
pub const fn icmp4_too_big(mtu: u16) -> [u8; ICMP_LEN] {
    let [hi, lo] = mtu.to_be_bytes();
    [3, 4, 0, 0, 0, 0, hi, lo]
}

/// The ICMPv6 "packet too big" header (type 2, code 0), checksum 0; never
/// below the IPv6 minimum MTU.
#[inline(always)]
pub const fn icmp6_too_big(mtu: u16) -> [u8; ICMP_LEN] {
    let mtu = if mtu < IPV6_MIN_MTU {
        IPV6_MIN_MTU
    } else {
        mtu
    };
    let [hi, lo] = mtu.to_be_bytes();
    [2, 0, 0, 0, 0, 0, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::maps::{FAMILY_IPV6, FORWARD_GUE, FORWARD_IPIP, encap_overhead as overhead};

    /// RFC 1071 over a byte string, the slow way.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn an_ipv4_header_checksums_to_zero() {
        let header = ipv4_header(0xb8, 1500, true, 4, [198, 18, 64, 7], [198, 18, 1, 11]);
        assert_eq!(
            &header[..12],
            &[
                0x45, 0xb8, 0x05, 0xdc, 0, 0, 0x40, 0, 64, 4, header[10], header[11]
            ]
        );
        assert_eq!(reference(&header), 0, "a valid header sums to zero");
    }

    #[test]
    fn an_ipv6_header_carries_class_and_label() {
        let src = [0x20, 1, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0x20, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x11];
        let header = ipv6_header(0xb8, 0xa_bcde, 1000, 41, &src, &dst);
        assert_eq!(&header[..8], &[0x6b, 0x8a, 0xbc, 0xde, 0x03, 0xe8, 41, 64]);
        assert_eq!(&header[8..24], &src);
        assert_eq!(&header[24..], &dst);
    }

    #[test]
    fn overheads_per_mode() {
        assert_eq!(overhead(FAMILY_IPV4, FORWARD_IPIP), 20);
        assert_eq!(overhead(FAMILY_IPV6, FORWARD_IPIP), 40);
        assert_eq!(overhead(FAMILY_IPV4, FORWARD_GUE), 32);
        assert_eq!(overhead(FAMILY_IPV6, FORWARD_GUE), 52);
    }

    #[test]
    fn sources_keep_the_prefix_and_vary_the_host_bits() {
        let encap = Encapsulation {
            source4: [198, 18, 64, 0],
            source4_host: [0, 0, 0, 0xff],
            source6: [0x20, 1, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0],
            source6_host: [
                0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            ..Encapsulation::default()
        };
        let sources: std::collections::HashSet<[u8; 4]> = (0..64u64)
            .map(|i| source4(&encap, lb_common::flow_hash::mix64(i)))
            .collect();
        assert!(sources.iter().all(|s| s[..3] == [198, 18, 64]));
        assert!(sources.len() > 40, "{} distinct of 64", sources.len());
        let v6 = source6(&encap, 0x0123_4567_89ab_cdef);
        assert_eq!(&v6[..8], &encap.source6[..8]);
        assert_eq!(&v6[8..], &0x0123_4567_89ab_cdef_u64.to_be_bytes());
        assert_eq!(flow_label(0), 1, "never the empty label");
        assert!(gue_source_port(u64::MAX) >= 0xc000 && gue_source_port(0) == 0xc000);
    }

    /// A TCP segment with a valid checksum over an IPv4 or IPv6
    /// pseudo-header, and the sum of its whole packet.
    fn tcp_packet(v6: bool) -> Vec<u8> {
        let payload = b"hello, backend";
        let mut tcp = vec![
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
        ];
        tcp.extend_from_slice(payload);
        let len = tcp.len() as u16;
        let (mut header, pseudo) = if v6 {
            let src = [0x20, 1, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1];
            let dst = [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
            let header = ipv6_header(0, 7, len, PROTO_TCP, &src, &dst).to_vec();
            let mut pseudo = [src, dst].concat();
            pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, PROTO_TCP]);
            (header, pseudo)
        } else {
            let (src, dst) = ([198, 18, 2, 1], [198, 18, 0, 100]);
            let header = ipv4_header(0, 20 + len, true, PROTO_TCP, src, dst).to_vec();
            let mut pseudo = [src, dst].concat();
            pseudo.extend_from_slice(&[0, PROTO_TCP]);
            pseudo.extend_from_slice(&len.to_be_bytes());
            (header, pseudo)
        };
        let check = reference(&[pseudo, tcp.clone()].concat());
        tcp[16..18].copy_from_slice(&check.to_be_bytes());
        header.extend_from_slice(&tcp);
        header
    }

    #[test]
    fn a_packet_sum_follows_from_its_headers() {
        let v4 = tcp_packet(false);
        let sum = ipv4_packet_sum(
            [v4[12], v4[13], v4[14], v4[15]],
            [v4[16], v4[17], v4[18], v4[19]],
            PROTO_TCP,
            (v4.len() - 20) as u16,
            1,
        )
        .expect("TCP always has a checksum");
        assert_eq!(sum.checksum(), reference(&v4));
        let v6 = tcp_packet(true);
        let first8: [u8; 8] = v6[..8].try_into().unwrap();
        assert_eq!(ipv6_packet_sum(&first8).checksum(), reference(&v6));
        assert_eq!(ipv4_packet_sum([0; 4], [0; 4], PROTO_UDP, 8, 0), None);
    }

    #[test]
    fn native_partial_sums_are_byte_swapped_words() {
        let bytes = [0x12u8, 0x34, 0xab, 0xcd, 0xff, 0x01, 0x00, 0x80];
        let native: u64 = bytes
            .chunks(4)
            .map(|w| u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .sum();
        // The kernel's 32-bit partial sum keeps its carries (end-around).
        let folded = (native & 0xffff_ffff) + (native >> 32);
        let partial = ((folded & 0xffff_ffff) + (folded >> 32)) as u32;
        assert_eq!(Sum::default().native(partial).checksum(), reference(&bytes));
    }

    #[test]
    fn too_big_headers() {
        assert_eq!(icmp4_too_big(1480), [3, 4, 0, 0, 0, 0, 0x05, 0xc8]);
        assert_eq!(icmp6_too_big(1460), [2, 0, 0, 0, 0, 0, 0x05, 0xb4]);
        assert_eq!(
            icmp6_too_big(1200),
            icmp6_too_big(IPV6_MIN_MTU),
            "never below 1280"
        );
    }
}
