//! Reading the connection table from userspace: one flow's entry (as the
//! kernel finds it), active flows per backend, and the table's fill level.
//! Each set is split in two arrays (way words, entries), read in
//! `BPF_MAP_LOOKUP_BATCH` chunks.

use std::{collections::HashMap, io, os::fd::BorrowedFd};

use lb_common::{
    flow_hash::{flow_check, flow_hash, flow_set, flow_tag},
    maps::{
        DataplaneConfig, FLOW_CLOSING, FLOW_UNPROVEN, FLOW_WAYS, FlowEntry, FlowKey, FlowMeta,
        FlowWays, WayWord,
    },
};

use super::counters::lookup_batch;

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
    let mut values = vec![T::default(); CHUNK as usize];
    let mut done = 0u32;
    while done < count {
        let asked = CHUNK.min(count - done);
        // SAFETY: `values` holds `CHUNK` >= `asked` values of `T`, the
        // table's value type.
        let read = unsafe {
            lookup_batch(
                table,
                first + done,
                asked,
                values.as_mut_ptr().cast(),
                size_of::<T>(),
            )?
        };
        for (i, value) in values.iter().take(read as usize).enumerate() {
            visit(first + done + i as u32, value);
        }
        done += read;
        if read < asked {
            break;
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

/// What a way holds, as the data plane would judge it now. The values
/// index `WayState::ALL` and `Census::ways`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WayState {
    /// No flow.
    Empty = 0,
    /// An established flow: proven, not closing, within its idle timeout.
    Established = 1,
    /// A flow that sent one packet so far (a SYN, or a spoofed flood).
    Unproven = 2,
    /// The client closed it (FIN or RST).
    Closing = 3,
    /// Idle past its protocol's timeout.
    Idle = 4,
}

// Each state's value is its index in `ALL`.
const _: () = {
    let mut i = 0;
    while i < WayState::ALL.len() {
        assert!(WayState::ALL[i] as usize == i);
        i += 1;
    }
};

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
        if word.idle(config) {
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
            self.ways[WayState::of(WayWord(word), config) as usize] += 1;
        }
    }

    /// Ways in `state`.
    pub fn count(&self, state: WayState) -> u64 {
        self.ways[state as usize]
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
