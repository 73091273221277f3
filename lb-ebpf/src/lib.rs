//! The XDP programs' decisions, over a small frame abstraction (`frame`)
//! and over values as the maps hold them, so that host unit tests reach
//! them: the header walking (`parse`), which packets a VIP admits
//! (`admission`), the connection table's policy
//! (`conn`), the forwarding decision (`forward`), a QUIC packet's server ID
//! (`quic`), the outer headers the
//! encapsulation writes (`outer`) and what the decapsulation strips
//! (`tunnel`). The programs themselves are the glue that talks to the
//! maps: `main.rs` and `balancer.rs` (the load balancer), `decap.rs` (the
//! backends' decapsulation), `bench.rs` (the benchmarks' and the lab's).
#![cfg_attr(not(test), no_std)]

pub mod admission;
pub mod conn;
pub mod forward;
pub mod frame;
pub mod outer;
pub mod parse;
pub mod quic;
#[cfg(test)]
mod testing;
pub mod tunnel;

use aya_ebpf::bindings::xdp_action;
use lb_common::maps::Reason;

/// What to do with a frame and which counter says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The XDP action.
    pub action: u32,
    /// The verdict counter it moves.
    pub reason: Reason,
}

/// Hands the frame to the kernel's stack.
#[inline(always)]
pub const fn pass(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_PASS,
        reason,
    }
}

/// Drops the frame.
#[inline(always)]
pub const fn discard(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_DROP,
        reason,
    }
}

/// Never reached: the verifier rejects any path into it. Every program
/// object links this crate, so they share it; on the host (where clippy
/// checks the programs, and the tests run) std provides the handler.
#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
