//! The forwarding decision, over values as the maps hold them: which VIP
//! a flow is for (a probe of the VIP index), whether a backend slot still
//! serves a VIP, whether a packet starts a flow (recorded, and counted as
//! a new flow) and how it reaches its backend: its MACs rewritten (L2
//! DSR), or handed to the encapsulation program with a job.

use lb_common::maps::{
    BACKEND_ACTIVE, Backend, EncapJob, FORWARD_L2_DSR, FlowKey, JOB_NEW_FLOW, JOB_TRACED,
    VIP_INDEX_SLOTS, VIP_SLOT_USED, VipKey, VipSlot,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vip {
    /// Its id: its counters, and what its backends' slots name.
    pub vip_id: u32,
    /// Its lookup table in the outer map.
    pub table_id: u32,
    /// That table's size.
    pub table_size: u32,
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

/// Whether a packet whose backend came `via` starts a flow: it is then
/// recorded in the connection table and counted as a new flow. An ICMP
/// error follows its flow but never starts one.
#[inline(always)]
pub fn starts_flow(flow: &Flow, via: Via) -> bool {
    via == Via::Table && !flow.icmp
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
/// backend `choice` names; `new_flow` when it starts the flow, `traced`
/// when the trace job holds its decision.
#[inline(always)]
pub fn encap_job(flow: &Flow, choice: &Choice, new_flow: bool, traced: bool) -> EncapJob {
    EncapJob {
        backend: *choice.backend,
        backend_id: choice.backend_id,
        vip_id: choice.vip_id,
        l3: flow.l3 as u16,
        family: flow.key.family,
        flags: if new_flow { JOB_NEW_FLOW } else { 0 } | if traced { JOB_TRACED } else { 0 },
        hash: choice.hash,
    }
}
