//! Frames for the host tests, built header by header: Ethernet (to this
//! interface's MAC), VLAN tags, IPv4 and IPv6, TCP, UDP, ICMP and GUE,
//! each with its length fields right, so that a test row breaks exactly
//! the field it is about (offsets below name them).

/// The interface's own MAC.
pub const OWN_MAC: [u8; 6] = [0x02, 0xfc, 0, 0, 0, 1];
/// A client's MAC.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];

/// A client's IPv4 address.
pub const CLIENT4: [u8; 4] = [198, 18, 2, 1];
/// A VIP's IPv4 address.
pub const VIP4: [u8; 4] = [198, 18, 0, 100];
/// A client's IPv6 address.
pub const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
/// A VIP's IPv6 address.
pub const VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// The IPv4 ethertype.
pub const IPV4: u16 = 0x0800;
/// The IPv6 ethertype.
pub const IPV6: u16 = 0x86dd;
/// The ARP ethertype.
pub const ARP: u16 = 0x0806;
/// The 802.1Q tag's TPID.
pub const VLAN_8021Q: u16 = 0x8100;
/// The 802.1ad tag's TPID.
pub const VLAN_8021AD: u16 = 0x88a8;

/// Where an untagged frame's IP header starts.
pub const L3: usize = 14;
/// Where a TCP or UDP header starts after an IPv4 header without options.
pub const L4_V4: usize = L3 + 20;

/// TCP's FIN flag.
pub const FIN: u8 = 0x01;
/// TCP's SYN flag.
pub const SYN: u8 = 0x02;
/// TCP's RST flag.
pub const RST: u8 = 0x04;
/// TCP's ACK flag.
pub const ACK: u8 = 0x10;

/// `frame` with `edit` applied: a row's one broken field.
pub fn edited(mut frame: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    edit(&mut frame);
    frame
}

/// An Ethernet frame to `OWN_MAC` from `CLIENT_MAC`.
pub fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    [
        &OWN_MAC[..],
        &CLIENT_MAC,
        &ether_type.to_be_bytes(),
        payload,
    ]
    .concat()
}

/// A VLAN tag (TPID, then TCI) and the ethertype it announces, in front
/// of `payload`: the bytes after an Ethernet header's MACs.
pub fn tagged(tpid: u16, vlan: u16, ether_type: u16, payload: &[u8]) -> Vec<u8> {
    [
        &OWN_MAC[..],
        &CLIENT_MAC,
        &tpid.to_be_bytes(),
        &vlan.to_be_bytes(),
        &ether_type.to_be_bytes(),
        payload,
    ]
    .concat()
}

/// An IPv4 header without options (DF set, no checksum: nothing here
/// reads it) and its payload.
pub fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let [t0, t1] = total.to_be_bytes();
    let header = [
        0x45, 0, t0, t1, 0, 0, 0x40, 0, 64, proto, 0, 0, src[0], src[1], src[2], src[3], dst[0],
        dst[1], dst[2], dst[3],
    ];
    [&header[..], payload].concat()
}

/// An IPv6 header and its payload.
pub fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let [p0, p1] = (payload.len() as u16).to_be_bytes();
    let first = [0x60, 0, 0, 0, p0, p1, next, 64];
    [&first[..], &src, &dst, payload].concat()
}

/// A TCP header without options.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut header = vec![0u8; 20];
    header[0..2].copy_from_slice(&src_port.to_be_bytes());
    header[2..4].copy_from_slice(&dst_port.to_be_bytes());
    header[12] = 5 << 4;
    header[13] = flags;
    header
}

/// A UDP header (no checksum) and its payload.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    [
        &src_port.to_be_bytes()[..],
        &dst_port.to_be_bytes(),
        &len.to_be_bytes(),
        &[0, 0],
        payload,
    ]
    .concat()
}

/// An ICMP or ICMPv6 message of type `kind` quoting `quote`.
pub fn icmp(kind: u8, quote: &[u8]) -> Vec<u8> {
    [&[kind, 0, 0, 0, 0, 0, 0, 0][..], quote].concat()
}

/// A TCP segment from the client to the VIP in IPv4, in a frame.
pub fn tcp4(flags: u8) -> Vec<u8> {
    ethernet(IPV4, &ipv4(6, CLIENT4, VIP4, &tcp(40000, 80, flags)))
}

/// A UDP datagram from the client to the VIP in IPv4, in a frame.
pub fn udp4() -> Vec<u8> {
    ethernet(IPV4, &ipv4(17, CLIENT4, VIP4, &udp(5000, 53, &[0; 8])))
}

/// A TCP segment from the client to the VIP in IPv6, in a frame.
pub fn tcp6(flags: u8) -> Vec<u8> {
    ethernet(IPV6, &ipv6(6, CLIENT6, VIP6, &tcp(40000, 80, flags)))
}

/// A UDP datagram from the client to the VIP in IPv6, in a frame.
pub fn udp6() -> Vec<u8> {
    ethernet(IPV6, &ipv6(17, CLIENT6, VIP6, &udp(5000, 53, &[0; 8])))
}
