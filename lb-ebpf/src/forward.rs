//! The forwarding decision, over values as the maps hold them: which VIP
//! a flow is for (a probe of the VIP index), whether a backend slot still
//! serves a VIP, whether a packet starts a flow (recorded, and counted as
//! a new flow) and how it reaches its backend: its MACs rewritten (L2
//! DSR), or handed to the encapsulation program with a job.

use lb_common::maps::{
    BACKEND_ACTIVE, Backend, EncapJob, FORWARD_L2_DSR, FlowKey, JOB_TRACED, TALLY_NEW_FLOW, Tally,
    VIP_INDEX_SLOTS, VIP_SLOT_ADMIT, VIP_SLOT_QUIC, VIP_SLOT_USED, VipKey, VipSlot,
};

use crate::parse::Flow;

/// Whether the backend slot is in use and serves `vip_id`.
#[inline(always)]
pub fn serves(backend: &Backend, vip_id: u32) -> bool {
    backend.flags & BACKEND_ACTIVE != 0 && backend.vip_id == vip_id
}

/// The key a flow's VIP has in the index when it names the flow's port;
/// the any-port VIP's has port 0.
#[inline(always)]
pub fn vip_key(key: &FlowKey) -> VipKey {
    VipKey {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: key.proto,
        family: key.family,
    }
}

/// A VIP as the index names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vip {
    /// Its id: its counters, and what its backends' slots name.
    pub vip_id: u32,
    /// Its lookup table in the outer map.
    pub table_id: u32,
    /// That table's size.
    pub table_size: u32,
    /// Whether its `Admission` has flags (`VIP_SLOT_ADMIT`).
    pub admits: bool,
    /// Whether it routes QUIC by connection ID (`VIP_SLOT_QUIC`).
    pub quic: bool,
}

/// What one slot of the VIP index says about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The slot holds the key's VIP.
    Found(Vip),
    /// The slot is empty: no VIP has the key.
    Vacant,
    /// The slot holds another VIP: probe the next one.
    Occupied,
}

/// The index slot of the `probe`th probe from the home slot `home`.
#[inline(always)]
pub fn probe_slot(home: u32, probe: u32) -> u32 {
    (home + probe) & (VIP_INDEX_SLOTS - 1)
}

/// What `slot` says about `key`.
#[inline(always)]
pub fn probe(slot: &VipSlot, key: &VipKey) -> Probe {
    if slot.flags & VIP_SLOT_USED == 0 {
        Probe::Vacant
    } else if slot.key.same(key) {
        Probe::Found(Vip {
            vip_id: slot.vip_id,
            table_id: slot.table_id,
            table_size: slot.table_size,
            admits: slot.flags & VIP_SLOT_ADMIT != 0,
            quic: slot.flags & VIP_SLOT_QUIC != 0,
        })
    } else {
        Probe::Occupied
    }
}

/// Where a flow's backend came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The flow's connection-table entry.
    Connection,
    /// The VIP's lookup table.
    Table,
}

/// `TALLY_NEW_FLOW` when a packet whose backend came `via` starts a flow:
/// it is then recorded in the connection table and counted as a new flow.
/// An ICMP error follows its flow but never starts one.
#[inline(always)]
pub fn new_flow_tally(flow: &Flow, via: Via) -> Tally {
    if via == Via::Table && !flow.icmp {
        TALLY_NEW_FLOW
    } else {
        0
    }
}

/// Whether packets reach `backend` encapsulated (by the encapsulation
/// program) rather than by L2 DSR.
#[inline(always)]
pub fn encapsulates(backend: &Backend) -> bool {
    backend.forward != FORWARD_L2_DSR
}

/// A flow's backend as the forwarding found it.
#[derive(Clone, Copy, Debug)]
pub struct Choice<'a> {
    /// The flow's VIP.
    pub vip_id: u32,
    /// The backend's slot.
    pub backend_id: u32,
    /// The slot's value.
    pub backend: &'a Backend,
    /// The flow's hash.
    pub hash: u64,
}

/// What the encapsulation program needs to send a packet of `flow` to the
/// backend `choice` names, and to count it (its `TALLY_*` bits, `tally`);
/// `traced` when the trace job holds its decision.
#[inline(always)]
pub fn encap_job(flow: &Flow, choice: &Choice, tally: Tally, traced: bool) -> EncapJob {
    EncapJob {
        backend: *choice.backend,
        backend_id: choice.backend_id,
        vip_id: choice.vip_id,
        l3: flow.l3 as u16,
        family: flow.key.family,
        flags: tally | if traced { JOB_TRACED } else { 0 },
        hash: choice.hash,
    }
}

#[cfg(test)]
mod tests {
    use lb_common::maps::{
        FAMILY_IPV4, FAMILY_IPV6, FORWARD_GUE, FORWARD_IPIP, PROTO_TCP, TALLY_SYN,
    };

    use super::*;

    fn backend(flags: u16, vip_id: u32, forward: u8) -> Backend {
        Backend {
            mac: [2, 0, 0, 0, 1, 1],
            flags,
            vip_id,
            generation: 4,
            forward,
            family: FAMILY_IPV4,
            addr: [198, 18, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Backend::default()
        }
    }

    fn flow(icmp: bool) -> Flow {
        let mut key = FlowKey {
            src_port: 40000,
            dst_port: 80,
            proto: PROTO_TCP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        key.dst_addr[..4].copy_from_slice(&[198, 18, 0, 100]);
        Flow {
            key,
            opens: false,
            closes: false,
            resets: false,
            icmp,
            l3: 18,
        }
    }

    #[test]
    fn a_slot_serves_a_vip_while_in_use_for_it() {
        let rows = [
            (
                "in use for VIP 7",
                backend(BACKEND_ACTIVE, 7, FORWARD_L2_DSR),
                true,
            ),
            (
                "in use for VIP 8",
                backend(BACKEND_ACTIVE, 8, FORWARD_L2_DSR),
                false,
            ),
            (
                "empty, last used for VIP 7",
                backend(0, 7, FORWARD_L2_DSR),
                false,
            ),
        ];
        for (what, slot, expected) in rows {
            assert_eq!(serves(&slot, 7), expected, "{what}");
        }
    }

    #[test]
    fn an_index_slot_holds_the_key_another_vip_or_nothing() {
        let key = vip_key(&flow(false).key);
        let slot = VipSlot {
            key,
            vip_id: 7,
            flags: VIP_SLOT_USED,
            table_id: 1031,
            table_size: 251,
        };
        let vip = Vip {
            vip_id: 7,
            table_id: 1031,
            table_size: 251,
            admits: false,
            quic: false,
        };
        let admitting = VipSlot {
            flags: VIP_SLOT_USED | VIP_SLOT_ADMIT,
            ..slot
        };
        let quic = VipSlot {
            flags: VIP_SLOT_USED | VIP_SLOT_QUIC,
            ..slot
        };
        let rows = [
            ("the key's VIP", slot, Probe::Found(vip)),
            (
                "the key's VIP, with source rules or limits",
                admitting,
                Probe::Found(Vip {
                    admits: true,
                    ..vip
                }),
            ),
            (
                "the key's VIP, routing QUIC by server ID",
                quic,
                Probe::Found(Vip { quic: true, ..vip }),
            ),
            ("an empty slot", VipSlot { flags: 0, ..slot }, Probe::Vacant),
            (
                "the any-port VIP of the same address",
                VipSlot {
                    key: VipKey { port: 0, ..key },
                    ..slot
                },
                Probe::Occupied,
            ),
            (
                "the same address and port for UDP",
                VipSlot {
                    key: VipKey { proto: 17, ..key },
                    ..slot
                },
                Probe::Occupied,
            ),
            (
                "another address",
                VipSlot {
                    key: VipKey {
                        addr: [198, 18, 0, 101, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                        ..key
                    },
                    ..slot
                },
                Probe::Occupied,
            ),
        ];
        for (what, slot, expected) in rows {
            assert_eq!(probe(&slot, &key), expected, "{what}");
        }
    }

    #[test]
    fn probes_walk_the_index_and_wrap_at_its_end() {
        let rows = [
            ("the home slot first", 17, 0, 17),
            ("then the next", 17, 3, 20),
            ("past the last slot, the first", VIP_INDEX_SLOTS - 1, 1, 0),
            ("and on", VIP_INDEX_SLOTS - 2, 5, 3),
        ];
        for (what, home, step, expected) in rows {
            assert_eq!(probe_slot(home, step), expected, "{what}");
        }
    }

    #[test]
    fn a_flows_vip_key_is_its_destination() {
        let mut key = flow(false).key;
        key.family = FAMILY_IPV6;
        key.dst_addr = [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(
            vip_key(&key),
            VipKey {
                addr: key.dst_addr,
                port: 80,
                proto: PROTO_TCP,
                family: FAMILY_IPV6,
            }
        );
    }

    #[test]
    fn a_flow_starts_only_from_the_table_and_never_with_an_icmp_error() {
        let rows = [
            (
                "a packet the table placed",
                flow(false),
                Via::Table,
                TALLY_NEW_FLOW,
            ),
            (
                "a packet of a tracked flow",
                flow(false),
                Via::Connection,
                0,
            ),
            ("an ICMP error the table placed", flow(true), Via::Table, 0),
            (
                "an ICMP error of a tracked flow",
                flow(true),
                Via::Connection,
                0,
            ),
        ];
        for (what, flow, via, expected) in rows {
            assert_eq!(new_flow_tally(&flow, via), expected, "{what}");
        }
    }

    #[test]
    fn encapsulating_backends_get_a_job_l2_dsr_ones_do_not() {
        let rows = [
            ("L2 DSR", FORWARD_L2_DSR, false),
            ("IP in IP", FORWARD_IPIP, true),
            ("GUE", FORWARD_GUE, true),
        ];
        for (what, forward, expected) in rows {
            let slot = backend(BACKEND_ACTIVE, 7, forward);
            assert_eq!(encapsulates(&slot), expected, "{what}");
        }
    }

    #[test]
    fn a_job_carries_the_backend_the_packet_and_its_marks() {
        let slot = backend(BACKEND_ACTIVE, 7, FORWARD_GUE);
        let choice = Choice {
            vip_id: 7,
            backend_id: 3,
            backend: &slot,
            hash: 0x0123_4567_89ab_cdef,
        };
        let rows = [
            ("an established flow", 0, false, 0),
            ("a new flow", TALLY_NEW_FLOW, false, TALLY_NEW_FLOW),
            ("a traced packet", 0, true, JOB_TRACED),
            (
                "a traced SYN",
                TALLY_NEW_FLOW | TALLY_SYN,
                true,
                TALLY_NEW_FLOW | TALLY_SYN | JOB_TRACED,
            ),
        ];
        for (what, tally, traced, flags) in rows {
            assert_eq!(
                encap_job(&flow(false), &choice, tally, traced),
                EncapJob {
                    backend: slot,
                    backend_id: 3,
                    vip_id: 7,
                    l3: 18,
                    family: FAMILY_IPV4,
                    flags,
                    hash: 0x0123_4567_89ab_cdef,
                },
                "{what}"
            );
        }
    }
}
