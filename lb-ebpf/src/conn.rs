//! The connection table's policy, over one set's values as the maps hold
//! them: which way holds a flow, whether its entry still stands, how a hit
//! refreshes the way, which way a new flow may take (never an established
//! flow's), and what a new flow's way records. The XDP program does the
//! map lookups and the stores; these decide.

use lb_common::{
    flow_hash::flow_check,
    maps::{
        Backend, DataplaneConfig, EARLY_RESET_S, FLOW_CLOSING, FLOW_SYN, FLOW_UDP, FLOW_UNPROVEN,
        FLOW_WAYS, FlowEntry, FlowKey, FlowMeta, FlowWays, PROTO_TCP, TALLY_EARLY_RESET,
        TALLY_HANDSHAKE, TALLY_SYN, TALLY_SYN_RETRY, Tally, WayWord,
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

/// What a packet of a tracked flow tells of its backend, from the way's
/// word before the packet (`seen`) and the entry (`state`), at epoch
/// `epoch`: the second packet of a flow recorded from its SYN completes a
/// handshake (a RST or an ICMP error does not), and the client's first
/// RST within `EARLY_RESET_S` of the SYN of a handshaken flow is an early
/// reset. Anything else tells nothing (0), as every established packet.
#[inline(always)]
pub fn hit_tally(seen: WayWord, state: &FlowEntry, flow: &Flow, epoch: u32) -> Tally {
    let flags = seen.flags();
    if flags & FLOW_SYN == 0 || flow.icmp {
        return 0;
    }
    if flags & FLOW_UNPROVEN != 0 {
        return if flow.resets { 0 } else { TALLY_HANDSHAKE };
    }
    let young = epoch.wrapping_sub(state.born) < EARLY_RESET_S;
    if flow.resets && flags & FLOW_CLOSING == 0 && young {
        TALLY_EARLY_RESET
    } else {
        0
    }
}

/// What a SYN the connection table records tells: a retransmission when
/// the way it takes (`old`, holding `entry`) already held its flow,
/// recorded from a SYN, still unanswered and not idle past its timeout,
/// pinned to the same backend as `pin`; else a new attempt.
#[inline(always)]
pub fn syn_tally(
    old: WayWord,
    entry: &FlowEntry,
    tag: u32,
    pin: &FlowEntry,
    config: &DataplaneConfig,
) -> Tally {
    let waiting =
        old.flags() & (FLOW_SYN | FLOW_UNPROVEN | FLOW_CLOSING) == FLOW_SYN | FLOW_UNPROVEN;
    let same = entry.backend_id == pin.backend_id
        && entry.vip_id == pin.vip_id
        && entry.generation == pin.generation;
    // The way holds this flow's 5-tuple (`find_way` compared it whole);
    // a torn entry at worst misfiles one retry.
    if old.tag() == tag && waiting && same && !old.idle(config) {
        TALLY_SYN_RETRY
    } else {
        TALLY_SYN
    }
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
/// `epoch`: unproven until its next packet, and marked when its first
/// packet is a SYN.
#[inline(always)]
pub fn new_word(flow: &Flow, tag: u32, epoch: u32) -> WayWord {
    let udp = if flow.key.proto == PROTO_TCP {
        0
    } else {
        FLOW_UDP
    };
    let syn = if flow.opens { FLOW_SYN } else { 0 };
    WayWord::new(tag, epoch, FLOW_UNPROVEN | udp | syn | closing(flow))
}

#[cfg(test)]
mod tests {
    use lb_common::maps::{
        BACKEND_ACTIVE, FAMILY_IPV4, PROTO_UDP, TALLY_EARLY_RESET, TALLY_HANDSHAKE, TALLY_SYN,
        TALLY_SYN_RETRY,
    };

    use super::*;

    const TAG: u32 = 0x5eed_0001;
    const NOW: u32 = 10_000;

    fn config() -> DataplaneConfig {
        DataplaneConfig {
            epoch: NOW,
            tcp_idle_s: 900,
            udp_idle_s: 60,
            ..DataplaneConfig::default()
        }
    }

    fn flow(proto: u8, src_port: u16) -> Flow {
        let mut key = FlowKey {
            src_port,
            dst_port: 80,
            proto,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        key.src_addr[..4].copy_from_slice(&[198, 18, 2, 1]);
        key.dst_addr[..4].copy_from_slice(&[198, 18, 0, 100]);
        Flow {
            key,
            opens: false,
            closes: false,
            resets: false,
            icmp: false,
            l3: 14,
        }
    }

    /// A way's word seen `age` seconds ago with `flags`.
    fn word(tag: u32, age: u32, flags: u8) -> u64 {
        WayWord::new(tag, NOW - age, flags).0
    }

    /// An entry pinned to backend 3 of VIP 7, generation 2.
    fn pinned(key: FlowKey, tag: u32) -> FlowEntry {
        FlowEntry {
            key,
            backend_id: 3,
            vip_id: 7,
            generation: 2,
            check: flow_check(tag, 3, 7, 2),
            ..FlowEntry::default()
        }
    }

    #[test]
    fn a_flow_is_found_by_its_tag_and_its_whole_key() {
        let ours = flow(PROTO_TCP, 40000);
        let other = flow(PROTO_TCP, 40001);
        let set = |at: usize, tag: u32, key: FlowKey| {
            let (mut meta, mut ways) = (FlowMeta::default(), FlowWays::default());
            meta.ways[at] = word(tag, 0, 0);
            ways.entries[at] = pinned(key, tag);
            (meta, ways)
        };
        let rows = [
            ("in way 5", set(5, TAG, ours.key), Some(5)),
            (
                "in the last way",
                set(FLOW_WAYS - 1, TAG, ours.key),
                Some(7),
            ),
            (
                "another flow with the same tag",
                set(5, TAG, other.key),
                None,
            ),
            ("its key under another tag", set(5, TAG ^ 2, ours.key), None),
            (
                "an empty set",
                (FlowMeta::default(), FlowWays::default()),
                None,
            ),
        ];
        for (what, (meta, ways), expected) in rows {
            assert_eq!(find_way(&meta, &ways, TAG, &ours.key), expected, "{what}");
        }
    }

    #[test]
    fn an_entry_stands_while_whole_and_not_idle_past_its_timeout() {
        let key = flow(PROTO_TCP, 40000).key;
        let rows = [
            ("whole and fresh", word(TAG, 0, 0), pinned(key, TAG), Ok(())),
            (
                "TCP idle up to its timeout",
                word(TAG, 900, 0),
                pinned(key, TAG),
                Ok(()),
            ),
            (
                "TCP idle past its timeout",
                word(TAG, 901, 0),
                pinned(key, TAG),
                Err(Stale::Expired),
            ),
            (
                "UDP idle past its own, shorter timeout",
                word(TAG, 61, FLOW_UDP),
                pinned(key, TAG),
                Err(Stale::Expired),
            ),
            (
                "a check that names another backend (a torn write)",
                word(TAG, 0, 0),
                FlowEntry {
                    backend_id: 4,
                    ..pinned(key, TAG)
                },
                Err(Stale::Torn),
            ),
            (
                "a check bound to another tag",
                word(TAG, 0, 0),
                pinned(key, TAG ^ 2),
                Err(Stale::Torn),
            ),
            (
                "a torn entry idle too: torn first",
                word(TAG, 5000, 0),
                pinned(key, TAG ^ 2),
                Err(Stale::Torn),
            ),
        ];
        for (what, word, entry, expected) in rows {
            assert_eq!(
                standing(WayWord(word), &entry, TAG, &config()),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn an_entry_holds_its_backend_only_while_the_slot_is_unchanged() {
        let entry = pinned(flow(PROTO_TCP, 40000).key, TAG);
        let slot = Backend {
            flags: BACKEND_ACTIVE,
            vip_id: 7,
            generation: 2,
            ..Backend::default()
        };
        let rows = [
            ("the same backend", slot, true),
            ("the slot emptied", Backend { flags: 0, ..slot }, false),
            (
                "the slot given to another VIP",
                Backend { vip_id: 8, ..slot },
                false,
            ),
            (
                "the slot given to another backend (new generation)",
                Backend {
                    generation: 3,
                    ..slot
                },
                false,
            ),
        ];
        for (what, backend, expected) in rows {
            assert_eq!(still_pinned(&backend, &entry), expected, "{what}");
        }
    }

    #[test]
    fn a_packet_refreshes_its_way_proves_its_flow_and_marks_a_close() {
        let ack = flow(PROTO_TCP, 40000);
        let fin = Flow {
            closes: true,
            ..ack
        };
        let rows = [
            (
                "a second packet proves the flow",
                word(TAG, 3, FLOW_UNPROVEN),
                ack,
                word(TAG, 0, 0),
            ),
            (
                "a FIN marks it closing",
                word(TAG, 3, 0),
                fin,
                word(TAG, 0, FLOW_CLOSING),
            ),
            (
                "closing stays once marked",
                word(TAG, 3, FLOW_CLOSING),
                ack,
                word(TAG, 0, FLOW_CLOSING),
            ),
            (
                "a UDP flow stays UDP",
                word(TAG, 30, FLOW_UDP | FLOW_UNPROVEN),
                flow(PROTO_UDP, 5000),
                word(TAG, 0, FLOW_UDP),
            ),
            (
                "a fresh established way is left as it is",
                word(TAG, 0, 0),
                ack,
                word(TAG, 0, 0),
            ),
        ];
        for (what, seen, flow, expected) in rows {
            assert_eq!(
                refreshed(WayWord(seen), TAG, NOW, &flow),
                WayWord(expected),
                "{what}"
            );
        }
    }

    #[test]
    fn a_new_flow_takes_a_free_way_never_an_established_flows() {
        let established = word(1, 10, 0);
        let set = |ways: [u64; FLOW_WAYS]| FlowMeta { ways };
        let rows = [
            (
                "an empty set: the first way",
                set([0; FLOW_WAYS]),
                None,
                Some((0, false)),
            ),
            (
                "the first empty way",
                set([established, established, 0, established, 0, 0, 0, 0]),
                None,
                Some((2, false)),
            ),
            (
                "eight established flows: none",
                set([established; FLOW_WAYS]),
                None,
                None,
            ),
            (
                "an unproven flow's way, evicted",
                set([
                    established,
                    established,
                    established,
                    word(2, 1, FLOW_UNPROVEN),
                    established,
                    established,
                    established,
                    established,
                ]),
                None,
                Some((3, true)),
            ),
            (
                "the longest idle of the reclaimable ways",
                set([
                    word(2, 5, FLOW_UNPROVEN),
                    established,
                    word(3, 50, FLOW_CLOSING),
                    established,
                    word(4, 20, FLOW_UNPROVEN),
                    established,
                    established,
                    established,
                ]),
                None,
                Some((2, true)),
            ),
            (
                "an established flow idle past its timeout",
                set([
                    established,
                    established,
                    established,
                    established,
                    established,
                    word(5, 901, 0),
                    established,
                    established,
                ]),
                None,
                Some((5, true)),
            ),
            (
                "a UDP flow idle past its timeout",
                set([
                    established,
                    word(6, 61, FLOW_UDP),
                    established,
                    established,
                    established,
                    established,
                    established,
                    established,
                ]),
                None,
                Some((1, true)),
            ),
            (
                "its own way first, even in a full set, evicting nobody",
                set([established; FLOW_WAYS]),
                Some(6),
                Some((6, false)),
            ),
        ];
        for (what, meta, own, expected) in rows {
            assert_eq!(insertion_way(own, &meta, &config()), expected, "{what}");
            if own.is_none() {
                assert_eq!(free_way(&meta, &config()), expected, "{what}: free way");
            }
        }
    }

    #[test]
    fn a_new_flow_is_recorded_unproven_and_bound_to_its_backend() {
        let tcp = flow(PROTO_TCP, 40000);
        let pin = FlowEntry {
            backend_id: 3,
            vip_id: 7,
            generation: 2,
            ..FlowEntry::default()
        };
        let rows = [
            (
                "a TCP SYN",
                Flow { opens: true, ..tcp },
                FLOW_UNPROVEN | FLOW_SYN,
            ),
            ("a TCP ACK the table did not know", tcp, FLOW_UNPROVEN),
            (
                "a TCP RST",
                Flow {
                    closes: true,
                    resets: true,
                    ..tcp
                },
                FLOW_UNPROVEN | FLOW_CLOSING,
            ),
            (
                "a UDP datagram",
                flow(PROTO_UDP, 5000),
                FLOW_UNPROVEN | FLOW_UDP,
            ),
        ];
        for (what, flow, flags) in rows {
            let entry = new_entry(&flow, TAG, pin);
            assert_eq!(entry, pinned(flow.key, TAG), "{what}: entry");
            assert_eq!(
                standing(WayWord(word(TAG, 0, flags)), &entry, TAG, &config()),
                Ok(()),
                "{what}: the entry stands"
            );
            assert_eq!(
                new_word(&flow, TAG, NOW),
                WayWord(word(TAG, 0, flags)),
                "{what}: word"
            );
        }
    }

    #[test]
    fn a_handshake_is_the_second_packet_of_a_flow_recorded_from_its_syn() {
        let ack = flow(PROTO_TCP, 40000);
        let rst = Flow {
            closes: true,
            resets: true,
            ..ack
        };
        let fin = Flow {
            closes: true,
            ..ack
        };
        let icmp = Flow { icmp: true, ..ack };
        let born = |age: u32| FlowEntry {
            born: NOW - age,
            ..pinned(ack.key, TAG)
        };
        let waiting = FLOW_SYN | FLOW_UNPROVEN;
        let rows = [
            ("an ACK after the SYN", waiting, 0, ack, TALLY_HANDSHAKE),
            ("a FIN after the SYN", waiting, 0, fin, TALLY_HANDSHAKE),
            ("a RST after the SYN (a scan)", waiting, 0, rst, 0),
            ("an ICMP error after the SYN", waiting, 0, icmp, 0),
            (
                "a second packet of a flow recorded from a later packet",
                FLOW_UNPROVEN,
                0,
                ack,
                0,
            ),
            ("an established flow's packet", FLOW_SYN, 1, ack, 0),
            (
                "a RST within 2 s of the SYN",
                FLOW_SYN,
                1,
                rst,
                TALLY_EARLY_RESET,
            ),
            ("a RST 2 s after the SYN", FLOW_SYN, 2, rst, 0),
            (
                "a RST after the client's FIN",
                FLOW_SYN | FLOW_CLOSING,
                1,
                rst,
                0,
            ),
            ("a RST on a flow not from a SYN", 0, 1, rst, 0),
        ];
        for (what, flags, age, packet, expected) in rows {
            let seen = WayWord(word(TAG, age, flags));
            assert_eq!(
                hit_tally(seen, &born(age), &packet, NOW),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn a_syn_again_to_the_same_backend_before_any_answer_is_a_retry() {
        let key = flow(PROTO_TCP, 40000).key;
        let pin = pinned(key, TAG);
        let waiting = FLOW_SYN | FLOW_UNPROVEN;
        let rows = [
            (
                "its own unanswered SYN",
                word(TAG, 1, waiting),
                pin,
                TALLY_SYN_RETRY,
            ),
            ("an empty way", 0, FlowEntry::default(), TALLY_SYN),
            (
                "its flow, handshaken (the 5-tuple reused)",
                word(TAG, 1, FLOW_SYN),
                pin,
                TALLY_SYN,
            ),
            (
                "its flow after the client's RST",
                word(TAG, 1, waiting | FLOW_CLOSING),
                pin,
                TALLY_SYN,
            ),
            (
                "its flow, recorded from a later packet",
                word(TAG, 1, FLOW_UNPROVEN),
                pin,
                TALLY_SYN,
            ),
            (
                "its flow on another backend (the table moved it)",
                word(TAG, 1, waiting),
                FlowEntry {
                    backend_id: 4,
                    check: flow_check(TAG, 4, 7, 2),
                    ..pin
                },
                TALLY_SYN,
            ),
            (
                "its flow, idle past the timeout",
                word(TAG, 901, waiting),
                pin,
                TALLY_SYN,
            ),
            (
                "another flow's way (evicted)",
                word(TAG ^ 2, 1, waiting),
                pinned(key, TAG ^ 2),
                TALLY_SYN,
            ),
        ];
        for (what, old, entry, expected) in rows {
            assert_eq!(
                syn_tally(WayWord(old), &entry, TAG, &pin, &config()),
                expected,
                "{what}"
            );
        }
    }
}
