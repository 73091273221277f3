//! Fulcrum's decapsulation program, for backends (`fulcrum decap attach`):
//! strips the outer IPv4 or IPv6 header (IP in IP, or GUE's UDP and GUE
//! headers) of a packet addressed to one of this host's addresses, and
//! passes the inner packet on to the stack, its Ethernet header (and VLAN
//! tag) kept. Passes everything else untouched. Every frame moves exactly
//! one counter.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::maps::{DECAP_ADDRESSES, DecapConfig, DecapReason, PROTO_UDP};
use lb_ebpf::{
    header, ipv4_header_len, ipv4_is_fragment, is_vlan,
    outer::{GUE_LEN, IPV6_LEN, PROTO_IPIP, PROTO_IPV6, UDP_LEN},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// This host's addresses and GUE's port, set by `fulcrum decap attach`.
#[btf_map]
static DECAP_CONFIG: Array<DecapConfig, 1> = Array::new();

#[btf_map]
static DECAP_STATS: PerCpuArray<u64, { DecapReason::COUNT as usize }> = PerCpuArray::new();

/// IPv6 next header of a fragment header.
const IPV6_FRAGMENT: u8 = 44;

#[xdp]
pub fn fulcrum_decap(ctx: XdpContext) -> u32 {
    let reason = decapsulate(&ctx);
    if let Some(counter) = DECAP_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
    match reason {
        DecapReason::DropTruncated | DecapReason::DropFailed => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// The outer header's length and the inner packet's family (4 or 41), if
/// the tunnel protocol `proto` (or GUE's UDP, at `l4`) carries one.
#[inline(always)]
fn tunnel(
    ctx: &XdpContext,
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
    let udp = header::<UdpHdr>(ctx, l4).ok_or(DecapReason::DropTruncated)?;
    // SAFETY: bounds checked by `header`.
    if u16::from_be_bytes(unsafe { (*udp).dst }) != gue_port {
        return Err(DecapReason::PassNotTunnel);
    }
    let gue = header::<[u8; GUE_LEN]>(ctx, l4 + UDP_LEN).ok_or(DecapReason::DropTruncated)?;
    // SAFETY: bounds checked by `header`.
    let [first, inner, ..] = unsafe { *gue };
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

#[inline(always)]
fn decapsulate(ctx: &XdpContext) -> DecapReason {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return DecapReason::DropTruncated;
    };
    // SAFETY: bounds checked by `header`.
    let tpid = unsafe { (*eth).ether_type };
    let mut ether_type = tpid;
    let mut l3 = EthHdr::LEN;
    let mut tci = [0u8; 2];
    if is_vlan(ether_type) {
        let Some(vlan) = header::<VlanHdr>(ctx, l3) else {
            return DecapReason::DropTruncated;
        };
        // SAFETY: bounds checked by `header`.
        (ether_type, tci) = unsafe { ((*vlan).ether_type, (*vlan).tci) };
        l3 += VlanHdr::LEN;
    }
    let Some(config) = DECAP_CONFIG.get(0) else {
        return DecapReason::PassNotOurs;
    };
    let (ip_len, proto, ours) = if ether_type == EtherType::Ipv4 as u16 {
        let Some(ip) = header::<Ipv4Hdr>(ctx, l3) else {
            return DecapReason::DropTruncated;
        };
        // SAFETY: bounds checked by `header`.
        let ip = unsafe { &*ip };
        let Some(len) = ipv4_header_len(ip.vihl) else {
            return DecapReason::PassNotTunnel;
        };
        let dst = ip.dst_addr;
        let ours =
            (0..DECAP_ADDRESSES).any(|i| i < usize::from(config.count4) && config.v4[i] == dst);
        if ipv4_is_fragment(ip.frags) {
            return DecapReason::PassFragment;
        }
        (len, ip.proto, ours)
    } else if ether_type == EtherType::Ipv6 as u16 {
        let Some(ip) = header::<Ipv6Hdr>(ctx, l3) else {
            return DecapReason::DropTruncated;
        };
        // SAFETY: bounds checked by `header`.
        let ip = unsafe { &*ip };
        let dst = ip.dst_addr;
        let ours =
            (0..DECAP_ADDRESSES).any(|i| i < usize::from(config.count6) && config.v6[i] == dst);
        if ip.next_hdr == IPV6_FRAGMENT {
            return DecapReason::PassFragment;
        }
        (IPV6_LEN, ip.next_hdr, ours)
    } else {
        return DecapReason::PassNotTunnel;
    };
    let (extra, inner) = match tunnel(ctx, proto, l3 + ip_len, config.gue_port) {
        Ok(found) => found,
        Err(reason) => return reason,
    };
    if !ours {
        return DecapReason::PassNotOurs;
    }
    let strip = ip_len + extra;
    let inner_type = if inner == PROTO_IPIP {
        EtherType::Ipv4 as u16
    } else {
        EtherType::Ipv6 as u16
    };
    // The link-layer header moves forward over the outer headers: MACs,
    // then the VLAN tag if there is one, then the inner ethertype.
    let (Some(old), Some(new)) = (header::<EthHdr>(ctx, 0), header::<EthHdr>(ctx, strip)) else {
        return DecapReason::DropTruncated;
    };
    // SAFETY: both bounds-checked; `strip` >= 20, so they do not overlap.
    unsafe {
        (*new).dst_addr = (*old).dst_addr;
        (*new).src_addr = (*old).src_addr;
        if l3 > EthHdr::LEN {
            let Some(new_tag) = header::<VlanHdr>(ctx, strip + EthHdr::LEN) else {
                return DecapReason::DropTruncated;
            };
            (*new).ether_type = tpid;
            (*new_tag).tci = tci;
            (*new_tag).ether_type = inner_type;
        } else {
            (*new).ether_type = inner_type;
        }
    }
    // SAFETY: the helper only moves `data`; no pointer is used after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip as i32) } != 0 {
        return DecapReason::DropFailed;
    }
    DecapReason::Decapsulated
}

/// Never reached: the verifier rejects any path into it. On the host (where
/// clippy checks this crate) std provides the handler.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
