//! Fulcrum's XDP program, the production object: `fulcrum_xdp` runs the
//! load balancer's path (`balancer`): it finds the headers of each frame,
//! looks up the VIP, picks a backend from the connection table or the
//! VIP's lookup table, and sends the frame back out with `XDP_TX`: with
//! the MACs rewritten for L2 direct server return, or inside an outer
//! header (`encap`). ICMP errors about a VIP's flows go to the backend that
//! owns the flow. Every frame moves exactly one verdict counter. Here too:
//! the programs it tail-calls (the traced path, the trace program, the
//! encapsulation) and the trace maps.
#![no_std]
#![no_main]
#![expect(
    missing_docs,
    reason = "aya's #[xdp] wraps each program in a function of its own, without the \
              program's doc comment"
)]

mod balancer;
mod encap;
mod trace;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray, RingBuf},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use balancer::{
    BACKEND_STATS, CONFIG, ENCAP_JOBS, QUIC_JOBS, TAIL_CALLS, Trace, VIP_STATS, add_traffic, count,
    process, quic_process,
};
use lb_common::maps::{
    JOB_TRACED, Reason, TAIL_TRACE, TAIL_TRACED, TALLY_ALL, TRACE_ANY_VIP, TraceControl,
    TraceEvent, TraceOutcome, TraceState,
};
use lb_ebpf::Verdict;

/// What `fulcrum trace` asks for; off while its lease is 0.
#[btf_map]
static TRACE_CONTROL: Array<TraceControl, 1> = Array::new();

/// The decision being made, filled while tracing is on.
#[btf_map]
static TRACE_JOBS: PerCpuArray<TraceEvent, 1> = PerCpuArray::new();

/// The trace program's sampling and cap, per CPU.
#[btf_map]
static TRACE_STATE: PerCpuArray<TraceState, 1> = PerCpuArray::new();

/// What became of matching packets, by `TraceOutcome`.
#[btf_map]
static TRACE_STATS: PerCpuArray<u64, { TraceOutcome::COUNT as usize }> = PerCpuArray::new();

/// The events, for the controller to read (1 MiB: 10,082 events alone,
/// 2,912 with 256 bytes of their packets; the daemon drains it as each
/// one comes).
#[btf_map]
static TRACE_EVENTS: RingBuf<TraceEvent, { 1 << 20 }> = RingBuf::new();

#[xdp]
pub fn fulcrum_xdp(ctx: XdpContext) -> u32 {
    // While tracing is on, the traced copy of the path takes the packet:
    // this program itself carries no trace hook but this one test.
    if TRACE_CONTROL.get(0).is_some_and(|c| c.expires_ns != 0) {
        // SAFETY: a tail call; it returns only if the slot is empty.
        unsafe { TAIL_CALLS.tail_call(&ctx, TAIL_TRACED) };
    }
    let verdict = process(&ctx, None);
    count(verdict.reason);
    verdict.action
}

/// `fulcrum_xdp`'s path with the trace hooks, tail-called while tracing
/// is on: it fills the packet's trace job and hands the verdict to
/// `fulcrum_trace`.
#[xdp]
pub fn fulcrum_traced(ctx: XdpContext) -> u32 {
    let trace = trace_job();
    let verdict = process(&ctx, trace);
    count(verdict.reason);
    if let Some(job) = trace {
        hand_to_trace(&ctx, job, &verdict);
    }
    verdict.action
}

/// The path of a QUIC VIP's packet, tail-called by `fulcrum_xdp` or
/// `fulcrum_traced` with its flow in `QUIC_JOBS`: it routes a short
/// header by its server ID and hands any other packet back to
/// `fulcrum_xdp`. A program of its own, so that the verifier walks its
/// paths apart from the main program's (whose flow it takes as one, not
/// as each way a header walk found it).
#[xdp]
pub fn fulcrum_quic(ctx: XdpContext) -> u32 {
    let Some(job) = QUIC_JOBS.get_ptr_mut(0) else {
        count(Reason::DropNoBackend);
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU slot, only this CPU uses it while we run.
    let trace = if unsafe { (*job).traced } != 0 {
        TRACE_JOBS.get_ptr_mut(0)
    } else {
        None
    };
    let verdict = quic_process(&ctx, job, trace);
    count(verdict.reason);
    if let Some(job) = trace {
        hand_to_trace(&ctx, job, &verdict);
    }
    verdict.action
}

/// `TRACE_JOBS`' entry, cleared for a new packet (but for `quic`, which
/// `fulcrum_trace` clears).
#[inline(always)]
fn trace_job() -> Trace {
    let job = TRACE_JOBS.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, only this CPU uses it while we run.
    unsafe {
        (*job).has_flow = 0;
        (*job).via = 0;
        (*job).vlan = 0;
        (*job).vip_id = TRACE_ANY_VIP;
        (*job).backend_id = 0;
        (*job).slot = 0;
        (*job).table_id = 0;
    }
    Some(job)
}

/// Records the verdict and tail-calls the trace program, which returns
/// the action itself. Without it (not loaded), the caller returns it.
#[inline(always)]
fn hand_to_trace(ctx: &XdpContext, job: *mut TraceEvent, verdict: &Verdict) {
    // SAFETY: per-CPU slot, only this CPU uses it while we run.
    unsafe {
        (*job).action = verdict.action;
        (*job).reason = verdict.reason as u32;
        TAIL_CALLS.tail_call(ctx, TAIL_TRACE);
    }
}

/// Reports the decision `fulcrum_xdp` or `fulcrum_encap` handed over (and
/// returns its action). A program of its own: the main program's stack
/// has no room for the event, and the cost stays off the path while
/// tracing is off.
#[xdp]
pub fn fulcrum_trace(ctx: XdpContext) -> u32 {
    let Some(job) = TRACE_JOBS.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot, only this CPU uses it while we run.
    let job = unsafe { &mut *job };
    trace::report(&ctx, job);
    // Not cleared with the rest for each packet: the QUIC program sets
    // it before it hands a packet back to the main path.
    job.quic = 0;
    job.action
}

/// Encapsulates the packet `fulcrum_xdp` tail-called it for, as its
/// `ENCAP_JOBS` entry says, and counts the verdict (and, once the packet
/// goes out, its traffic). A program of its own, so that it has a whole
/// BPF stack and is verified apart from the main path.
#[xdp]
pub fn fulcrum_encap(ctx: XdpContext) -> u32 {
    let (Some(job), Some(config)) = (ENCAP_JOBS.get(0), CONFIG.get(0)) else {
        count(Reason::DropEncapFailed);
        return xdp_action::XDP_DROP;
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let reason = encap::encapsulate(&ctx, job, config);
    count(reason);
    let action = match reason {
        Reason::Tx => {
            let tally = job.flags & TALLY_ALL;
            add_traffic(BACKEND_STATS.get_ptr_mut(job.backend_id), bytes, tally);
            add_traffic(VIP_STATS.get_ptr_mut(job.vip_id), bytes, tally);
            xdp_action::XDP_TX
        }
        Reason::TxTooBig => xdp_action::XDP_TX,
        _ => xdp_action::XDP_DROP,
    };
    // The main program filled the trace job before handing over.
    if job.flags & JOB_TRACED != 0
        && let Some(trace) = TRACE_JOBS.get_ptr_mut(0)
    {
        hand_to_trace(&ctx, trace, &Verdict { action, reason });
    }
    action
}
