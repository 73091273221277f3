//! The data plane's trace maps from userspace: the control `fulcrum trace`
//! writes (what to report, and a lease that ends it), the ring buffer the
//! events come through (each with the packet bytes it carries), and what
//! became of matching packets.

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use lb_common::maps::{TraceControl, TraceEvent, TraceOutcome, TracePacket, names};

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

/// One record of the ring buffer: the event, and the packet's first
/// bytes when the control asked for them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// The decision.
    pub event: TraceEvent,
    /// The packet's first `event.captured` bytes (empty: none asked for).
    pub packet: Vec<u8>,
}

impl TraceRecord {
    /// The record in a ring buffer item: a `TraceEvent`, or a
    /// `TracePacket`; none if it is too short to hold an event.
    pub fn read(item: &[u8]) -> Option<Self> {
        if item.len() < size_of::<TraceEvent>() {
            return None;
        }
        // SAFETY: the item holds a whole `TraceEvent`, a plain
        // `#[repr(C)]` value; read unaligned, since the ring's records are
        // 8-byte aligned only by convention.
        let event = unsafe { item.as_ptr().cast::<TraceEvent>().read_unaligned() };
        let start = std::mem::offset_of!(TracePacket, bytes);
        let packet = item
            .get(start..start + event.captured as usize)
            .unwrap_or_default()
            .to_vec();
        Some(Self { event, packet })
    }
}

/// The events' reader: the ring buffer, taken out of the data plane.
pub struct TraceEvents(RingBuf<MapData>);

impl TraceEvents {
    /// The records waiting, oldest first (none when it is empty).
    pub fn drain(&mut self) -> Vec<TraceRecord> {
        let mut records = Vec::new();
        while let Some(item) = self.0.next() {
            records.extend(TraceRecord::read(&item));
        }
        records
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> &[u8] {
        // SAFETY: a plain `#[repr(C)]` value without padding, read as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn a_record_is_an_event_alone_or_with_its_packet_bytes() {
        let event = TraceEvent {
            vip_id: 3,
            packet_len: 1500,
            ..TraceEvent::default()
        };
        let alone = TraceRecord::read(bytes_of(&event)).expect("an event");
        assert_eq!((alone.event, alone.packet.len()), (event, 0));

        let mut record = TracePacket {
            event: TraceEvent {
                captured: 3,
                ..event
            },
            bytes: [0; lb_common::maps::TRACE_SNAP_MAX as usize],
        };
        record.bytes[..4].copy_from_slice(&[1, 2, 3, 4]);
        let read = TraceRecord::read(bytes_of(&record)).expect("a packet");
        assert_eq!((read.event.vip_id, read.packet), (3, vec![1, 2, 3]));

        assert_eq!(TraceRecord::read(&[0; 8]), None, "too short for an event");
    }
}
