//! Frame builders for the tests: Ethernet (optionally VLAN-frame), IPv4 or
//! IPv6, and TCP, UDP or any other protocol, emitted with correct lengths and
//! checksums. Knobs exist for exactly the oddities the data plane must handle:
//! IPv4 options, fragments, extension headers, wrong versions, truncation.

use std::net::{IpAddr, SocketAddr};

use lb_common::maps::{FlowKey, PROTO_TCP, PROTO_UDP};
use lb_userspace::dataplane::state::flow_key;

/// The MAC of the client-side router in test frames.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
/// The MAC of the load balancer's interface in test frames.
pub const LB_MAC: [u8; 6] = [0x02, 0xfc, 0, 0, 0, 1];

/// TCP flag bits.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// What follows the IP header.
#[derive(Clone, Debug)]
enum Transport {
    Tcp {
        flags: u8,
    },
    Udp,
    /// Any other protocol number with opaque bytes.
    Other {
        proto: u8,
        bytes: Vec<u8>,
    },
}

/// A test frame, built up with the methods below and emitted with `bytes`.
#[derive(Clone, Debug)]
pub struct Frame {
    src: SocketAddr,
    dst: SocketAddr,
    vlan_tags: Vec<[u8; 4]>,
    transport: Transport,
    payload: Vec<u8>,
    ipv4_options: Vec<u8>,
    ipv4_frag: u16,
    ipv4_vihl: Option<u8>,
    ipv6_version: u8,
    ipv6_extension: Option<u8>,
    dst_mac: [u8; 6],
    ip_length: Option<u16>,
    tcp_offset: Option<u8>,
    udp_length: Option<u16>,
}

impl Frame {
    fn new(src: SocketAddr, dst: SocketAddr, transport: Transport) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed address families");
        Self {
            src,
            dst,
            vlan_tags: Vec::new(),
            transport,
            payload: Vec::new(),
            ipv4_options: Vec::new(),
            ipv4_frag: 0,
            ipv4_vihl: None,
            ipv6_version: 6,
            ipv6_extension: None,
            dst_mac: LB_MAC,
            ip_length: None,
            tcp_offset: None,
            udp_length: None,
        }
    }

    /// Whether it is a TCP SYN without ACK: a segment that opens a flow.
    pub fn opens(&self) -> bool {
        matches!(self.transport, Transport::Tcp { flags } if flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN)
    }

    /// A TCP segment with `flags`.
    pub fn tcp(src: &str, dst: &str, flags: u8) -> Self {
        Self::new(parse(src), parse(dst), Transport::Tcp { flags })
    }

    /// A UDP datagram.
    pub fn udp(src: &str, dst: &str) -> Self {
        Self::new(parse(src), parse(dst), Transport::Udp)
    }

    /// A packet of another IP protocol (ports are ignored).
    pub fn other(src: &str, dst: &str, proto: u8, bytes: &[u8]) -> Self {
        Self::new(
            parse(src),
            parse(dst),
            Transport::Other {
                proto,
                bytes: bytes.to_vec(),
            },
        )
    }

    /// Adds an 802.1Q tag (`tpid` 0x8100) or 802.1ad tag (0x88a8).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        let [a, b] = tpid.to_be_bytes();
        let [c, d] = vid.to_be_bytes();
        self.vlan_tags.push([a, b, c, d]);
        self
    }

    /// The outer tag's VLAN id (0 untagged): what the data plane reads.
    pub fn vlan_id(&self) -> u16 {
        self.vlan_tags
            .first()
            .map_or(0, |tag| u16::from_be_bytes([tag[2], tag[3]]) & 0x0fff)
    }

    /// Sets the L4 payload.
    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    /// Adds IPv4 options (padded to a multiple of 4 with end-of-list).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        while !self.ipv4_options.len().is_multiple_of(4) {
            self.ipv4_options.push(0);
        }
        self
    }

    /// Sets the IPv4 flags/fragment-offset field.
    pub fn ipv4_frag(mut self, field: u16) -> Self {
        self.ipv4_frag = field;
        self
    }

    /// Overrides the IPv4 version/IHL byte.
    pub fn ipv4_vihl(mut self, vihl: u8) -> Self {
        self.ipv4_vihl = Some(vihl);
        self
    }

    /// Overrides the IPv6 version nibble.
    pub fn ipv6_version(mut self, version: u8) -> Self {
        self.ipv6_version = version;
        self
    }

    /// Inserts an 8-byte IPv6 extension header of type `next_header`.
    pub fn ipv6_extension(mut self, next_header: u8) -> Self {
        self.ipv6_extension = Some(next_header);
        self
    }

    /// Addresses the frame to `mac` instead of the load balancer's.
    pub fn dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    /// Overrides the IP length field: IPv4's total length, IPv6's payload
    /// length (the IPv4 header checksum stays right).
    pub fn ip_length(mut self, len: u16) -> Self {
        self.ip_length = Some(len);
        self
    }

    /// Overrides the TCP data offset, in 32-bit words.
    pub fn tcp_offset(mut self, words: u8) -> Self {
        self.tcp_offset = Some(words);
        self
    }

    /// Overrides the UDP length field.
    pub fn udp_length(mut self, len: u16) -> Self {
        self.udp_length = Some(len);
        self
    }

    fn proto(&self) -> u8 {
        match &self.transport {
            Transport::Tcp { .. } => PROTO_TCP,
            Transport::Udp => PROTO_UDP,
            Transport::Other { proto, .. } => *proto,
        }
    }

    /// The connection-table key of this frame's flow.
    pub fn flow(&self) -> FlowKey {
        flow_key(self.src, self.dst, self.proto())
    }

    fn transport_bytes(&self) -> Vec<u8> {
        let (sp, dp) = (self.src.port().to_be_bytes(), self.dst.port().to_be_bytes());
        let mut out = match &self.transport {
            Transport::Tcp { flags } => {
                let mut tcp = vec![0u8; 20];
                tcp[0..2].copy_from_slice(&sp);
                tcp[2..4].copy_from_slice(&dp);
                tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
                if flags & tcp_flags::ACK != 0 {
                    tcp[8..12].copy_from_slice(&2000u32.to_be_bytes());
                }
                tcp[12] = self.tcp_offset.unwrap_or(5) << 4;
                tcp[13] = *flags;
                tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
                tcp
            }
            Transport::Udp => {
                let mut udp = vec![0u8; 8];
                udp[0..2].copy_from_slice(&sp);
                udp[2..4].copy_from_slice(&dp);
                let len = self.udp_length.unwrap_or((8 + self.payload.len()) as u16);
                udp[4..6].copy_from_slice(&len.to_be_bytes());
                udp
            }
            Transport::Other { bytes, .. } => bytes.clone(),
        };
        out.extend_from_slice(&self.payload);
        let checksum_at = match self.transport {
            Transport::Tcp { .. } => Some(16),
            Transport::Udp => Some(6),
            Transport::Other { .. } => None,
        };
        if let Some(at) = checksum_at {
            let mut pseudo = Vec::new();
            for addr in [self.src.ip(), self.dst.ip()] {
                match addr {
                    IpAddr::V4(v4) => pseudo.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => pseudo.extend_from_slice(&v6.octets()),
                }
            }
            pseudo.extend_from_slice(&[0, self.proto()]);
            pseudo.extend_from_slice(&(out.len() as u16).to_be_bytes());
            let sum = internet_checksum(&[&pseudo, &out]);
            out[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        out
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&ROUTER_MAC);
        for tag in &self.vlan_tags {
            frame.extend_from_slice(tag);
        }
        let l4 = self.transport_bytes();
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&0x0800u16.to_be_bytes());
                let header_len = 20 + self.ipv4_options.len();
                let mut ip = vec![0u8; 20];
                ip[0] = self.ipv4_vihl.unwrap_or(0x40 | (header_len / 4) as u8);
                let total = self.ip_length.unwrap_or((header_len + l4.len()) as u16);
                ip[2..4].copy_from_slice(&total.to_be_bytes());
                ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
                ip[6..8].copy_from_slice(&self.ipv4_frag.to_be_bytes());
                ip[8] = 64;
                ip[9] = self.proto();
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                ip.extend_from_slice(&self.ipv4_options);
                let sum = internet_checksum(&[&ip]);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                frame.extend_from_slice(&ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ip = vec![0u8; 40];
                ip[0] = self.ipv6_version << 4;
                let ext_len = if self.ipv6_extension.is_some() { 8 } else { 0 };
                let payload = self.ip_length.unwrap_or((ext_len + l4.len()) as u16);
                ip[4..6].copy_from_slice(&payload.to_be_bytes());
                ip[6] = self.ipv6_extension.unwrap_or(self.proto());
                ip[7] = 64;
                ip[8..24].copy_from_slice(&src.octets());
                ip[24..40].copy_from_slice(&dst.octets());
                if self.ipv6_extension.is_some() {
                    ip.extend_from_slice(&[self.proto(), 0, 0, 0, 0, 0, 0, 0]);
                }
                frame.extend_from_slice(&ip);
            }
            _ => unreachable!("checked in Frame::new"),
        }
        frame.extend_from_slice(&l4);
        frame
    }
}

fn parse(addr: &str) -> SocketAddr {
    addr.parse()
        .unwrap_or_else(|e| panic!("bad test address {addr:?}: {e}"))
}

/// The Internet checksum (RFC 1071) over several byte runs, as if joined.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    for chunk in joined.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_frame_has_valid_checksums() {
        let bytes = Frame::tcp("198.18.2.1:40000", "198.18.0.100:80", tcp_flags::SYN).bytes();
        assert_eq!(bytes.len(), 14 + 20 + 20);
        assert_eq!(&bytes[12..14], &[0x08, 0x00]);
        assert_eq!(
            internet_checksum(&[&bytes[14..34]]),
            0,
            "IPv4 header checksum"
        );
        let mut pseudo = bytes[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        assert_eq!(
            internet_checksum(&[&pseudo, &bytes[34..]]),
            0,
            "TCP checksum"
        );
    }

    #[test]
    fn vlan_tags_sit_between_macs_and_ethertype() {
        let bytes = Frame::udp("[2001:2::9]:5000", "[2001:2::100]:53")
            .vlan(0x8100, 7)
            .bytes();
        assert_eq!(&bytes[12..18], &[0x81, 0x00, 0x00, 0x07, 0x86, 0xdd]);
        assert_eq!(bytes.len(), 18 + 40 + 8);
    }
}
