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
    vlan::VlanHdr,
};

use crate::{
    frame::Frame,
    outer::{GUE_LEN, IPV6_LEN, PROTO_IPIP, PROTO_IPV6, UDP_LEN},
    parse::{
        IPV6_NEXT_FRAGMENT, Link, LinkError, ipv4_header_len, ipv4_is_fragment, link, same_address,
    },
};

/// A tunnelled packet to strip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnelled {
    /// The bytes of outer headers after the link layer, which stays.
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

/// Whether `dst` is one of the host's IPv4 addresses.
#[inline(always)]
fn ours4(config: &DecapConfig, dst: [u8; 4]) -> bool {
    let dst = u32::from_ne_bytes(dst);
    (0..DECAP_ADDRESSES)
        .any(|i| i < usize::from(config.count4) && u32::from_ne_bytes(config.v4[i]) == dst)
}

/// Whether `dst` is one of the host's IPv6 addresses.
#[inline(always)]
fn ours6(config: &DecapConfig, dst: [u8; 16]) -> bool {
    (0..DECAP_ADDRESSES)
        .any(|i| i < usize::from(config.count6) && same_address(&config.v6[i], &dst))
}

/// The link layer of a frame whose Ethernet header is `eth`, as the
/// decapsulation takes it (`parse::link`, its tag to `tag`), or why the
/// frame is left alone or dropped.
#[inline(always)]
pub fn outer_link<F: Frame + ?Sized>(
    frame: &F,
    eth: &EthHdr,
    tag: impl FnOnce(&VlanHdr),
) -> Result<Link, DecapReason> {
    link(frame, eth, tag).map_err(|error| match error {
        LinkError::Truncated => DecapReason::DropTruncated,
        // The first tag's ethertype says no IP packet follows.
        LinkError::Stacked => DecapReason::PassNotTunnel,
    })
}

/// What to strip from a frame with link layer `link`, sent to a host with
/// `config`'s addresses and GUE port, or why it is left alone (or dropped:
/// `DropTruncated`).
#[inline(always)]
pub fn tunnelled<F: Frame + ?Sized>(
    frame: &F,
    link: &Link,
    config: &DecapConfig,
) -> Result<Tunnelled, DecapReason> {
    let l3 = link.l3;
    let (ip_len, proto, ours) = if link.ether_type == EtherType::Ipv4 as u16 {
        let ip = frame
            .header::<Ipv4Hdr>(l3)
            .ok_or(DecapReason::DropTruncated)?;
        let len = ipv4_header_len(ip.vihl).ok_or(DecapReason::PassNotTunnel)?;
        let ours = ours4(config, ip.dst_addr);
        if ipv4_is_fragment(ip.frags) {
            return Err(DecapReason::PassFragment);
        }
        (len, ip.proto, ours)
    } else if link.ether_type == EtherType::Ipv6 as u16 {
        let ip = frame
            .header::<Ipv6Hdr>(l3)
            .ok_or(DecapReason::DropTruncated)?;
        let ours = ours6(config, ip.dst_addr);
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
        strip: ip_len + extra,
        inner_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    const GUE_PORT: u16 = 6080;
    const BACKEND4: [u8; 4] = [198, 18, 5, 1];
    const OTHER4: [u8; 4] = [198, 18, 5, 2];
    const LB4: [u8; 4] = [198, 18, 64, 7];
    const BACKEND6: [u8; 16] = [0x20, 1, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1];
    const LB6: [u8; 16] = [0x20, 1, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 7];
    const OTHER6: [u8; 16] = [0x20, 1, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 2];

    /// This host: `BACKEND4` (the second of two), `BACKEND6`; `OTHER4` and
    /// `OTHER6` stand past the counts.
    fn config() -> DecapConfig {
        let mut config = DecapConfig {
            count4: 2,
            count6: 1,
            gue_port: GUE_PORT,
            ..DecapConfig::default()
        };
        config.v4[0] = [198, 18, 5, 9];
        config.v4[1] = BACKEND4;
        config.v4[2] = OTHER4;
        config.v6[0] = BACKEND6;
        config.v6[1] = OTHER6;
        config
    }

    fn inner4() -> Vec<u8> {
        ipv4(6, CLIENT4, VIP4, &tcp(40000, 80, ACK))
    }

    fn inner6() -> Vec<u8> {
        ipv6(6, CLIENT6, VIP6, &tcp(40000, 80, ACK))
    }

    fn gue(inner_proto: u8, inner: &[u8]) -> Vec<u8> {
        udp(
            50000,
            GUE_PORT,
            &[&[0, inner_proto, 0, 0][..], inner].concat(),
        )
    }

    const TO_IPV4: u16 = IPV4.to_be();
    const TO_IPV6: u16 = IPV6.to_be();

    fn strip(strip: usize, inner_type: u16) -> Result<Tunnelled, DecapReason> {
        Ok(Tunnelled { strip, inner_type })
    }

    /// What the decapsulation makes of `frame`: its link layer walked as
    /// the program walks it, then the outer headers.
    fn decap(frame: &[u8], config: &DecapConfig) -> Result<Tunnelled, DecapReason> {
        let eth = frame
            .header::<EthHdr>(0)
            .ok_or(DecapReason::DropTruncated)?;
        tunnelled(frame, &outer_link(frame, eth, |_| {})?, config)
    }

    #[test]
    fn tunnelled_packets_for_this_host_are_stripped_the_rest_left() {
        let rows: Vec<(&str, Vec<u8>, Result<Tunnelled, DecapReason>)> = vec![
            (
                "IPv4 in IPv4",
                ethernet(IPV4, &ipv4(PROTO_IPIP, LB4, BACKEND4, &inner4())),
                strip(20, TO_IPV4),
            ),
            (
                "IPv6 in IPv4",
                ethernet(IPV4, &ipv4(PROTO_IPV6, LB4, BACKEND4, &inner6())),
                strip(20, TO_IPV6),
            ),
            (
                "IPv6 in IPv6",
                ethernet(IPV6, &ipv6(PROTO_IPV6, LB6, BACKEND6, &inner6())),
                strip(40, TO_IPV6),
            ),
            (
                "IPv4 in IPv6",
                ethernet(IPV6, &ipv6(PROTO_IPIP, LB6, BACKEND6, &inner4())),
                strip(40, TO_IPV4),
            ),
            (
                "GUE variant 0 in IPv4",
                ethernet(IPV4, &ipv4(17, LB4, BACKEND4, &gue(PROTO_IPIP, &inner4()))),
                strip(20 + 8 + 4, TO_IPV4),
            ),
            (
                "GUE variant 0 in IPv6",
                ethernet(IPV6, &ipv6(17, LB6, BACKEND6, &gue(PROTO_IPV6, &inner6()))),
                strip(40 + 8 + 4, TO_IPV6),
            ),
            (
                "GUE variant 1: the IP version says the family",
                ethernet(
                    IPV4,
                    &ipv4(17, LB4, BACKEND4, &udp(50000, GUE_PORT, &inner6())),
                ),
                strip(20 + 8, TO_IPV6),
            ),
            (
                "a VLAN tag stays",
                tagged(
                    VLAN_8021Q,
                    7,
                    IPV4,
                    &ipv4(PROTO_IPIP, LB4, BACKEND4, &inner4()),
                ),
                strip(20, TO_IPV4),
            ),
            (
                "IP in IP to another host",
                ethernet(IPV4, &ipv4(PROTO_IPIP, LB4, [198, 18, 5, 3], &inner4())),
                Err(DecapReason::PassNotOurs),
            ),
            (
                "IP in IPv6 to another host",
                ethernet(IPV6, &ipv6(PROTO_IPV6, LB6, VIP6, &inner6())),
                Err(DecapReason::PassNotOurs),
            ),
            (
                "an IPv6 address past the configured count",
                ethernet(IPV6, &ipv6(PROTO_IPV6, LB6, OTHER6, &inner6())),
                Err(DecapReason::PassNotOurs),
            ),
            (
                "an address past the configured count",
                ethernet(IPV4, &ipv4(PROTO_IPIP, LB4, OTHER4, &inner4())),
                Err(DecapReason::PassNotOurs),
            ),
            (
                "plain TCP to this host",
                ethernet(IPV4, &ipv4(6, CLIENT4, BACKEND4, &tcp(40000, 80, ACK))),
                Err(DecapReason::PassNotTunnel),
            ),
            (
                "UDP to another port",
                ethernet(IPV4, &ipv4(17, LB4, BACKEND4, &udp(50000, 53, &inner4()))),
                Err(DecapReason::PassNotTunnel),
            ),
            (
                "GUE with a control message",
                ethernet(
                    IPV4,
                    &ipv4(17, LB4, BACKEND4, &udp(50000, GUE_PORT, &[0x20, 4, 0, 0])),
                ),
                Err(DecapReason::PassUnsupported),
            ),
            (
                "GUE variant 0 carrying TCP",
                ethernet(IPV4, &ipv4(17, LB4, BACKEND4, &gue(6, &[0; 20]))),
                Err(DecapReason::PassUnsupported),
            ),
            (
                "an IPv4 fragment of a tunnelled packet",
                edited(
                    ethernet(IPV4, &ipv4(PROTO_IPIP, LB4, BACKEND4, &inner4())),
                    |f| f[L3 + 6] = 0x20,
                ),
                Err(DecapReason::PassFragment),
            ),
            (
                "an IPv6 fragment",
                ethernet(IPV6, &ipv6(44, LB6, BACKEND6, &[0; 8])),
                Err(DecapReason::PassFragment),
            ),
            (
                "an IHL below 5 words",
                edited(
                    ethernet(IPV4, &ipv4(PROTO_IPIP, LB4, BACKEND4, &inner4())),
                    |f| f[L3] = 0x44,
                ),
                Err(DecapReason::PassNotTunnel),
            ),
            (
                "ARP",
                ethernet(ARP, &[0; 28]),
                Err(DecapReason::PassNotTunnel),
            ),
            (
                "a GUE header cut short",
                ethernet(IPV4, &ipv4(17, LB4, BACKEND4, &udp(50000, GUE_PORT, &[]))),
                Err(DecapReason::DropTruncated),
            ),
            (
                "an IPv6 header cut short",
                ethernet(IPV6, &ipv6(PROTO_IPV6, LB6, BACKEND6, &[]))[..L3 + 30].to_vec(),
                Err(DecapReason::DropTruncated),
            ),
            (
                "a frame shorter than an Ethernet header",
                vec![0; 12],
                Err(DecapReason::DropTruncated),
            ),
        ];
        for (what, frame, expected) in rows {
            assert_eq!(decap(&frame, &config()), expected, "{what}");
        }
        let no_gue = DecapConfig {
            gue_port: 0,
            ..config()
        };
        let frame = ethernet(IPV4, &ipv4(17, LB4, BACKEND4, &gue(PROTO_IPIP, &inner4())));
        assert_eq!(
            decap(&frame, &no_gue),
            Err(DecapReason::PassNotTunnel),
            "GUE when the host takes none"
        );
    }
}
