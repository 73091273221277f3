//! Forwarding by encapsulation: growing the frame and writing the outer
//! headers (IP in IP or GUE) in front of a packet for a backend reached
//! through routers, and, for a packet that would not fit the egress MTU
//! once encapsulated, the ICMP too-big answer sent back in its place.

use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    flow_hash::mix64,
    maps::{
        DataplaneConfig, EncapJob, FAMILY_IPV4, FORWARD_GUE, PROTO_UDP, Reason, encap_overhead,
    },
};
use lb_ebpf::{
    frame::header_mut,
    outer::{
        GUE_LEN, ICMP_LEN, ICMP4_QUOTE, ICMP6_QUOTE, IPV4_LEN, IPV6_LEN, PROTO_ICMP, PROTO_ICMPV6,
        Sum, UDP_LEN, flow_label, gue_header, gue_source_port, icmp4_too_big, icmp6_too_big,
        ip_in_ip, ipv4_header, ipv4_packet_sum, ipv6_header, ipv6_packet_sum, source4, source6,
        udp_header,
    },
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    vlan::VlanHdr,
};

/// What the outer headers take from the packet, read before the frame
/// moves (moving it invalidates every pointer into it).
struct Inner {
    /// The IP packet's length, from its header.
    len: u16,
    /// Its DSCP and ECN bits, copied to the outer header.
    tos: u8,
    /// Whether it may not be fragmented (always, for IPv6).
    dont_fragment: bool,
    /// The one's complement sum of the whole packet, when its checksums
    /// make it known (for a GUE checksum over IPv6).
    sum: Option<Sum>,
}

/// Reads the IP header at `l3` of a packet of `family`. A length field
/// the frame does not hold is a truncated packet (`fulcrum_xdp` drops
/// those before handing over; the outer length depends on it here).
#[inline(always)]
fn inner(ctx: &XdpContext, l3: usize, family: u8) -> Result<Inner, Reason> {
    let room = ctx.data_end() - ctx.data() - l3;
    let found = if family == FAMILY_IPV4 {
        let ip = header_mut::<Ipv4Hdr>(ctx, l3).ok_or(Reason::DropTruncated)?;
        // SAFETY: bounds checked by `header_mut`.
        let ip = unsafe { *ip };
        let header_len = usize::from(ip.vihl & 0x0f) * 4;
        let len = u16::from_be_bytes(ip.tot_len);
        let udp_check = if ip.proto == PROTO_UDP {
            let check =
                header_mut::<[u8; 2]>(ctx, l3 + header_len + 6).ok_or(Reason::DropTruncated)?;
            // SAFETY: bounds checked by `header_mut`.
            u16::from_ne_bytes(unsafe { *check })
        } else {
            1
        };
        Inner {
            len,
            tos: ip.tos,
            dont_fragment: ip.frags[0] & 0x40 != 0,
            sum: ipv4_packet_sum(
                ip.src_addr,
                ip.dst_addr,
                ip.proto,
                len.wrapping_sub(header_len as u16),
                udp_check,
            ),
        }
    } else {
        let ip = header_mut::<Ipv6Hdr>(ctx, l3).ok_or(Reason::DropTruncated)?;
        // SAFETY: bounds checked by `header_mut`.
        let ip = unsafe { *ip };
        let [a, b, c, d] = ip.vcf;
        let [e, f] = ip.payload_len;
        Inner {
            len: u16::from_be_bytes(ip.payload_len).saturating_add(IPV6_LEN as u16),
            tos: (a << 4) | (b >> 4),
            dont_fragment: true,
            sum: Some(ipv6_packet_sum(&[
                a,
                b,
                c,
                d,
                e,
                f,
                ip.next_hdr,
                ip.hop_limit,
            ])),
        }
    };
    if usize::from(found.len) > room {
        return Err(Reason::DropTruncated);
    }
    Ok(found)
}

/// The ethertype of an IP header of `family`, as the frame holds it.
#[inline(always)]
fn ether_type(family: u8) -> u16 {
    if family == FAMILY_IPV4 {
        EtherType::Ipv4 as u16
    } else {
        EtherType::Ipv6 as u16
    }
}

/// Rewrites the link-layer header of a frame grown by `grown` bytes at its
/// front: the old one (and its VLAN tag, if `l3` says there is one) now
/// starts at `grown`. Writes `dst`/`src` and says that `family` follows.
/// Must run before anything is written over the old header.
#[inline(always)]
fn relink(
    ctx: &XdpContext,
    grown: usize,
    l3: usize,
    dst: [u8; 6],
    src: [u8; 6],
    family: u8,
) -> Option<()> {
    let eth = header_mut::<EthHdr>(ctx, 0)?;
    let old = header_mut::<EthHdr>(ctx, grown)?;
    // SAFETY: both bounds-checked; `grown` >= 20, so they do not overlap.
    unsafe {
        let tag = (*old).ether_type;
        if l3 > EthHdr::LEN {
            let vlan = header_mut::<VlanHdr>(ctx, EthHdr::LEN)?;
            let old_vlan = header_mut::<VlanHdr>(ctx, grown + EthHdr::LEN)?;
            (*vlan).tci = (*old_vlan).tci;
            (*vlan).ether_type = ether_type(family);
            (*eth).ether_type = tag;
        } else {
            (*eth).ether_type = ether_type(family);
        }
        (*eth).dst_addr = dst;
        (*eth).src_addr = src;
    }
    Some(())
}

/// Writes `bytes` at `offset` in the frame.
#[inline(always)]
fn put<const N: usize>(ctx: &XdpContext, offset: usize, bytes: [u8; N]) -> Option<()> {
    let at = header_mut::<[u8; N]>(ctx, offset)?;
    // SAFETY: bounds checked by `header_mut`.
    unsafe { core::ptr::write_unaligned(at, bytes) };
    Some(())
}

/// Sends the job's IP packet to its backend inside an outer header to the
/// backend's address, from a source that varies with the flow's hash, to
/// the next hop's MAC. A packet that would exceed the egress MTU once
/// encapsulated is answered as too big instead. Says why, which also says
/// what becomes of the frame (`Tx` and `TxTooBig`: `XDP_TX`; the rest
/// drop it).
#[inline(always)]
pub fn encapsulate(ctx: &XdpContext, job: &EncapJob, config: &DataplaneConfig) -> Reason {
    let (l3, family, backend, hash) = (usize::from(job.l3), job.family, &job.backend, job.hash);
    // At most one VLAN tag: a bound the verifier needs to see, since the
    // offset comes from a map.
    if l3 > EthHdr::LEN + VlanHdr::LEN {
        return Reason::DropEncapFailed;
    }
    let inner = match inner(ctx, l3, family) {
        Ok(inner) => inner,
        Err(reason) => return reason,
    };
    let encap = &config.encap;
    let outer = encap_overhead(backend.family, backend.forward);
    if usize::from(inner.len) + outer > usize::from(encap.mtu) {
        let mtu = encap.mtu.saturating_sub(outer as u16);
        return too_big(ctx, l3, family, &inner, mtu);
    }
    // SAFETY: the helper only moves `data`; every pointer is taken again.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer as i32)) } != 0 {
        return Reason::DropEncapFailed;
    }
    let entropy = mix64(hash);
    let gue = backend.forward == FORWARD_GUE;
    let carried = ip_in_ip(family);
    let (next, payload) = if gue {
        (PROTO_UDP, inner.len + (UDP_LEN + GUE_LEN) as u16)
    } else {
        (carried, inner.len)
    };
    let if_mac = config.if_mac;
    let written = relink(ctx, outer, l3, backend.mac, if_mac, backend.family).and_then(|()| {
        let (ip_len, pseudo) = if backend.family == FAMILY_IPV4 {
            let mut dst = [0u8; 4];
            dst.copy_from_slice(&backend.addr[..4]);
            let src = source4(encap, entropy);
            let header = ipv4_header(inner.tos, payload + IPV4_LEN as u16, true, next, src, dst);
            put(ctx, l3, header)?;
            (IPV4_LEN, None)
        } else {
            let src = source6(encap, entropy);
            let header = ipv6_header(
                inner.tos,
                flow_label(entropy),
                payload,
                next,
                &src,
                &backend.addr,
            );
            put(ctx, l3, header)?;
            let pseudo = Sum::default()
                .bytes(&src)
                .bytes(&backend.addr)
                .word(payload)
                .word(u16::from(PROTO_UDP));
            (IPV6_LEN, Some(pseudo))
        };
        if gue {
            let udp = l3 + ip_len;
            let (sport, dport) = (gue_source_port(entropy), encap.gue_port);
            let gue = gue_header(carried);
            // IPv4 allows no UDP checksum; IPv6 needs one, computed from
            // the inner packet's own checksums (RFC 1624's arithmetic),
            // or left out when they do not give it (a UDP-in-IPv4 packet
            // without a checksum).
            let check = match (pseudo, inner.sum) {
                (Some(pseudo), Some(sum)) => {
                    let total = pseudo
                        .bytes(&udp_header(sport, dport, payload, 0))
                        .bytes(&gue)
                        .plus(sum);
                    // 0 would mean "no checksum": its complement says the same.
                    match total.checksum() {
                        0 => 0xffff,
                        check => check,
                    }
                }
                _ => 0,
            };
            put(ctx, udp, udp_header(sport, dport, payload, check))?;
            put(ctx, udp + UDP_LEN, gue)?;
        }
        Some(())
    });
    match written {
        Some(()) => Reason::Tx,
        None => Reason::DropEncapFailed,
    }
}

/// The kernel's partial checksum of the `N` bytes at `offset`.
#[inline(always)]
fn quote_sum<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<u32> {
    let quote = header_mut::<[u8; N]>(ctx, offset)?;
    // SAFETY: the bytes' bounds were checked; the helper only reads them.
    let partial =
        unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, quote as *mut u32, N as u32, 0) };
    u32::try_from(partial).ok()
}

/// Answers a packet too big for the egress link once encapsulated: an
/// ICMP "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big"
/// from the VIP, quoting the packet's start, advertising `mtu`, back out
/// to the MAC it came from. An IPv4 packet without DF is dropped.
#[inline(always)]
fn too_big(ctx: &XdpContext, l3: usize, family: u8, inner: &Inner, mtu: u16) -> Reason {
    if !inner.dont_fragment {
        return Reason::DropTooBig;
    }
    let v4 = family == FAMILY_IPV4;
    let (ip_len, quote) = if v4 {
        (IPV4_LEN, ICMP4_QUOTE)
    } else {
        (IPV6_LEN, ICMP6_QUOTE)
    };
    let frame = ctx.data_end() - ctx.data();
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return Reason::DropTruncated;
    };
    // SAFETY: bounds checked by `header_mut`.
    let (client_mac, own_mac) = unsafe { ((*eth).src_addr, (*eth).dst_addr) };
    if frame < l3 + quote {
        return Reason::DropTooBig;
    }
    // The answer goes from the packet's destination (the VIP) to its source.
    let mut client = [0u8; 16];
    let mut vip = [0u8; 16];
    if v4 {
        let Some(ip) = header_mut::<Ipv4Hdr>(ctx, l3) else {
            return Reason::DropTruncated;
        };
        // SAFETY: bounds checked by `header_mut`.
        unsafe {
            client[..4].copy_from_slice(&(*ip).src_addr);
            vip[..4].copy_from_slice(&(*ip).dst_addr);
        }
    } else {
        let Some(ip) = header_mut::<Ipv6Hdr>(ctx, l3) else {
            return Reason::DropTruncated;
        };
        // SAFETY: bounds checked by `header_mut`.
        unsafe {
            client = (*ip).src_addr;
            vip = (*ip).dst_addr;
        }
    }
    let grown = ip_len + ICMP_LEN;
    // SAFETY: the helpers only move `data_end` and `data`; every pointer
    // is taken again.
    let moved = unsafe {
        bpf_xdp_adjust_tail(ctx.ctx, -((frame - l3 - quote) as i32)) == 0
            && bpf_xdp_adjust_head(ctx.ctx, -(grown as i32)) == 0
    };
    if !moved {
        return Reason::DropEncapFailed;
    }
    let written = relink(ctx, grown, l3, client_mac, own_mac, family).and_then(|()| {
        let icmp = l3 + ip_len;
        let partial = if v4 {
            quote_sum::<ICMP4_QUOTE>(ctx, icmp + ICMP_LEN)?
        } else {
            quote_sum::<ICMP6_QUOTE>(ctx, icmp + ICMP_LEN)?
        };
        let total = (ICMP_LEN + quote) as u16;
        if v4 {
            let header = icmp4_too_big(mtu);
            let check = Sum::default().bytes(&header).native(partial).checksum();
            let mut message = header;
            message[2..4].copy_from_slice(&check.to_be_bytes());
            put(ctx, icmp, message)?;
            let mut src = [0u8; 4];
            let mut dst = [0u8; 4];
            src.copy_from_slice(&vip[..4]);
            dst.copy_from_slice(&client[..4]);
            put(
                ctx,
                l3,
                ipv4_header(0, total + IPV4_LEN as u16, false, PROTO_ICMP, src, dst),
            )
        } else {
            let header = icmp6_too_big(mtu);
            let check = Sum::default()
                .bytes(&vip)
                .bytes(&client)
                .word(total)
                .word(u16::from(PROTO_ICMPV6))
                .bytes(&header)
                .native(partial)
                .checksum();
            let mut message = header;
            message[2..4].copy_from_slice(&check.to_be_bytes());
            put(ctx, icmp, message)?;
            put(
                ctx,
                l3,
                ipv6_header(0, 0, total, PROTO_ICMPV6, &vip, &client),
            )
        }
    });
    match written {
        Some(()) => Reason::TxTooBig,
        None => Reason::DropEncapFailed,
    }
}
