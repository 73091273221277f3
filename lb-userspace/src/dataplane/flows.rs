//! Reading the connection table from userspace: one flow's entry (as the
//! kernel finds it), active flows per backend, and the table's fill level.
//! The table is an array of sets, read in `BPF_MAP_LOOKUP_BATCH` chunks.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use lb_common::{
    flow_hash::{flow_check, flow_hash, flow_set, flow_tag},
    maps::{
        DataplaneConfig, FLOW_CLOSING, FLOW_UNPROVEN, FLOW_WAYS, FlowEntry, FlowKey, FlowSet,
        PROTO_TCP,
    },
};

use super::counters::{BPF_MAP_LOOKUP_BATCH, BatchAttr, batch_call};

/// Sets read per system call.
const CHUNK: u32 = 256;

/// Calls `visit` on sets `first..first + count` (fewer if the table ends),
/// returning how many it read.
pub fn scan(
    table: BorrowedFd<'_>,
    first: u32,
    count: u32,
    mut visit: impl FnMut(&FlowSet),
) -> io::Result<u32> {
    let mut keys = vec![0u32; CHUNK as usize];
    let mut values = vec![FlowSet::default(); CHUNK as usize];
    let mut done = 0u32;
    // The kernel starts after the key in `in_batch`.
    let mut previous = first.wrapping_sub(1);
    while done < count {
        let mut last = 0u32;
        let mut attr = BatchAttr {
            in_batch: if first + done == 0 {
                0
            } else {
                &raw const previous as u64
            },
            out_batch: &raw mut last as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK.min(count - done),
            map_fd: table.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = batch_call(BPF_MAP_LOOKUP_BATCH, &mut attr);
        values[..attr.count as usize].iter().for_each(&mut visit);
        done += attr.count;
        previous = last;
        match result {
            Ok(()) if attr.count > 0 => {}
            Ok(()) => break,
            // ENOENT: the table ended.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Where a flow would sit: its set and tag under the data plane's seed.
pub fn locate(key: &FlowKey, config: &DataplaneConfig) -> (u32, u32) {
    let hash = flow_hash(key, &config.seed);
    (flow_set(hash, config.flow_set_mask), flow_tag(hash))
}

/// The way of `set` that holds `key`'s whole entry, if one does.
pub fn find(set: &FlowSet, key: &FlowKey, tag: u32) -> Option<FlowEntry> {
    (0..FLOW_WAYS)
        .filter(|&way| set.tags[way] == tag)
        .map(|way| set.entries[way])
        .find(|entry| {
            entry.key == *key
                && entry.check == flow_check(tag, entry.backend_id, entry.vip_id, entry.generation)
        })
}

/// What a way holds, as the data plane would judge it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WayState {
    /// No flow.
    Empty,
    /// An established flow: proven, not closing, within its idle timeout.
    Established,
    /// A flow that sent one packet so far (a SYN, or a spoofed flood).
    Unproven,
    /// The client closed it (FIN or RST).
    Closing,
    /// Idle past its protocol's timeout.
    Idle,
}

impl WayState {
    /// Every state, in the order metrics list them.
    pub const ALL: [WayState; 5] = [
        WayState::Empty,
        WayState::Established,
        WayState::Unproven,
        WayState::Closing,
        WayState::Idle,
    ];

    /// Its label.
    pub const fn name(self) -> &'static str {
        match self {
            WayState::Empty => "empty",
            WayState::Established => "established",
            WayState::Unproven => "unproven",
            WayState::Closing => "closing",
            WayState::Idle => "idle",
        }
    }

    /// Way `way` of `set`, at `config`'s epoch and timeouts.
    pub fn of(set: &FlowSet, way: usize, config: &DataplaneConfig) -> WayState {
        if set.tags[way] == 0 {
            return WayState::Empty;
        }
        let entry = &set.entries[way];
        let limit = if entry.key.proto == PROTO_TCP {
            config.tcp_idle_s
        } else {
            config.udp_idle_s
        };
        if config.epoch.wrapping_sub(entry.seen) > limit {
            WayState::Idle
        } else if entry.flags & FLOW_CLOSING != 0 {
            WayState::Closing
        } else if entry.flags & FLOW_UNPROVEN != 0 {
            WayState::Unproven
        } else {
            WayState::Established
        }
    }
}

/// Ways counted by state over the sets read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Indexed like `WayState::ALL`.
    pub ways: [u64; 5],
}

impl Census {
    /// Counts `set`'s ways.
    pub fn add(&mut self, set: &FlowSet, config: &DataplaneConfig) {
        for way in 0..FLOW_WAYS {
            let state = WayState::of(set, way, config);
            self.ways[WayState::ALL.iter().position(|s| *s == state).unwrap_or(0)] += 1;
        }
    }

    /// Ways in `state`.
    pub fn count(&self, state: WayState) -> u64 {
        WayState::ALL
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.ways[i])
    }

    /// Ways counted.
    pub fn total(&self) -> u64 {
        self.ways.iter().sum()
    }
}

/// Active flows per (VIP id, backend id): established ways (see
/// `WayState`) whose flow sent a packet within `active_s` seconds.
pub fn active_flows(
    table: BorrowedFd<'_>,
    sets: u32,
    config: &DataplaneConfig,
    active_s: u32,
) -> io::Result<HashMap<(u32, u32), u64>> {
    let mut active = HashMap::new();
    scan(table, 0, sets, |set| {
        for way in 0..FLOW_WAYS {
            let entry = &set.entries[way];
            if WayState::of(set, way, config) == WayState::Established
                && config.epoch.wrapping_sub(entry.seen) <= active_s
            {
                *active.entry((entry.vip_id, entry.backend_id)).or_default() += 1;
            }
        }
    })?;
    Ok(active)
}
