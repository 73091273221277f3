//! Reading the connection table from userspace: one flow's entry (as the
//! kernel finds it), active flows per backend, and the table's fill level.
//! The table is read in place, through mmap: the way words of every set,
//! and only the entries a question needs.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    flow_hash::{flow_check, flow_hash, flow_set, flow_tag},
    maps::{
        DataplaneConfig, FLOW_CLOSING, FLOW_UNPROVEN, FLOW_WAYS, FlowEntry, FlowKey, FlowMeta,
        FlowWays, WayWord,
    },
};

use super::mmap::MappedArray;

/// The connection table's two halves (`CONN_META`, `CONN_TABLE`), mapped
/// read-only.
pub struct MappedTable {
    /// The way words.
    pub(super) meta: MappedArray<FlowMeta>,
    /// The entries.
    pub(super) ways: MappedArray<FlowWays>,
}

impl MappedTable {
    /// Sets in the table.
    pub fn sets(&self) -> u32 {
        self.meta.len()
    }

    /// The way words of set `set`, read in place (the kernel writes each
    /// word whole).
    fn way_words(&self, set: u32) -> [u64; FLOW_WAYS] {
        self.meta.get(set).ways
    }

    /// The entry in way `way` of set `set`, read in place.
    fn entry(&self, set: u32, way: usize) -> FlowEntry {
        // SAFETY: `value` is a valid, aligned value of the live mapping,
        // and `way` < FLOW_WAYS indexes its array.
        unsafe { core::ptr::addr_of!((*self.ways.value(set)).entries[way]).read_volatile() }
    }
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
    /// Counts the ways of sets `first..first + count` (wrapping at the
    /// table's end).
    pub fn read(table: &MappedTable, first: u32, count: u32, config: &DataplaneConfig) -> Census {
        let sets = table.sets();
        let mut census = Census::default();
        for i in 0..count.min(sets) {
            census.add(table.way_words((first + i) % sets), config);
        }
        census
    }

    /// Counts a set's ways.
    fn add(&mut self, words: [u64; FLOW_WAYS], config: &DataplaneConfig) {
        for word in words {
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

/// Whether the way holds an active flow: established, and sent a packet
/// within `active_s` seconds.
fn is_active(word: WayWord, config: &DataplaneConfig, active_s: u32) -> bool {
    WayState::of(word, config) == WayState::Established && word.age(config.epoch) <= active_s
}

/// Active flows per (VIP id, backend id): established ways (see
/// `WayState`) whose flow sent a packet within `active_s` seconds. Reads
/// every set's way words, and the entries of the active ways only.
pub fn active_flows(
    table: &MappedTable,
    config: &DataplaneConfig,
    active_s: u32,
) -> HashMap<(u32, u32), u64> {
    let mut active = HashMap::new();
    for set in 0..table.sets() {
        for (way, word) in table.way_words(set).into_iter().enumerate() {
            if is_active(WayWord(word), config, active_s) {
                // An entry rewritten at this moment counts for the flow
                // before or after.
                let entry = table.entry(set, way);
                *active.entry((entry.vip_id, entry.backend_id)).or_default() += 1;
            }
        }
    }
    active
}

/// The sources one VIP's clients use, from the connection table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sources {
    /// Of its active flows (as `active_flows` counts them).
    pub active: Vec<IpAddr>,
    /// Of the flows recorded in the last `recent_s` seconds that proved to
    /// be clients (their client sent a second packet: established or
    /// closing): a spoofed flood's SYNs are not among them.
    pub recent: Vec<IpAddr>,
}

/// Each VIP's `Sources` (by VIP id): one pass over the connection table,
/// reading the entries of live ways only.
pub fn sources(
    table: &MappedTable,
    config: &DataplaneConfig,
    active_s: u32,
    recent_s: u32,
) -> HashMap<u32, Sources> {
    let mut found: HashMap<u32, Sources> = HashMap::new();
    for set in 0..table.sets() {
        for (way, word) in table.way_words(set).into_iter().enumerate() {
            let word = WayWord(word);
            let proven = matches!(
                WayState::of(word, config),
                WayState::Established | WayState::Closing
            );
            let active = is_active(word, config, active_s);
            if !active && !proven {
                continue;
            }
            let entry = table.entry(set, way);
            let recent = proven && config.epoch.wrapping_sub(entry.born) <= recent_s;
            if !active && !recent {
                continue;
            }
            let source = super::state::ip_from(&entry.key.src_addr, entry.key.family);
            let vip = found.entry(entry.vip_id).or_default();
            if active {
                vip.active.push(source);
            }
            if recent {
                vip.recent.push(source);
            }
        }
    }
    found
}
