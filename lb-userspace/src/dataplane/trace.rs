//! The data plane's trace maps from userspace: the control `fulcrum trace`
//! writes (what to report, and a lease that ends it), the ring buffer the
//! events come through, and what became of matching packets.

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use lb_common::maps::{TraceControl, TraceEvent, TraceOutcome, names};

use super::{Dataplane, DataplaneError, Result, map_err};

/// What became of matching packets since the maps were made, summed over
/// CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Sent to the ring buffer.
    pub sent: u64,
    /// Left out by the sampling.
    pub sampled: u64,
    /// Dropped by the per-second cap.
    pub capped: u64,
    /// Dropped: the ring buffer was full.
    pub ring_full: u64,
}

/// The events' reader: the ring buffer, taken out of the data plane.
pub struct TraceEvents(RingBuf<MapData>);

impl TraceEvents {
    /// The events waiting, oldest first (none when it is empty).
    pub fn drain(&mut self) -> Vec<TraceEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.0.next() {
            if item.len() >= size_of::<TraceEvent>() {
                // SAFETY: the program writes whole `TraceEvent`s; read
                // unaligned, since the ring's records are 8-byte aligned
                // only by convention.
                events.push(unsafe { item.as_ptr().cast::<TraceEvent>().read_unaligned() });
            }
        }
        events
    }
}

impl std::os::fd::AsRawFd for TraceEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The kernel's monotonic clock (`bpf_ktime_get_ns`'s) `from_now` from
/// now, in ns: a trace lease's end.
pub fn lease_end(from_now: std::time::Duration) -> u64 {
    super::clock::monotonic_ns() + from_now.as_nanos() as u64
}

impl Dataplane {
    /// Writes what the data plane reports (`expires_ns` 0 turns it off).
    pub fn set_trace(&mut self, control: TraceControl) -> Result<()> {
        let mut array: Array<_, TraceControl> =
            Array::try_from(self.map_mut(names::TRACE_CONTROL)?)
                .map_err(map_err(names::TRACE_CONTROL))?;
        array
            .set(0, control, 0)
            .map_err(map_err(names::TRACE_CONTROL))
    }

    /// The trace control as the kernel holds it.
    pub fn trace(&self) -> Result<TraceControl> {
        let array: Array<_, TraceControl> = Array::try_from(self.map(names::TRACE_CONTROL)?)
            .map_err(map_err(names::TRACE_CONTROL))?;
        array.get(&0, 0).map_err(map_err(names::TRACE_CONTROL))
    }

    /// Takes the events' ring buffer out of the data plane, for one reader.
    pub fn take_trace_events(&mut self) -> Result<TraceEvents> {
        let map = self
            .maps
            .remove(names::TRACE_EVENTS)
            .ok_or(DataplaneError::Missing(names::TRACE_EVENTS))?;
        RingBuf::try_from(map)
            .map(TraceEvents)
            .map_err(map_err(names::TRACE_EVENTS))
    }

    /// What became of matching packets.
    pub fn trace_stats(&self) -> Result<TraceStats> {
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(names::TRACE_STATS)?)
            .map_err(map_err(names::TRACE_STATS))?;
        let sum = |outcome: TraceOutcome| -> Result<u64> {
            let values = array
                .get(&(outcome as u32), 0)
                .map_err(map_err(names::TRACE_STATS))?;
            Ok(values.iter().sum())
        };
        Ok(TraceStats {
            sent: sum(TraceOutcome::Sent)?,
            sampled: sum(TraceOutcome::Sampled)?,
            capped: sum(TraceOutcome::Capped)?,
            ring_full: sum(TraceOutcome::RingFull)?,
        })
    }
}
