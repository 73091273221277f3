//! Header walking: from a frame's Ethernet header (and one VLAN tag)
//! through IPv4 (options, fragments) or IPv6 (extension headers) to the
//! TCP or UDP ports, or to the flow an ICMP error quotes; with the
//! verdict of every frame that has no flow to balance. Written once over
//! `Frame`, so the XDP program and host tests run the same code.

use lb_common::maps::{FAMILY_IPV4, FAMILY_IPV6, FlowKey, PROTO_TCP, PROTO_UDP, Reason};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::{
    Verdict, discard,
    frame::Frame,
    outer::{PROTO_ICMP, PROTO_ICMPV6},
    pass,
};

/// 802.1Q and 802.1ad tag ethertypes, in network byte order as read raw.
const VLAN_ETHERTYPES: [u16; 2] = [0x8100_u16.to_be(), 0x88a8_u16.to_be()];

/// A TCP header without options.
const TCP_LEN: usize = 20;

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
    if family == FAMILY_IPV4 {
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

/// A TCP segment with RST: the client aborts its connection.
#[inline(always)]
pub fn tcp_resets_flow(flags: u8) -> bool {
    const RST: u8 = 0x04;
    flags & RST != 0
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

/// What follows a frame's Ethernet header: at most one VLAN tag, then the
/// header its ethertype announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The ethertype after the tag, if any (raw).
    pub ether_type: u16,
    /// Where the header `ether_type` announces starts.
    pub l3: usize,
}

impl Link {
    /// Whether the frame carries a VLAN tag.
    #[inline(always)]
    pub fn tagged(&self) -> bool {
        self.l3 > EthHdr::LEN
    }
}

/// The VLAN id of a tag's TCI.
#[inline(always)]
fn vlan_id(tci: [u8; 2]) -> u16 {
    u16::from_be_bytes(tci) & 0x0fff
}

/// Why a frame has no link layer to go on with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// Its VLAN tag is cut off.
    Truncated,
    /// A second tag follows the first (QinQ): nothing here goes past it.
    Stacked,
}

/// The link layer of a frame whose Ethernet header is `eth`. A tag goes
/// to `tag` on the way (which keeps the tag's work on the tagged path
/// alone).
#[inline(always)]
pub fn link<F: Frame + ?Sized>(
    frame: &F,
    eth: &EthHdr,
    tag: impl FnOnce(&VlanHdr),
) -> Result<Link, LinkError> {
    if !is_vlan(eth.ether_type) {
        return Ok(Link {
            ether_type: eth.ether_type,
            l3: EthHdr::LEN,
        });
    }
    let vlan = frame
        .header::<VlanHdr>(EthHdr::LEN)
        .ok_or(LinkError::Truncated)?;
    tag(vlan);
    if is_vlan(vlan.ether_type) {
        return Err(LinkError::Stacked);
    }
    Ok(Link {
        ether_type: vlan.ether_type,
        l3: EthHdr::LEN + VlanHdr::LEN,
    })
}

/// A parsed flow: its 5-tuple, whether it opens a new connection (a SYN),
/// whether it closes one (a TCP FIN or RST), whether the packet is an ICMP
/// error about the flow (the 5-tuple is then its quote's, reversed), and
/// where its IP header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The 5-tuple, as the VIP receives the flow's packets.
    pub key: FlowKey,
    /// A TCP SYN without ACK.
    pub opens: bool,
    /// A TCP FIN or RST.
    pub closes: bool,
    /// A TCP RST.
    pub resets: bool,
    /// An ICMP error quoting one of the flow's packets.
    pub icmp: bool,
    /// Where the IP header starts.
    pub l3: usize,
}

/// What the walk tells on its way, whatever its verdict: the XDP program
/// traces and counts it there and then, host tests record it.
pub trait Notes {
    /// The frame carries a VLAN tag with id `vlan`.
    fn vlan(&mut self, vlan: u16);
    /// A TCP or UDP packet's IPv4 header has options.
    fn ipv4_options(&mut self);
}

/// The flow of a frame sent to the interface whose MAC is `own_mac`, or
/// the verdict of a frame without one to balance.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(
    frame: &F,
    own_mac: &[u8; 6],
    notes: &mut impl Notes,
) -> Result<Flow, Verdict> {
    let eth = frame
        .header::<EthHdr>(0)
        .ok_or(discard(Reason::DropTruncated))?;
    // XDP runs before the kernel drops frames for other hosts' MACs: on a
    // shared segment every host that got a flooded frame would forward it.
    match addressee(&eth.dst_addr, own_mac) {
        Addressee::Us => {}
        Addressee::OtherHost => return Err(pass(Reason::PassOtherHost)),
        Addressee::Group => return Err(pass(Reason::PassMulticast)),
    }
    let link =
        link(frame, eth, |tag| notes.vlan(vlan_id(tag.tci))).map_err(|error| match error {
            LinkError::Truncated => discard(Reason::DropTruncated),
            LinkError::Stacked => pass(Reason::PassUnsupported),
        })?;
    if link.ether_type == EtherType::Ipv4 as u16 {
        parse_ipv4(frame, link.l3, notes)
    } else if link.ether_type == EtherType::Ipv6 as u16 {
        parse_ipv6(frame, link.l3)
    } else {
        Err(pass(Reason::PassNotIp))
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(
    frame: &F,
    l3: usize,
    notes: &mut impl Notes,
) -> Result<Flow, Verdict> {
    let ip = frame
        .header::<Ipv4Hdr>(l3)
        .ok_or(discard(Reason::DropTruncated))?;
    let header_len = ipv4_header_len(ip.vihl).ok_or(discard(Reason::DropMalformed))?;
    let total = usize::from(u16::from_be_bytes(ip.tot_len));
    let end = ip_packet_end(l3, header_len, total, frame.len()).map_err(discard)?;
    if ipv4_is_fragment(ip.frags) {
        return Err(pass(Reason::PassFragment));
    }
    let mut key = FlowKey {
        proto: ip.proto,
        family: FAMILY_IPV4,
        ..FlowKey::default()
    };
    key.src_addr[..4].copy_from_slice(&ip.src_addr);
    key.dst_addr[..4].copy_from_slice(&ip.dst_addr);
    if !is_balanced_protocol(ip.proto) {
        // Off the TCP/UDP path: an ICMP error may be about a VIP's flow.
        if ip.proto == PROTO_ICMP {
            let l4 = l3 + header_len;
            return parse_icmp(frame, (l3, l4, end), FAMILY_IPV4, &key.dst_addr);
        }
        return Err(pass(Reason::PassOtherProtocol));
    }
    if header_len > Ipv4Hdr::LEN {
        notes.ipv4_options();
    }
    parse_l4(frame, (l3, l3 + header_len, end), key)
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(frame: &F, l3: usize) -> Result<Flow, Verdict> {
    let ip = frame
        .header::<Ipv6Hdr>(l3)
        .ok_or(discard(Reason::DropTruncated))?;
    if ip.vcf[0] >> 4 != 6 {
        return Err(discard(Reason::DropMalformed));
    }
    let total = Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(ip.payload_len));
    let end = ip_packet_end(l3, Ipv6Hdr::LEN, total, frame.len()).map_err(discard)?;
    let next = ip.next_hdr;
    if next == IPV6_NEXT_FRAGMENT {
        return Err(pass(Reason::PassFragment));
    }
    if ipv6_is_extension(next) {
        return Err(pass(Reason::PassUnsupported));
    }
    let l4 = l3 + Ipv6Hdr::LEN;
    if !is_balanced_protocol(next) {
        if next == PROTO_ICMPV6 {
            return parse_icmp(frame, (l3, l4, end), FAMILY_IPV6, &ip.dst_addr);
        }
        return Err(pass(Reason::PassOtherProtocol));
    }
    let key = FlowKey {
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        proto: next,
        family: FAMILY_IPV6,
        ..FlowKey::default()
    };
    parse_l4(frame, (l3, l4, end), key)
}

/// The flow of a TCP or UDP packet whose IP header starts at `l3` and
/// its transport header at `l4`, in an IP packet that ends at `end`.
#[inline(always)]
fn parse_l4<F: Frame + ?Sized>(
    frame: &F,
    (l3, l4, end): (usize, usize, usize),
    mut key: FlowKey,
) -> Result<Flow, Verdict> {
    let (opens, closes, resets) = if key.proto == PROTO_TCP {
        let tcp = frame
            .header::<[u8; TCP_LEN]>(l4)
            .ok_or(discard(Reason::DropTruncated))?;
        // Byte 12 holds the data offset, byte 13 CWR..FIN.
        let (offset, flags) = (tcp[12], tcp[13]);
        if !tcp_header_fits(offset, l4, end) {
            return Err(discard(Reason::DropMalformed));
        }
        key.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        key.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        (
            tcp_opens_flow(flags),
            tcp_closes_flow(flags),
            tcp_resets_flow(flags),
        )
    } else {
        let udp = frame
            .header::<UdpHdr>(l4)
            .ok_or(discard(Reason::DropTruncated))?;
        if !udp_length_fits(u16::from_be_bytes(udp.len), l4, end) {
            return Err(discard(Reason::DropMalformed));
        }
        key.src_port = u16::from_be_bytes(udp.src);
        key.dst_port = u16::from_be_bytes(udp.dst);
        (false, false, false)
    };
    Ok(Flow {
        key,
        opens,
        closes,
        resets,
        icmp: false,
        l3,
    })
}

/// The 5-tuple of the packet an ICMP error at `l4` quotes, reversed (so
/// it is the flow's as the VIP received it), if it quotes a TCP or UDP
/// packet with its ports: an IPv4 header without options that is no
/// fragment, or an IPv6 header without extensions. Only an error sent to
/// the quoted packet's source (the VIP) belongs to the flow's backend; one
/// sent to this host's own address is the host's. `end` is where the
/// error's IP packet ends.
#[inline(always)]
fn parse_icmp<F: Frame + ?Sized>(
    frame: &F,
    (l3, l4, end): (usize, usize, usize),
    family: u8,
    outer_dst: &[u8; 16],
) -> Result<Flow, Verdict> {
    let icmp = frame
        .header::<[u8; 8]>(l4)
        .ok_or(discard(Reason::DropTruncated))?;
    if !icmp_quotes_flow(family, icmp[0]) {
        return Err(pass(Reason::PassOtherProtocol));
    }
    let quoted = l4 + 8;
    let mut key = FlowKey {
        family,
        ..FlowKey::default()
    };
    let ports = if family == FAMILY_IPV4 {
        let ip = frame
            .header::<Ipv4Hdr>(quoted)
            .ok_or(pass(Reason::PassOtherProtocol))?;
        if ip.vihl != 0x45 {
            return Err(pass(Reason::PassOtherProtocol));
        }
        // A fragment's "ports" would be payload bytes.
        if ipv4_is_fragment(ip.frags) {
            return Err(pass(Reason::PassFragment));
        }
        key.proto = ip.proto;
        key.src_addr[..4].copy_from_slice(&ip.dst_addr);
        key.dst_addr[..4].copy_from_slice(&ip.src_addr);
        quoted + Ipv4Hdr::LEN
    } else {
        let ip = frame
            .header::<Ipv6Hdr>(quoted)
            .ok_or(pass(Reason::PassOtherProtocol))?;
        key.proto = ip.next_hdr;
        key.src_addr = ip.dst_addr;
        key.dst_addr = ip.src_addr;
        quoted + Ipv6Hdr::LEN
    };
    if !is_balanced_protocol(key.proto) || !same_address(&key.dst_addr, outer_dst) {
        return Err(pass(Reason::PassOtherProtocol));
    }
    if ports + 4 > end {
        return Err(pass(Reason::PassOtherProtocol));
    }
    let [s0, s1, d0, d1] = *frame
        .header::<[u8; 4]>(ports)
        .ok_or(pass(Reason::PassOtherProtocol))?;
    key.src_port = u16::from_be_bytes([d0, d1]);
    key.dst_port = u16::from_be_bytes([s0, s1]);
    Ok(Flow {
        key,
        opens: false,
        closes: false,
        resets: false,
        icmp: true,
        l3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fin_and_rst_close_a_flow_and_only_rst_resets_it() {
        assert!(tcp_closes_flow(0x11), "FIN+ACK");
        assert!(tcp_closes_flow(0x04), "RST");
        assert!(tcp_closes_flow(0x14), "RST+ACK");
        assert!(!tcp_closes_flow(0x10), "ACK");
        assert!(!tcp_closes_flow(0x02), "SYN");
        assert!(tcp_resets_flow(0x04), "RST");
        assert!(tcp_resets_flow(0x14), "RST+ACK");
        assert!(!tcp_resets_flow(0x11), "FIN+ACK");
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

    use crate::testing::*;

    /// What the walk told, as a test records it.
    #[derive(Debug, Default, PartialEq)]
    struct Noted {
        vlan: Option<u16>,
        ipv4_options: bool,
    }

    impl Notes for Noted {
        fn vlan(&mut self, vlan: u16) {
            self.vlan = Some(vlan);
        }

        fn ipv4_options(&mut self) {
            self.ipv4_options = true;
        }
    }

    const ROUTER4: [u8; 4] = [198, 18, 9, 1];
    const ROUTER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1];

    fn key(
        proto: u8,
        (src, src_port): ([u8; 16], u16),
        (dst, dst_port): ([u8; 16], u16),
    ) -> FlowKey {
        let family = if src[4..] == [0; 12] && dst[4..] == [0; 12] {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        };
        FlowKey {
            src_addr: src,
            dst_addr: dst,
            src_port,
            dst_port,
            proto,
            family,
            ..FlowKey::default()
        }
    }

    fn v4(addr: [u8; 4]) -> [u8; 16] {
        let mut key = [0; 16];
        key[..4].copy_from_slice(&addr);
        key
    }

    /// The flow of the client's port 40000 (or 5000 for UDP) to the VIP's
    /// port 80 (53), in IPv4 or IPv6.
    fn client_flow(proto: u8, family: u8, l3: usize) -> Flow {
        let (src, dst) = if family == FAMILY_IPV4 {
            (v4(CLIENT4), v4(VIP4))
        } else {
            (CLIENT6, VIP6)
        };
        let (src_port, dst_port) = if proto == PROTO_TCP {
            (40000, 80)
        } else {
            (5000, 53)
        };
        Flow {
            key: key(proto, (src, src_port), (dst, dst_port)),
            opens: false,
            closes: false,
            resets: false,
            icmp: false,
            l3,
        }
    }

    fn set_u16(frame: &mut [u8], at: usize, value: u16) {
        frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    fn get_u16(frame: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([frame[at], frame[at + 1]])
    }

    /// An ICMP error from a router to the VIP about a packet the VIP sent
    /// to the client (TCP 80 to 40000), quoting `quote` bytes of it.
    fn icmp4_about_tcp(kind: u8, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let quoted = edited(ipv4(6, VIP4, CLIENT4, &tcp(80, 40000, ACK)), edit);
        ethernet(IPV4, &ipv4(1, ROUTER4, VIP4, &icmp(kind, &quoted)))
    }

    /// A description, a frame, what the walk makes of it, what it tells.
    type Row = (&'static str, Vec<u8>, Result<Flow, Verdict>, Noted);

    #[test]
    fn frames_walk_to_their_flow_or_verdict() {
        let tcp_v4 = client_flow(PROTO_TCP, FAMILY_IPV4, L3);
        let udp_v4 = client_flow(PROTO_UDP, FAMILY_IPV4, L3);
        let tcp_v6 = client_flow(PROTO_TCP, FAMILY_IPV6, L3);
        let icmp_v4 = Flow {
            icmp: true,
            ..tcp_v4
        };
        let rows: Vec<Row> = vec![
            // TCP and UDP, the balanced protocols.
            (
                "IPv4 TCP SYN opens a flow",
                tcp4(SYN),
                Ok(Flow {
                    opens: true,
                    ..tcp_v4
                }),
                Noted::default(),
            ),
            (
                "IPv4 TCP SYN+ACK opens none",
                tcp4(SYN | ACK),
                Ok(tcp_v4),
                Noted::default(),
            ),
            (
                "IPv4 TCP FIN+ACK closes its flow",
                tcp4(FIN | ACK),
                Ok(Flow {
                    closes: true,
                    ..tcp_v4
                }),
                Noted::default(),
            ),
            (
                "IPv4 TCP RST closes its flow",
                tcp4(RST),
                Ok(Flow {
                    closes: true,
                    resets: true,
                    ..tcp_v4
                }),
                Noted::default(),
            ),
            ("IPv4 UDP", udp4(), Ok(udp_v4), Noted::default()),
            (
                "IPv6 TCP SYN opens a flow",
                tcp6(SYN),
                Ok(Flow {
                    opens: true,
                    ..tcp_v6
                }),
                Noted::default(),
            ),
            (
                "IPv6 UDP",
                udp6(),
                Ok(client_flow(PROTO_UDP, FAMILY_IPV6, L3)),
                Noted::default(),
            ),
            (
                "Ethernet padding after the IP packet",
                [tcp4(ACK), vec![0; 6]].concat(),
                Ok(tcp_v4),
                Noted::default(),
            ),
            // The link layer.
            (
                "an 802.1Q tag: its VLAN id is noted, the IP header follows it",
                tagged(VLAN_8021Q, 0x2007, IPV4, &tcp4(ACK)[L3..]),
                Ok(Flow {
                    l3: L3 + 4,
                    ..tcp_v4
                }),
                Noted {
                    vlan: Some(7),
                    ..Noted::default()
                },
            ),
            (
                "an 802.1ad tag",
                tagged(VLAN_8021AD, 42, IPV6, &tcp6(ACK)[L3..]),
                Ok(Flow {
                    l3: L3 + 4,
                    ..tcp_v6
                }),
                Noted {
                    vlan: Some(42),
                    ..Noted::default()
                },
            ),
            (
                "two tags pass to the stack",
                tagged(VLAN_8021AD, 5, VLAN_8021Q, &tcp4(ACK)[L3..]),
                Err(pass(Reason::PassUnsupported)),
                Noted {
                    vlan: Some(5),
                    ..Noted::default()
                },
            ),
            (
                "a tag cut short",
                tagged(VLAN_8021Q, 7, IPV4, &[])[..16].to_vec(),
                Err(discard(Reason::DropTruncated)),
                Noted::default(),
            ),
            (
                "a frame shorter than an Ethernet header",
                tcp4(ACK)[..13].to_vec(),
                Err(discard(Reason::DropTruncated)),
                Noted::default(),
            ),
            (
                "another host's MAC: a switch flooded it here",
                edited(tcp4(ACK), |f| f[5] ^= 0x40),
                Err(pass(Reason::PassOtherHost)),
                Noted::default(),
            ),
            (
                "broadcast",
                edited(tcp4(ACK), |f| f[..6].fill(0xff)),
                Err(pass(Reason::PassMulticast)),
                Noted::default(),
            ),
            (
                "IPv4 multicast (VRRP's MAC)",
                edited(tcp4(ACK), |f| {
                    f[..6].copy_from_slice(&[1, 0, 0x5e, 0, 0, 0x12])
                }),
                Err(pass(Reason::PassMulticast)),
                Noted::default(),
            ),
            (
                "ARP",
                ethernet(ARP, &[0; 28]),
                Err(pass(Reason::PassNotIp)),
                Noted::default(),
            ),
            // IPv4.
            (
                "IPv4 options (IHL 6): noted, and the ports read after them",
                edited(tcp4(ACK), |f| {
                    f[L3] = 0x46;
                    f.splice(L4_V4..L4_V4, [1, 1, 1, 1]);
                    let total = get_u16(f, L3 + 2) + 4;
                    set_u16(f, L3 + 2, total);
                }),
                Ok(tcp_v4),
                Noted {
                    ipv4_options: true,
                    ..Noted::default()
                },
            ),
            (
                "an IHL below 5 words",
                edited(tcp4(ACK), |f| f[L3] = 0x44),
                Err(discard(Reason::DropMalformed)),
                Noted::default(),
            ),
            (
                "version 6 behind the IPv4 ethertype",
                edited(tcp4(ACK), |f| f[L3] = 0x65),
                Err(discard(Reason::DropMalformed)),
                Noted::default(),
            ),
            (
                "a total length past the frame's end",
                edited(tcp4(ACK), |f| set_u16(f, L3 + 2, 41)),
                Err(discard(Reason::DropTruncated)),
                Noted::default(),
            ),
            (
                "a total length shorter than the header",
                edited(tcp4(ACK), |f| set_u16(f, L3 + 2, 19)),
                Err(discard(Reason::DropMalformed)),
                Noted::default(),
            ),
            (
                "a first fragment (MF)",
                edited(tcp4(ACK), |f| f[L3 + 6] = 0x20),
                Err(pass(Reason::PassFragment)),
                Noted::default(),
            ),
            (
                "a later fragment (offset 8)",
                edited(tcp4(ACK), |f| set_u16(f, L3 + 6, 1)),
                Err(pass(Reason::PassFragment)),
                Noted::default(),
            ),
            (
                "another protocol (GRE)",
                ethernet(IPV4, &ipv4(47, CLIENT4, VIP4, &[0; 8])),
                Err(pass(Reason::PassOtherProtocol)),
                Noted::default(),
            ),
            // TCP and UDP headers.
            (
                "a TCP header cut short",
                ethernet(IPV4, &ipv4(6, CLIENT4, VIP4, &tcp(40000, 80, ACK)[..12])),
                Err(discard(Reason::DropTruncated)),
                Noted::default(),
            ),
            (
                "a TCP data offset below 5 words",
                edited(tcp4(ACK), |f| f[L4_V4 + 12] = 4 << 4),
                Err(discard(Reason::DropMalformed)),
                Noted::default(),
            ),
            (
                "TCP options past the IP packet's end",
                edited(tcp4(ACK), |f| f[L4_V4 + 12] = 6 << 4),
                Err(discard(Reason::DropMalformed)),
                Noted::default(),
            ),
            (
                "a UDP length below its header's",
                edited(udp4(), |f| set_u16(f, L4_V4 + 4, 7)),
                Err(discard(Reason::DropMalformed)),
                Noted::default(),
            ),
            (
                "a UDP length past the IP packet's end",
                edited(udp4(), |f| set_u16(f, L4_V4 + 4, 17)),
                Err(discard(Reason::DropMalformed)),
                Noted::default(),
            ),
            (
                "a UDP length short of the IP packet's (receivers trim the rest)",
                edited(udp4(), |f| set_u16(f, L4_V4 + 4, 8)),
                Ok(udp_v4),
                Noted::default(),
            ),
            // IPv6.
            (
                "version 4 behind the IPv6 ethertype",
                edited(tcp6(ACK), |f| f[L3] = 0x40),
                Err(discard(Reason::DropMalformed)),
                Noted::default(),
            ),
            (
                "an IPv6 payload length past the frame's end",
                edited(tcp6(ACK), |f| set_u16(f, L3 + 4, 21)),
                Err(discard(Reason::DropTruncated)),
                Noted::default(),
            ),
            (
                "an IPv6 fragment header",
                ethernet(IPV6, &ipv6(44, CLIENT6, VIP6, &[0; 8])),
                Err(pass(Reason::PassFragment)),
                Noted::default(),
            ),
            (
                "IPv6 hop-by-hop options",
                ethernet(IPV6, &ipv6(0, CLIENT6, VIP6, &[0; 8])),
                Err(pass(Reason::PassUnsupported)),
                Noted::default(),
            ),
            // ICMP errors follow the flow they quote.
            (
                "ICMP destination unreachable about a VIP's TCP flow",
                icmp4_about_tcp(3, |_| {}),
                Ok(icmp_v4),
                Noted::default(),
            ),
            (
                "ICMP time exceeded about a VIP's UDP flow",
                ethernet(
                    IPV4,
                    &ipv4(
                        1,
                        ROUTER4,
                        VIP4,
                        &icmp(11, &ipv4(17, VIP4, CLIENT4, &udp(53, 5000, &[]))),
                    ),
                ),
                Ok(Flow {
                    icmp: true,
                    ..udp_v4
                }),
                Noted::default(),
            ),
            (
                "ICMPv6 packet too big about a VIP's TCP flow",
                ethernet(
                    IPV6,
                    &ipv6(
                        58,
                        ROUTER6,
                        VIP6,
                        &icmp(2, &ipv6(6, VIP6, CLIENT6, &tcp(80, 40000, ACK))),
                    ),
                ),
                Ok(Flow {
                    icmp: true,
                    ..tcp_v6
                }),
                Noted::default(),
            ),
            (
                "an ICMP echo request",
                ethernet(IPV4, &ipv4(1, CLIENT4, VIP4, &icmp(8, &[0; 8]))),
                Err(pass(Reason::PassOtherProtocol)),
                Noted::default(),
            ),
            (
                "an ICMPv6 echo request",
                ethernet(IPV6, &ipv6(58, CLIENT6, VIP6, &icmp(128, &[0; 8]))),
                Err(pass(Reason::PassOtherProtocol)),
                Noted::default(),
            ),
            (
                "an ICMP error sent to an address other than the quote's source",
                edited(icmp4_about_tcp(3, |_| {}), |f| f[L3 + 19] ^= 1),
                Err(pass(Reason::PassOtherProtocol)),
                Noted::default(),
            ),
            (
                "an ICMP error quoting a fragment",
                icmp4_about_tcp(3, |q| q[6] = 0x20),
                Err(pass(Reason::PassFragment)),
                Noted::default(),
            ),
            (
                "an ICMP error quoting an IPv4 header with options",
                icmp4_about_tcp(3, |q| q[0] = 0x46),
                Err(pass(Reason::PassOtherProtocol)),
                Noted::default(),
            ),
            (
                "an ICMP error quoting ICMP",
                icmp4_about_tcp(3, |q| q[9] = 1),
                Err(pass(Reason::PassOtherProtocol)),
                Noted::default(),
            ),
            (
                "an ICMP error whose quote ends before the ports",
                icmp4_about_tcp(3, |q| q.truncate(22)),
                Err(pass(Reason::PassOtherProtocol)),
                Noted::default(),
            ),
            (
                "an ICMP error whose IP packet ends before the quote's ports (the frame holds them)",
                edited(icmp4_about_tcp(3, |_| {}), |f| {
                    set_u16(f, L3 + 2, 20 + 8 + 22)
                }),
                Err(pass(Reason::PassOtherProtocol)),
                Noted::default(),
            ),
            (
                "an ICMP header cut short",
                ethernet(IPV4, &ipv4(1, ROUTER4, VIP4, &[3, 0, 0, 0])),
                Err(discard(Reason::DropTruncated)),
                Noted::default(),
            ),
        ];
        for (what, frame, expected, noted) in rows {
            let mut seen = Noted::default();
            assert_eq!(parse(&frame[..], &OWN_MAC, &mut seen), expected, "{what}");
            assert_eq!(seen, noted, "{what}: notes");
        }
    }
}
