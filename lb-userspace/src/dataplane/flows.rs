//! Reading the connection table from userspace: one flow's entry (as the
//! kernel finds it), active flows per backend, and the table's fill level.
//! Each set is split in two arrays (way words, entries), read in
//! `BPF_MAP_LOOKUP_BATCH` chunks.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use lb_common::{
    flow_hash::{flow_check, flow_hash, flow_set, flow_tag},
    maps::{
        DataplaneConfig, FLOW_CLOSING, FLOW_UDP, FLOW_UNPROVEN, FLOW_WAYS, FlowEntry, FlowKey,
        FlowMeta, FlowWays, WayWord,
    },
};

use super::counters::{BPF_MAP_LOOKUP_BATCH, BatchAttr, batch_call};

/// Sets read per system call.
const CHUNK: u32 = 256;

/// Calls `visit` on sets `first..first + count` of one half of the table
/// (`FlowMeta` or `FlowWays`; fewer if the table ends), returning how many
/// it read.
pub fn scan<T: Default + Clone>(
    table: BorrowedFd<'_>,
    first: u32,
    count: u32,
    mut visit: impl FnMut(u32, &T),
) -> io::Result<u32> {
    let mut keys = vec![0u32; CHUNK as usize];
    let mut values = vec![T::default(); CHUNK as usize];
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
        for (key, value) in keys.iter().zip(&values).take(attr.count as usize) {
            visit(*key, value);
        }
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

/// A flow as the connection table holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// Its entry.
    pub entry: FlowEntry,
    /// The low 24 bits of the epoch it last sent a packet.
    pub seen: u32,
    /// Its `FLOW_*` flags.
    pub flags: u8,
}

/// The way of a set that holds `key`'s whole entry, if one does.
pub fn find(meta: &FlowMeta, ways: &FlowWays, key: &FlowKey, tag: u32) -> Option<Tracked> {
    (0..FLOW_WAYS)
        .filter(|&way| WayWord(meta.ways[way]).tag() == tag)
        .map(|way| (WayWord(meta.ways[way]), ways.entries[way]))
        .find(|(_, entry)| {
            entry.key == *key
                && entry.check == flow_check(tag, entry.backend_id, entry.vip_id, entry.generation)
        })
        .map(|(word, entry)| Tracked {
            entry,
            seen: word.seen(),
            flags: word.flags(),
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

    /// A way with `word`, at `config`'s epoch and timeouts.
    pub fn of(word: WayWord, config: &DataplaneConfig) -> WayState {
        if word.tag() == 0 {
            return WayState::Empty;
        }
        let limit = if word.flags() & FLOW_UDP != 0 {
            config.udp_idle_s
        } else {
            config.tcp_idle_s
        };
        if word.age(config.epoch) > limit {
            WayState::Idle
        } else if word.flags() & FLOW_CLOSING != 0 {
            WayState::Closing
        } else if word.flags() & FLOW_UNPROVEN != 0 {
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
    /// Counts a set's ways.
    pub fn add(&mut self, meta: &FlowMeta, config: &DataplaneConfig) {
        for &word in &meta.ways {
            let state = WayState::of(WayWord(word), config);
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
/// `WayState`) whose flow sent a packet within `active_s` seconds. Reads
/// the way words, then the entries of the sets that hold one.
pub fn active_flows(
    (meta, table): (BorrowedFd<'_>, BorrowedFd<'_>),
    sets: u32,
    config: &DataplaneConfig,
    active_s: u32,
) -> io::Result<HashMap<(u32, u32), u64>> {
    let mut active_ways: Vec<(u32, u8)> = Vec::new();
    scan(meta, 0, sets, |set, words: &FlowMeta| {
        for (way, &word) in words.ways.iter().enumerate() {
            let word = WayWord(word);
            if WayState::of(word, config) == WayState::Established
                && word.age(config.epoch) <= active_s
            {
                active_ways.push((set, way as u8));
            }
        }
    })?;
    let mut active = HashMap::new();
    if active_ways.is_empty() {
        return Ok(active);
    }
    // The entries of the active ways, in set order.
    let mut ways = active_ways.iter().peekable();
    scan(table, 0, sets, |set, entries: &FlowWays| {
        while let Some(&(_, way)) = ways.next_if(|&&(s, _)| s == set) {
            let entry = &entries.entries[way as usize];
            *active.entry((entry.vip_id, entry.backend_id)).or_default() += 1;
        }
    })?;
    Ok(active)
}
