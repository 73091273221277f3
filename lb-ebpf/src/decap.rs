//! Fulcrum's decapsulation program, for backends (`fulcrum decap attach`):
//! strips the outer IPv4 or IPv6 header (IP in IP, or GUE's UDP and GUE
//! headers) of a packet addressed to one of this host's addresses, and
//! passes the inner packet on to the stack, its Ethernet header (and VLAN
//! tag) kept. Passes everything else untouched. Every frame moves exactly
//! one counter.
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "aya's #[xdp] wraps each program in a function of its own, without the \
              program's doc comment"
)]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::maps::{DecapConfig, DecapReason};
use lb_ebpf::{
    frame::{Frame as _, header_mut},
    tunnel::{Tunnelled, outer_link, tunnelled},
};
use network_types::{eth::EthHdr, vlan::VlanHdr};

/// This host's addresses and GUE's port, set by `fulcrum decap attach`.
#[btf_map]
static DECAP_CONFIG: Array<DecapConfig, 1> = Array::new();

#[btf_map]
static DECAP_STATS: PerCpuArray<u64, { DecapReason::COUNT as usize }> = PerCpuArray::new();

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

#[inline(always)]
fn decapsulate(ctx: &XdpContext) -> DecapReason {
    let Some(eth) = ctx.header::<EthHdr>(0) else {
        return DecapReason::DropTruncated;
    };
    let tpid = eth.ether_type;
    let mut tci = [0u8; 2];
    let link = match outer_link(ctx, eth, |tag| tci = tag.tci) {
        Ok(link) => link,
        Err(reason) => return reason,
    };
    let Some(config) = DECAP_CONFIG.get(0) else {
        return DecapReason::PassNotOurs;
    };
    let Tunnelled { strip, inner_type } = match tunnelled(ctx, &link, config) {
        Ok(found) => found,
        Err(reason) => return reason,
    };
    // The link-layer header moves forward over the outer headers: MACs,
    // then the VLAN tag if there is one, then the inner ethertype.
    let (Some(old), Some(new)) = (
        header_mut::<EthHdr>(ctx, 0),
        header_mut::<EthHdr>(ctx, strip),
    ) else {
        return DecapReason::DropTruncated;
    };
    // SAFETY: both bounds-checked; `strip` >= 20, so they do not overlap.
    unsafe {
        (*new).dst_addr = (*old).dst_addr;
        (*new).src_addr = (*old).src_addr;
        if link.tagged() {
            let Some(new_tag) = header_mut::<VlanHdr>(ctx, strip + EthHdr::LEN) else {
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
