//! Decision events for `fulcrum trace`: the tail-called program's side.
//! The XDP program fills the per-CPU `TRACE_JOBS` entry as it decides
//! (only while tracing is on) and tail-calls `fulcrum_trace`, which keeps
//! the events the control asks for (VIP, backend, source prefix), samples
//! them, holds each CPU to its per-second cap, sends them through the
//! `TRACE_EVENTS` ring buffer and counts every outcome. It turns tracing
//! off by itself once the controller's lease runs out.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use lb_common::maps::{TraceEvent, TraceOutcome};

use crate::{TRACE_CONTROL, TRACE_EVENTS, TRACE_STATE, TRACE_STATS};

const NS_PER_S: u64 = 1_000_000_000;

#[inline(always)]
fn counted(outcome: TraceOutcome) {
    if let Some(counter) = TRACE_STATS.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
}

/// Sends `job` if the control asks for it.
#[inline(always)]
pub fn report(job: &mut TraceEvent) {
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
    let Some(mut entry) = TRACE_EVENTS.reserve(0) else {
        counted(TraceOutcome::RingFull);
        return;
    };
    job.time_ns = now;
    // SAFETY: no preconditions.
    job.cpu = unsafe { bpf_get_smp_processor_id() };
    entry.write(*job);
    entry.submit(0);
    state.sent += 1;
    counted(TraceOutcome::Sent);
}
