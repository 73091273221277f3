//! The decapsulation's decision, for backends: whether a frame is a
//! tunnelled packet (IP in IP, or GUE's UDP and GUE headers, in IPv4 or
//! IPv6) addressed to one of this host's addresses, and how many bytes of
//! outer headers to strip. Over `Frame`, so host tests reach it; the
//! decapsulation program moves the link-layer header and the frame.

use lb_common::maps::{DECAP_ADDRESSES, DecapConfig, DecapReason, PROTO_UDP};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    frame::Frame,
    outer::{GUE_LEN, IPV6_LEN, PROTO_IPIP, PROTO_IPV6, UDP_LEN},
    parse::{IPV6_NEXT_FRAGMENT, Link, ipv4_header_len, ipv4_is_fragment, link},
};

/// A tunnelled packet to strip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnelled {
    /// The frame's link layer, which stays.
    pub link: Link,
    /// The bytes of outer headers after it.
    pub strip: usize,
    /// The inner packet's ethertype (raw).
    pub inner_type: u16,
}

/// The outer headers' bytes after the outer IP header, and the inner
/// packet's family (4 or 41), if the tunnel protocol `proto` (or GUE's
/// UDP, at `l4`) carries one.
#[inline(always)]
fn tunnel<F: Frame + ?Sized>(
    frame: &F,
    proto: u8,
    l4: usize,
    gue_port: u16,
) -> Result<(usize, u8), DecapReason> {
    if proto == PROTO_IPIP || proto == PROTO_IPV6 {
        return Ok((0, proto));
    }
    if proto != PROTO_UDP || gue_port == 0 {
        return Err(DecapReason::PassNotTunnel);
    }
    let udp = frame
        .header::<UdpHdr>(l4)
        .ok_or(DecapReason::DropTruncated)?;
    if u16::from_be_bytes(udp.dst) != gue_port {
        return Err(DecapReason::PassNotTunnel);
    }
    let [first, inner, ..] = *frame
        .header::<[u8; GUE_LEN]>(l4 + UDP_LEN)
        .ok_or(DecapReason::DropTruncated)?;
    match first >> 4 {
        // Variant 0, no control bit, no extension words: the protocol
        // byte says what follows.
        0 if first == 0 && (inner == PROTO_IPIP || inner == PROTO_IPV6) => {
            Ok((UDP_LEN + GUE_LEN, inner))
        }
        // Variant 1 (no GUE header): the IP version says it.
        4 => Ok((UDP_LEN, PROTO_IPIP)),
        6 => Ok((UDP_LEN, PROTO_IPV6)),
        _ => Err(DecapReason::PassUnsupported),
    }
}

/// What to strip from a frame sent to a host with `config`'s addresses
/// and GUE port, or why it is left alone (or dropped: `DropTruncated`).
#[inline(always)]
pub fn tunnelled<F: Frame + ?Sized>(
    frame: &F,
    config: &DecapConfig,
) -> Result<Tunnelled, DecapReason> {
    let eth = frame
        .header::<EthHdr>(0)
        .ok_or(DecapReason::DropTruncated)?;
    let link = link(frame, eth).ok_or(DecapReason::DropTruncated)?;
    let l3 = link.l3;
    let (ip_len, proto, ours) = if link.ether_type == EtherType::Ipv4 as u16 {
        let ip = frame
            .header::<Ipv4Hdr>(l3)
            .ok_or(DecapReason::DropTruncated)?;
        let len = ipv4_header_len(ip.vihl).ok_or(DecapReason::PassNotTunnel)?;
        let dst = ip.dst_addr;
        let ours =
            (0..DECAP_ADDRESSES).any(|i| i < usize::from(config.count4) && config.v4[i] == dst);
        if ipv4_is_fragment(ip.frags) {
            return Err(DecapReason::PassFragment);
        }
        (len, ip.proto, ours)
    } else if link.ether_type == EtherType::Ipv6 as u16 {
        let ip = frame
            .header::<Ipv6Hdr>(l3)
            .ok_or(DecapReason::DropTruncated)?;
        let dst = ip.dst_addr;
        let ours =
            (0..DECAP_ADDRESSES).any(|i| i < usize::from(config.count6) && config.v6[i] == dst);
        if ip.next_hdr == IPV6_NEXT_FRAGMENT {
            return Err(DecapReason::PassFragment);
        }
        (IPV6_LEN, ip.next_hdr, ours)
    } else {
        return Err(DecapReason::PassNotTunnel);
    };
    let (extra, inner) = tunnel(frame, proto, l3 + ip_len, config.gue_port)?;
    if !ours {
        return Err(DecapReason::PassNotOurs);
    }
    let inner_type = if inner == PROTO_IPIP {
        EtherType::Ipv4 as u16
    } else {
        EtherType::Ipv6 as u16
    };
    Ok(Tunnelled {
        link,
        strip: ip_len + extra,
        inner_type,
    })
}
