//! The connection table's policy, over one set's values as the maps hold
//! them: which way holds a flow, whether its entry still stands, how a hit
//! refreshes the way, which way a new flow may take (never an established
//! flow's), and what a new flow's way records. The XDP program does the
//! map lookups and the stores; these decide.

use lb_common::{
    flow_hash::flow_check,
    maps::{
        Backend, DataplaneConfig, FLOW_CLOSING, FLOW_UDP, FLOW_UNPROVEN, FLOW_WAYS, FlowEntry,
        FlowKey, FlowMeta, FlowWays, PROTO_TCP, WayWord,
    },
};

use crate::{forward::serves, parse::Flow};

/// The way of a set that holds `key`, whose flow's tag is `tag`. An
/// entry is read only when its way's tag matches.
#[inline(always)]
pub fn find_way(meta: &FlowMeta, ways: &FlowWays, tag: u32, key: &FlowKey) -> Option<usize> {
    (0..FLOW_WAYS)
        .find(|&way| WayWord(meta.ways[way]).tag() == tag && ways.entries[way].key.same(key))
}

/// Why a way's entry no longer stands for its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Its check fails: a writer on another CPU raced the read, or the
    /// entry belongs to another flow with the same tag.
    Torn,
    /// The flow idled past its protocol's timeout.
    Expired,
}

/// Whether the entry of the flow tagged `tag`, in a way whose word is
/// `word`, still stands at `config`'s clock: whole, and not idle past its
/// timeout.
#[inline(always)]
pub fn standing(
    word: WayWord,
    entry: &FlowEntry,
    tag: u32,
    config: &DataplaneConfig,
) -> Result<(), Stale> {
    if entry.check != flow_check(tag, entry.backend_id, entry.vip_id, entry.generation) {
        return Err(Stale::Torn);
    }
    if word.idle(config) {
        return Err(Stale::Expired);
    }
    Ok(())
}

/// Whether `backend`, the slot `entry` names, is still the backend the
/// entry pinned its flow to: it serves the entry's VIP, with the same
/// backend (a reused slot has a new generation).
#[inline(always)]
pub fn still_pinned(backend: &Backend, entry: &FlowEntry) -> bool {
    serves(backend, entry.vip_id) && backend.generation == entry.generation
}

#[inline(always)]
fn closing(flow: &Flow) -> u8 {
    if flow.closes { FLOW_CLOSING } else { 0 }
}

/// The word of a way whose flow (tagged `tag`) sent another packet at
/// epoch `epoch`: seen now, proven, and closing from its FIN or RST on.
#[inline(always)]
pub fn refreshed(seen: WayWord, tag: u32, epoch: u32, flow: &Flow) -> WayWord {
    WayWord::new(tag, epoch, (seen.flags() & !FLOW_UNPROVEN) | closing(flow))
}

/// A way a new flow may take when no way holds its 5-tuple: an empty way,
/// else the longest-idle of the ways it may reclaim (unproven, closing, or
/// idle past their timeout), never an established flow's. The flag says
/// whether it evicts another flow. Reads only the set's way words.
#[inline(always)]
pub fn free_way(meta: &FlowMeta, config: &DataplaneConfig) -> Option<(usize, bool)> {
    let mut best: Option<(usize, bool)> = None;
    let mut best_age = 0;
    for way in 0..FLOW_WAYS {
        let word = WayWord(meta.ways[way]);
        if word.tag() == 0 {
            return Some((way, false));
        }
        let age = word.age(config.epoch);
        let reclaimable = word.flags() & (FLOW_CLOSING | FLOW_UNPROVEN) != 0 || word.idle(config);
        if reclaimable && (best.is_none() || age > best_age) {
            best = Some((way, true));
            best_age = age;
        }
    }
    best
}

/// The way a new flow is recorded in: its own (`own`, the way that holds
/// its 5-tuple), else a free one; and whether it evicts another flow.
#[inline(always)]
pub fn insertion_way(
    own: Option<usize>,
    meta: &FlowMeta,
    config: &DataplaneConfig,
) -> Option<(usize, bool)> {
    own.map(|way| (way, false))
        .or_else(|| free_way(meta, config))
}

/// The entry a new flow (tagged `tag`) is recorded with, pinned to the
/// backend, VIP and generation `pin` names, its check word bound to them.
#[inline(always)]
pub fn new_entry(flow: &Flow, tag: u32, pin: FlowEntry) -> FlowEntry {
    FlowEntry {
        key: flow.key,
        check: flow_check(tag, pin.backend_id, pin.vip_id, pin.generation),
        ..pin
    }
}

/// The way word a new flow (tagged `tag`) is recorded with at epoch
/// `epoch`: unproven until its next packet.
#[inline(always)]
pub fn new_word(flow: &Flow, tag: u32, epoch: u32) -> WayWord {
    let udp = if flow.key.proto == PROTO_TCP {
        0
    } else {
        FLOW_UDP
    };
    WayWord::new(tag, epoch, FLOW_UNPROVEN | udp | closing(flow))
}
