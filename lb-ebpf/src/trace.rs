//! Decision events for `fulcrum trace`: the tail-called program's side.
//! The XDP program fills the per-CPU `TRACE_JOBS` entry as it decides
//! (only while tracing is on) and tail-calls `fulcrum_trace`, which keeps
//! the events the control asks for (VIP, backend, source prefix), samples
//! them, holds each CPU to its per-second cap, sends them through the
//! `TRACE_EVENTS` ring buffer (with the packet's first bytes, as it
//! leaves, when the control asks for them) and counts every outcome. It
//! turns tracing off by itself once the controller's lease runs out.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    programs::XdpContext,
};
use lb_common::maps::{TRACE_SNAP_MAX, TraceEvent, TraceOutcome, TracePacket};

use crate::{TRACE_CONTROL, TRACE_EVENTS, TRACE_STATE, TRACE_STATS};

const NS_PER_S: u64 = 1_000_000_000;

#[inline(always)]
fn counted(outcome: TraceOutcome) {
    if let Some(counter) = TRACE_STATS.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
}

/// Sends `job` about the packet in `ctx` if the control asks for it.
#[inline(always)]
pub fn report(ctx: &XdpContext, job: &mut TraceEvent) {
    let (Some(control), Some(state)) = (TRACE_CONTROL.get_ptr_mut(0), TRACE_STATE.get_ptr_mut(0))
    else {
        return;
    };
    // SAFETY: map values, valid while we run; the state is this CPU's.
    let (control, state) = unsafe { (&mut *control, &mut *state) };
    if control.expires_ns == 0 || !control.matches(job) {
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now >= control.expires_ns {
        // The lease ran out: nobody listens any more.
        control.expires_ns = 0;
        return;
    }
    state.seen += 1;
    if control.sample > 1 && state.seen % u64::from(control.sample) != 0 {
        counted(TraceOutcome::Sampled);
        return;
    }
    let second = now / NS_PER_S;
    if second != state.second {
        state.second = second;
        state.sent = 0;
    }
    if state.sent >= control.per_cpu_per_s {
        counted(TraceOutcome::Capped);
        return;
    }
    job.time_ns = now;
    // SAFETY: no preconditions.
    job.cpu = unsafe { bpf_get_smp_processor_id() };
    // The program is loaded without XDP frags: the frame is all linear.
    job.packet_len = (ctx.data_end() - ctx.data()) as u32;
    let sent = if control.snap_len == 0 {
        send_event(job)
    } else {
        send_packet(ctx, job, control.snap_len)
    };
    if !sent {
        counted(TraceOutcome::RingFull);
        return;
    }
    state.sent += 1;
    counted(TraceOutcome::Sent);
}

/// Sends the event alone; false if the ring buffer is full.
#[inline(always)]
fn send_event(job: &mut TraceEvent) -> bool {
    let Some(mut entry) = TRACE_EVENTS.reserve(0) else {
        return false;
    };
    job.captured = 0;
    entry.write(*job);
    entry.submit(0);
    true
}

/// Sends the event with the packet's first `snap_len` bytes, copied
/// straight into the ring buffer's entry by direct packet access, one
/// bounded loop (no helper newer than the rest of the program needs);
/// false if it is full.
#[inline(always)]
fn send_packet(ctx: &XdpContext, job: &mut TraceEvent, snap_len: u32) -> bool {
    let Some(mut entry) = TRACE_EVENTS.reserve_untyped::<TracePacket>(0) else {
        return false;
    };
    let record = entry.as_mut_ptr();
    let len = snap_len.min(job.packet_len).min(TRACE_SNAP_MAX) as usize;
    let (data, end) = (ctx.data(), ctx.data_end());
    // SAFETY: `record` is the reserved entry, `TracePacket`-sized.
    let bytes = unsafe { &mut (*record).bytes };
    // Opaque to LLVM, so that it keeps the check the verifier reads
    // (`byte + 1 > end`) instead of folding it into `byte >= end`.
    let width = core::hint::black_box(1usize);
    let mut captured = 0;
    for (i, byte) in bytes.iter_mut().enumerate() {
        let at = data + i;
        if i >= len || at + width > end {
            break;
        }
        // SAFETY: checked against the packet's end just above.
        *byte = unsafe { *(at as *const u8) };
        captured += 1;
    }
    job.captured = captured;
    // SAFETY: the reserved entry; only its event is written, in place.
    unsafe { core::ptr::addr_of_mut!((*record).event).write(*job) };
    entry.submit(0);
    true
}
