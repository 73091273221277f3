//! The bench object: programs for the benchmarks and the test lab, kept
//! out of the production object. `bench_untraced` runs the load
//! balancer's path (`balancer`, the same code as `fulcrum_xdp`'s) without
//! the trace hook; the tests load it on the production object's maps
//! (opened by their pins), so it runs on the very state `fulcrum_xdp`
//! runs on. The others need no map.
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "aya's #[xdp] wraps each program in a function of its own, without the \
              program's doc comment"
)]

#[expect(
    dead_code,
    reason = "the QUIC path is the production object's program; this one's path \
              tail-calls it through the shared maps"
)]
mod balancer;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use balancer::{count, process};

/// For the benchmarks: `fulcrum_xdp` without its trace hooks, the
/// baseline the cost of tracing (off and on) is measured against.
#[xdp]
pub fn bench_untraced(ctx: XdpContext) -> u32 {
    let verdict = process(&ctx, None);
    count(verdict.reason);
    verdict.action
}

/// For the benchmarks: the cheapest possible XDP_TX, the floor every path
/// of `fulcrum_xdp` is measured against.
#[xdp]
pub fn bench_floor_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// For the test lab: attached to the veth peer facing the load balancer.
/// A veth delivers XDP_TX'd frames promptly only when its peer runs XDP
/// (which gives the peer NAPI); without it they arrive late, in bursts.
#[xdp]
pub fn lab_peer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
