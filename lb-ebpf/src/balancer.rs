//! The load balancer's per-packet path and the maps it reads and writes:
//! the glue between the maps and the lib's decisions (`parse`, `conn`,
//! `forward`). Both objects hold it: the production object (`main.rs`),
//! whose `fulcrum_xdp` runs it, and the bench object (`bench.rs`), whose
//! `bench_untraced` runs it without the trace hook, loaded on the
//! production object's maps (opened by their pins). So the maps are
//! declared once, here, alike in both.

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, PerCpuArray, ProgramArray},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
    programs::XdpContext,
};
use lb_common::{
    flow_hash::{flow_hash, flow_set, flow_tag, table_slot, vip_home_slot},
    maps::{
        ADMIT_FLOW_LIMIT, ADMIT_LIMITS, ADMIT_PACKET_LIMIT, ADMIT_SOURCE_LIMIT, ADMIT_SOURCES,
        Admission, AdmissionCounters, AdmissionDrop, BPF_F_MMAPABLE, Backend, CONN_TABLE_SETS,
        DataplaneConfig, EncapJob, FAMILY_IPV4, FlowEntry, FlowKey, FlowMeta, FlowWays,
        LOOKUP_TABLE_IDS, MAX_BACKENDS, MAX_QUIC_SERVERS, MAX_SOURCE_RULES, MAX_VIPS, PROTO_UDP,
        QUIC_FILTER, QuicCounters, QuicJob, QuicOutcome, QuicRoute, QuicServerKey, Rate, Reason,
        SOURCE_BUCKET_ROWS, SOURCE_RULE_SLOTS, SourceRule, SourceV4, SourceV6, TABLE_BANKS,
        TABLE_MAP_FLAGS, TAIL_ENCAP, TAIL_MAIN, TAIL_QUIC, TAIL_SLOTS, TAIL_TRACED,
        TRACE_VIA_CONNECTION, TRACE_VIA_QUIC, TRACE_VIA_TABLE, Tally, TraceEvent, TrafficCounters,
        VIP_INDEX_MAX_PROBES, VIP_INDEX_SLOTS, VipBuckets, VipFilter, VipKey, VipSlot, WayWord,
        table_id,
    },
};
use lb_ebpf::{
    Verdict,
    admission::{conforms, judge, source_bucket_key, source_buckets, source_v4, source_v6},
    conn::{
        Stale, find_way, hit_tally, insertion_way, new_entry, new_word, refreshed, standing,
        still_pinned, syn_tally,
    },
    discard,
    forward::{
        Choice, Probe, Via, Vip, encap_job, encapsulates, new_flow_tally, probe, probe_slot,
        serves, vip_key,
    },
    frame::header_mut,
    parse::{Flow, Notes, parse},
    pass,
    quic::server_id,
};
use network_types::eth::EthHdr;

/// The current VIP index (entry 0). A fixed-size inner array, so the kernel
/// inlines every probe; userspace replaces the whole index in one update.
#[btf_map]
static VIP_INDEX: ArrayOfMaps<Array<VipSlot, { VIP_INDEX_SLOTS as usize }>, 1> = ArrayOfMaps::new();

/// The VIPs' addresses: a packet other than a SYN to no VIP passes after
/// one bit test (a SYN's VIP probe is as cheap). Entry `QUIC_FILTER`
/// holds the QUIC VIPs' endpoints (address and port) alone: another UDP
/// packet goes its way after one bit test.
#[btf_map]
static VIP_FILTER: Array<VipFilter, 2> = Array::new();

/// Backend slots. The size here is a default: `fulcrum` sets the real one at
/// load time (`max_backends`), as for the connection table and the backend
/// counters.
#[btf_map]
static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// One lookup table per VIP in each of two banks; the VIP index names the
/// one in use. The template is tiny: `BPF_F_INNER_MAP` lets each real table
/// have its own size, which slot 0 records.
#[btf_map]
static LOOKUP_TABLES: ArrayOfMaps<
    Array<u32, 2, { TABLE_MAP_FLAGS as usize }>,
    { LOOKUP_TABLE_IDS as usize },
> = ArrayOfMaps::new();

/// The connection table: sets of `FLOW_WAYS` ways, indexed by the flow
/// hash. One table shared by every CPU (a flow is found whichever CPU its
/// packets reach), with no lock and no allocation: an insert overwrites a
/// way. Each set is split in two maps: its way words (tag, clock, flags) in
/// one line of `CONN_META`, its entries in `CONN_TABLE`. The sizes here are
/// defaults; `fulcrum` sets the real ones. Both are mmapable, so `fulcrum`
/// reads them in place.
#[btf_map]
static CONN_META: Array<FlowMeta, { CONN_TABLE_SETS as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

#[btf_map]
static CONN_TABLE: Array<FlowWays, { CONN_TABLE_SETS as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters, { MAX_BACKENDS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static VIP_STATS: PerCpuArray<TrafficCounters, { MAX_VIPS as usize }> = PerCpuArray::new();

#[btf_map]
static GLOBAL_STATS: PerCpuArray<u64, { Reason::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static CONFIG: Array<DataplaneConfig, 1> = Array::new();

/// What each VIP checks before it admits a packet, by table id: the bank
/// in force holds the live ones, and an apply writes the other.
#[btf_map]
static ADMISSION: Array<Admission, { LOOKUP_TABLE_IDS as usize }> = Array::new();

/// Every VIP's IPv4 source rules, keyed by list (the VIP's table id) and
/// prefix: both banks' lists.
#[btf_map]
static SOURCES_V4: LpmTrie<SourceV4, SourceRule, { (TABLE_BANKS * MAX_SOURCE_RULES) as usize }> =
    LpmTrie::new();

/// The same for IPv6.
#[btf_map]
static SOURCES_V6: LpmTrie<SourceV6, SourceRule, { (TABLE_BANKS * MAX_SOURCE_RULES) as usize }> =
    LpmTrie::new();

/// Packets each deny rule dropped, by the rule's slot.
#[btf_map]
static RULE_STATS: PerCpuArray<u64, { SOURCE_RULE_SLOTS as usize + 1 }> = PerCpuArray::new();

/// Each VIP's limit buckets, by `vip_id`: they outlive applies.
#[btf_map]
static VIP_BUCKETS: Array<VipBuckets, { MAX_VIPS as usize }> = Array::new();

/// The source prefixes' new-flow buckets: two rows of `SOURCE_BUCKET_ROWS`.
#[btf_map]
static SOURCE_BUCKETS: Array<u64, { (2 * SOURCE_BUCKET_ROWS) as usize }> = Array::new();

/// Packets each VIP refused, by `AdmissionDrop`.
#[btf_map]
static ADMISSION_STATS: PerCpuArray<AdmissionCounters, { MAX_VIPS as usize }> = PerCpuArray::new();

/// Each QUIC VIP's server IDs, by list (the VIP's table id, so both banks
/// have their own) and ID, to backend ids.
#[btf_map]
static QUIC_SERVERS: HashMap<QuicServerKey, u32, { (TABLE_BANKS * MAX_QUIC_SERVERS) as usize }> =
    HashMap::new();

/// Where each QUIC VIP's servers put their ID, by table id: the bank in
/// force holds the live ones, and an apply writes the other.
#[btf_map]
static QUIC_ROUTES: Array<QuicRoute, { LOOKUP_TABLE_IDS as usize }> = Array::new();

/// What `fulcrum_xdp` tells `fulcrum_quic` about the packet it hands over.
#[btf_map]
pub static QUIC_JOBS: PerCpuArray<QuicJob, 1> = PerCpuArray::new();

/// Each QUIC VIP's packets, by `QuicOutcome`.
#[btf_map]
static QUIC_STATS: PerCpuArray<QuicCounters, { MAX_VIPS as usize }> = PerCpuArray::new();

/// The programs `fulcrum_xdp` tail-calls, which `fulcrum` puts here:
/// `fulcrum_encap` at `TAIL_ENCAP`, `fulcrum_trace` at `TAIL_TRACE`,
/// `fulcrum_traced` at `TAIL_TRACED`, `fulcrum_quic` at `TAIL_QUIC`,
/// and `fulcrum_xdp` itself at `TAIL_MAIN`.
#[btf_map]
pub static TAIL_CALLS: ProgramArray<{ TAIL_SLOTS as usize }> = ProgramArray::new();

/// What `fulcrum_xdp` tells `fulcrum_encap` about the packet it hands over.
#[btf_map]
pub static ENCAP_JOBS: PerCpuArray<EncapJob, 1> = PerCpuArray::new();

/// The decision being traced, while tracing is on: `TRACE_JOBS`' entry.
pub type Trace = Option<*mut TraceEvent>;

/// Moves the global counter of `reason`.
#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(counter) = GLOBAL_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
}

/// Counts a forwarded frame of `bytes` and its `TALLY_*` bits in a traffic
/// counter (this CPU's).
#[inline(always)]
pub fn add_traffic(counters: Option<*mut TrafficCounters>, bytes: u64, tally: Tally) {
    if let Some(counters) = counters {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { (*counters).count(bytes, tally) };
    }
}

/// Records where the backend came from in the traced decision.
#[inline(always)]
fn trace_choice(trace: Trace, vip_id: u32, backend_id: u32, via: u8, (slot, table_id): (u32, u32)) {
    if let Some(job) = trace {
        // SAFETY: per-CPU slot, only this CPU uses it while we run.
        unsafe {
            (*job).vip_id = vip_id;
            (*job).backend_id = backend_id;
            (*job).via = via;
            (*job).slot = slot;
            (*job).table_id = table_id;
        }
    }
}

/// What the header walk tells: the VLAN id goes in the trace job, IPv4
/// options to their counter.
struct MapNotes(Trace);

impl Notes for MapNotes {
    #[inline(always)]
    fn vlan(&mut self, vlan: u16) {
        if let Some(job) = self.0 {
            // SAFETY: per-CPU slot, only this CPU uses it while we run.
            unsafe { (*job).vlan = vlan };
        }
    }

    #[inline(always)]
    fn ipv4_options(&mut self) {
        count(Reason::Ipv4Options);
    }
}

/// The verdict on one frame, with the trace job filled in while tracing
/// is on (`trace`).
#[inline(always)]
pub fn process(ctx: &XdpContext, trace: Trace) -> Verdict {
    let Some(config) = CONFIG.get(0) else {
        return discard(Reason::DropNoBackend);
    };
    match parse(ctx, &config.if_mac, &mut MapNotes(trace)) {
        Ok(flow) => {
            // Before anything else is held: values live across the tail
            // call would take stack the traced path has no room for.
            to_quic(ctx, &flow, trace);
            forward(ctx, &flow, trace)
        }
        Err(verdict) => verdict,
    }
}

/// The VIP of `key` in the index, probing from its home slot until an
/// empty slot or the probe bound.
#[inline(always)]
fn find_vip(index: &Array<VipSlot, { VIP_INDEX_SLOTS as usize }>, key: &VipKey) -> Option<Vip> {
    let home = vip_home_slot(key);
    for step in 0..VIP_INDEX_MAX_PROBES {
        match probe(index.get(probe_slot(home, step))?, key) {
            Probe::Found(vip) => return Some(vip),
            Probe::Vacant => return None,
            Probe::Occupied => {}
        }
    }
    None
}

/// The VIP a flow is addressed to: exact port first, then the any-port VIP.
#[inline(always)]
fn lookup_vip(key: &FlowKey) -> Option<Vip> {
    let index = VIP_INDEX.get(0)?;
    let mut vip = vip_key(key);
    if let Some(found) = find_vip(index, &vip) {
        return Some(found);
    }
    vip.port = 0;
    find_vip(index, &vip)
}

/// The backend slot if it is in use and still serves `vip_id`.
#[inline(always)]
fn live_backend(backend_id: u32, vip_id: u32) -> Option<&'static Backend> {
    let backend = BACKENDS.get(backend_id)?;
    serves(backend, vip_id).then_some(backend)
}

/// Where a flow belongs in the connection table: its hash, its tag, its
/// set's two halves and the way that holds its 5-tuple, if one does.
struct Place {
    hash: u64,
    tag: u32,
    set: Option<(*mut FlowMeta, *mut FlowWays)>,
    way: Option<usize>,
}

#[inline(always)]
fn locate(key: &FlowKey, config: &DataplaneConfig) -> Place {
    let hash = flow_hash(key, &config.seed);
    let tag = flow_tag(hash);
    let index = flow_set(hash, config.flow_set_mask);
    let set = CONN_META
        .get_ptr_mut(index)
        .zip(CONN_TABLE.get_ptr_mut(index));
    let way = set.and_then(|(meta, ways)| {
        // SAFETY: map values are valid while the program runs.
        let (meta, ways) = unsafe { (&*meta, &*ways) };
        find_way(meta, ways, tag, key)
    });
    Place {
        hash,
        tag,
        set,
        way,
    }
}

/// An established flow: the VIP, backend id and backend its entry names,
/// if the entry still stands and its backend slot still holds the backend
/// it pinned, and what the packet tells of the backend. Refreshes the
/// way's clock and marks.
#[inline(always)]
fn tracked_flow(
    place: &Place,
    flow: &Flow,
    config: &DataplaneConfig,
) -> Option<(u32, u32, &'static Backend, Tally)> {
    let ((meta, ways), way) = (place.set?, place.way?);
    // SAFETY: map values are valid while the program runs; `way` is a way
    // index found by `locate`.
    let (word, entry) = unsafe { (&mut (*meta).ways[way], &(*ways).entries[way]) };
    let state = *entry;
    let seen = WayWord(*word);
    match standing(seen, &state, place.tag, config) {
        Ok(()) => {}
        Err(Stale::Expired) => {
            count(Reason::ConnExpired);
            return None;
        }
        Err(Stale::Torn) => return None,
    }
    let backend = BACKENDS
        .get(state.backend_id)
        .filter(|backend| still_pinned(backend, &state))?;
    // One word holds the tag, the clock and the marks: a racing writer on
    // another CPU replaces it whole, or this store does.
    let now = refreshed(seen, place.tag, config.epoch, flow);
    if now != seen {
        *word = now.0;
    }
    let tally = hit_tally(seen, &state, flow, config.epoch);
    Some((state.vip_id, state.backend_id, backend, tally))
}

/// Records a new flow, unproven until its next packet, in its own way or
/// a free one; counts the insert, an eviction, or that it found no way.
/// Returns what a SYN it records tells (`syn_tally`), else 0.
#[inline(always)]
fn track(place: &Place, flow: &Flow, pin: FlowEntry, config: &DataplaneConfig) -> Tally {
    let Some((meta, ways)) = place.set else {
        count(Reason::ConnInsertFailed);
        return 0;
    };
    // SAFETY: map values are valid while the program runs.
    let (meta, ways) = unsafe { (&mut *meta, &mut *ways) };
    let Some((way, evicts)) = insertion_way(place.way, meta, config) else {
        count(Reason::ConnInsertFailed);
        return 0;
    };
    let tally = if flow.opens {
        syn_tally(
            WayWord(meta.ways[way]),
            &ways.entries[way],
            place.tag,
            &pin,
            config,
        )
    } else {
        0
    };
    let entry = new_entry(flow, place.tag, pin);
    let word = new_word(flow, place.tag, config.epoch);
    // Clear the way's word, write the entry, set the word: a reader on
    // another CPU sees an empty way or a whole entry (and the check catches
    // the rest).
    // SAFETY: `way` < FLOW_WAYS; plain stores into the map values.
    unsafe {
        core::ptr::write_volatile(&mut meta.ways[way], 0);
        core::ptr::write_volatile(&mut ways.entries[way], entry);
        core::ptr::write_volatile(&mut meta.ways[way], word.0);
    }
    count(Reason::ConnInsert);
    if evicts {
        count(Reason::ConnEvicted);
    }
    tally
}

/// What `refused` answers for an admitted packet.
const ADMITTED: u32 = u32::MAX;

/// The drop verdict when VIP `vip_id`, whose admission is `list` (its
/// table id in some bank), refuses a packet of `key` (one that starts a
/// flow when `new_flow`); counted by VIP, reason and rule. `None`:
/// admitted.
#[inline(always)]
fn admission(key: &FlowKey, vip_id: u32, list: u32, new_flow: bool) -> Option<Verdict> {
    // A VIP without rules or limits reads its record and goes on.
    let record = ADMISSION.get(list)?;
    if record.flags == 0 {
        return None;
    }
    match refused(record, key, (vip_id, list), new_flow) {
        ADMITTED => None,
        code if code == Reason::DropDenied as u32 => Some(discard(Reason::DropDenied)),
        _ => Some(discard(Reason::DropLimited)),
    }
}

/// `admission`'s work for a VIP with rules or limits (`admission`, its
/// record), a function of its own (a BPF-to-BPF call), so that the path
/// of the others carries none of its code: the verdict counter of the
/// drop, or `ADMITTED`.
#[inline(never)]
fn refused(
    admission: &Admission,
    key: &FlowKey,
    (vip_id, list): (u32, u32),
    new_flow: bool,
) -> u32 {
    let mut rule = None;
    if admission.flags & ADMIT_SOURCES != 0 {
        rule = if key.family == FAMILY_IPV4 {
            SOURCES_V4.get(&source_v4(list, &key.src_addr))
        } else {
            SOURCES_V6.get(&source_v6(list, &key.src_addr))
        };
    }
    let drop = match judge(admission, rule) {
        Some(drop) => drop,
        None => match limited(admission, key, vip_id, new_flow) {
            Some(drop) => drop,
            None => return ADMITTED,
        },
    };
    if let Some(counters) = ADMISSION_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { (*counters).drops[drop as usize] += 1 };
    }
    if drop == AdmissionDrop::Denied
        && let Some(counter) = rule.and_then(|rule| RULE_STATS.get_ptr_mut(rule.slot))
    {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
    drop.reason() as u32
}

/// Which of the VIP's limits refuses the packet, if one does: its
/// source prefix's cap on new flows, the VIP's cap on new flows, then its
/// cap on packets. Each bucket a packet passes moves on; the one that
/// refuses it does not. Racing CPUs may each admit one packet more than
/// the rate.
#[inline(always)]
fn limited(
    admission: &Admission,
    key: &FlowKey,
    vip_id: u32,
    new_flow: bool,
) -> Option<AdmissionDrop> {
    let flags = admission.flags;
    if flags & ADMIT_LIMITS == 0 {
        return None;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if new_flow && flags & ADMIT_SOURCE_LIMIT != 0 && !source_admits(admission, key, vip_id, now) {
        return Some(AdmissionDrop::SourceLimit);
    }
    let buckets = VIP_BUCKETS.get_ptr_mut(vip_id)?;
    if new_flow && flags & ADMIT_FLOW_LIMIT != 0 {
        // SAFETY: a map value, valid while we run; word loads and stores.
        let bucket = unsafe { &mut (*buckets).new_flows };
        if !take(bucket, now, &admission.new_flows) {
            return Some(AdmissionDrop::FlowLimit);
        }
    }
    if flags & ADMIT_PACKET_LIMIT != 0 {
        // SAFETY: as above.
        let bucket = unsafe { &mut (*buckets).packets };
        if !take(bucket, now, &admission.packets) {
            return Some(AdmissionDrop::PacketLimit);
        }
    }
    None
}

/// Whether a packet at `now` conforms to `rate`; moves the bucket on
/// when it does.
#[inline(always)]
fn take(bucket: &mut u64, now: u64, rate: &Rate) -> bool {
    match conforms(*bucket, now, rate) {
        Some(next) => {
            *bucket = next;
            true
        }
        None => false,
    }
}

/// Whether the source prefix of `key` may open another flow to VIP
/// `vip_id`: one of its two buckets has room (each that has moves on).
#[inline(always)]
fn source_admits(admission: &Admission, key: &FlowKey, vip_id: u32, now: u64) -> bool {
    let Some(config) = CONFIG.get(0) else {
        return true;
    };
    let hash = flow_hash(&source_bucket_key(key, vip_id, admission), &config.seed);
    let (first, second) = source_buckets(hash);
    let rate = &admission.source_new_flows;
    let (Some(first), Some(second)) = (
        SOURCE_BUCKETS.get_ptr_mut(first),
        SOURCE_BUCKETS.get_ptr_mut(second),
    ) else {
        return true;
    };
    // SAFETY: map values, valid while we run. Both move on where they
    // have room (no short circuit).
    unsafe { take(&mut *first, now, rate) | take(&mut *second, now, rate) }
}

/// The backend the VIP's lookup table assigns to a new flow.
#[inline(always)]
fn table_backend(hash: u64, vip: &Vip) -> Option<(u32, u32, &'static Backend)> {
    let slot = table_slot(hash, vip.table_size)?;
    let table = LOOKUP_TABLES.get(vip.table_id)?;
    let backend_id = *table.get(slot)?;
    live_backend(backend_id, vip.vip_id).map(|backend| (slot, backend_id, backend))
}

/// Hands a UDP packet of `flow` to a QUIC VIP's address to the QUIC
/// program (tail call): other packets pay one bit test. Returns when the
/// packet is not for it, when the QUIC program handed it back (its
/// server ID routes nowhere: the path goes on as for any UDP flow), or
/// when the program is not loaded.
#[inline(always)]
fn to_quic(ctx: &XdpContext, flow: &Flow, trace: Trace) {
    if flow.key.proto != PROTO_UDP
        || flow.icmp
        || !VIP_FILTER
            .get(QUIC_FILTER)
            .is_some_and(|filter| filter.may_hold_endpoint(&flow.key.dst_addr, flow.key.dst_port))
    {
        return;
    }
    let Some(job) = QUIC_JOBS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU uses it while we run (and the
    // QUIC program, which hands back to this one, before us).
    unsafe {
        // The mark of a packet handed back; honoured for that packet only
        // (a filter narrowed meanwhile can leave a mark unread).
        if (*job).fallback != 0 {
            (*job).fallback = 0;
            if (*job).key.same(&flow.key) {
                return;
            }
        }
        // Field by field: a whole value would be built on the stack first.
        (*job).key = flow.key;
        (*job).l3 = flow.l3 as u16;
        (*job).traced = u8::from(trace.is_some());
        // Returns only if the slot is empty.
        TAIL_CALLS.tail_call(ctx, TAIL_QUIC);
    }
}

/// The path of a packet `fulcrum_xdp` handed over for a QUIC VIP's
/// address (`job`), the trace job `trace` while tracing is on: the server
/// ID in a short header's destination connection ID names its backend,
/// checked like an established flow's; any other packet goes back to
/// `fulcrum_xdp` (`fall_back`), the way of every UDP flow.
#[inline(always)]
pub fn quic_process(ctx: &XdpContext, job: *mut QuicJob, trace: Trace) -> Verdict {
    // SAFETY: per-CPU slot, only this CPU uses it while we run.
    let (key, l3) = unsafe { ((*job).key, (*job).l3) };
    let flow = Flow {
        key,
        opens: false,
        closes: false,
        resets: false,
        icmp: false,
        // Bounded for the verifier, which reads the job as any number: an
        // IP header starts at 14 (18 behind a VLAN tag).
        l3: usize::from(l3 & 0x3f),
    };
    let Some(vip) = lookup_vip(&flow.key).filter(|vip| vip.quic) else {
        return fall_back(ctx, job, trace.is_some());
    };
    let Some(route) = QUIC_ROUTES.get(vip.table_id) else {
        return fall_back(ctx, job, trace.is_some());
    };
    let found = server_id(ctx, &flow, route).and_then(|id| {
        let key = QuicServerKey {
            list: vip.table_id,
            id,
        };
        // SAFETY: a map value, valid while we run; copied out.
        let backend_id = unsafe { QUIC_SERVERS.get(key) }
            .copied()
            .ok_or(QuicOutcome::UnknownServer)?;
        live_backend(backend_id, vip.vip_id)
            .map(|backend| (backend_id, backend))
            .ok_or(QuicOutcome::ServerDown)
    });
    let outcome = match found {
        Ok(_) => QuicOutcome::Routed,
        Err(outcome) => outcome,
    };
    if let Some(counters) = QUIC_STATS.get_ptr_mut(vip.vip_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { (*counters).packets[outcome as usize] += 1 };
    }
    // Kept through a fallback: `fulcrum_trace` clears it once reported.
    if let Some(job) = trace {
        // SAFETY: per-CPU slot, only this CPU uses it while we run.
        unsafe { (*job).quic = outcome as u32 + 1 };
    }
    let Ok((backend_id, backend)) = found else {
        return fall_back(ctx, job, trace.is_some());
    };
    trace_flow(trace, &flow);
    trace_choice(
        trace,
        vip.vip_id,
        backend_id,
        TRACE_VIA_QUIC,
        (0, vip.table_id),
    );
    if vip.admits
        && let Some(verdict) = admission(&flow.key, vip.vip_id, vip.table_id, false)
    {
        return verdict;
    }
    let Some(config) = CONFIG.get(0) else {
        return discard(Reason::DropNoBackend);
    };
    // Only the encapsulation spreads by the hash.
    let hash = if encapsulates(backend) {
        flow_hash(&flow.key, &config.seed)
    } else {
        0
    };
    deliver(
        ctx,
        &flow,
        (vip.vip_id, backend_id, backend),
        (0, hash, config),
        trace,
    )
}

/// Hands the packet of `job` back to the path that handed it over
/// (`fulcrum_traced` when `traced`, else `fulcrum_xdp`; tail call), marked
/// so that it takes the 4-tuple path this time. Returns the drop verdict
/// only if that program is not in its slot.
#[inline(always)]
fn fall_back(ctx: &XdpContext, job: *mut QuicJob, traced: bool) -> Verdict {
    let slot = if traced { TAIL_TRACED } else { TAIL_MAIN };
    // SAFETY: per-CPU slot, only this CPU uses it while we run; a tail
    // call returns only if the slot is empty.
    unsafe {
        (*job).fallback = 1;
        TAIL_CALLS.tail_call(ctx, slot);
        (*job).fallback = 0;
    }
    discard(Reason::DropNoBackend)
}

/// Records the flow in the traced decision.
#[inline(always)]
fn trace_flow(trace: Trace, flow: &Flow) {
    if let Some(job) = trace {
        // SAFETY: per-CPU slot, only this CPU uses it while we run.
        unsafe {
            (*job).key = flow.key;
            (*job).has_flow = 1;
        }
    }
}

/// The path of a parsed packet of `flow`.
#[inline(always)]
fn forward(ctx: &XdpContext, flow: &Flow, trace: Trace) -> Verdict {
    trace_flow(trace, flow);
    // An established flow is found by its 5-tuple alone: the entry names its
    // VIP, and a backend slot is honoured only while it serves that VIP, so
    // the VIP probe is needed only for SYNs and connection-table misses. A
    // SYN always takes the lookup table's current choice, and reads the
    // config only once it is known to be for a VIP. Any other packet to an
    // address no VIP has passes after one bit test, before the flow hash.
    let (looked_up, tracked) = if flow.opens {
        (None, None)
    } else {
        if !VIP_FILTER
            .get(0)
            .is_some_and(|filter| filter.may_hold(&flow.key.dst_addr))
        {
            return pass(Reason::PassNotVip);
        }
        let Some(config) = CONFIG.get(0) else {
            return discard(Reason::DropNoBackend);
        };
        let place = locate(&flow.key, config);
        let tracked = tracked_flow(&place, flow, config);
        (Some((place, config)), tracked)
    };
    let (vip_id, backend_id, backend, tally, hash, config) = match (tracked, looked_up) {
        (Some((vip_id, backend_id, backend, tally)), Some((place, config))) => {
            count(Reason::ConnHit);
            trace_choice(trace, vip_id, backend_id, TRACE_VIA_CONNECTION, (0, 0));
            if config.admission != 0 {
                let list = table_id(u32::from(config.bank), vip_id);
                if let Some(verdict) = admission(&flow.key, vip_id, list, false) {
                    return verdict;
                }
            }
            let tally = tally | new_flow_tally(flow, Via::Connection);
            (vip_id, backend_id, backend, tally, place.hash, config)
        }
        (_, looked_up) => {
            let Some(vip) = lookup_vip(&flow.key) else {
                return pass(Reason::PassNotVip);
            };
            count(Reason::ConnMiss);
            trace_choice(trace, vip.vip_id, 0, 0, (0, vip.table_id));
            if vip.admits
                && let Some(verdict) = admission(&flow.key, vip.vip_id, vip.table_id, !flow.icmp)
            {
                return verdict;
            }
            let (place, config) = match looked_up {
                Some(found) => found,
                None => {
                    let Some(config) = CONFIG.get(0) else {
                        return discard(Reason::DropNoBackend);
                    };
                    (locate(&flow.key, config), config)
                }
            };
            let Some((slot, backend_id, backend)) = table_backend(place.hash, &vip) else {
                return discard(Reason::DropNoBackend);
            };
            let vip_id = vip.vip_id;
            trace_choice(
                trace,
                vip_id,
                backend_id,
                TRACE_VIA_TABLE,
                (slot, vip.table_id),
            );
            let mut tally = new_flow_tally(flow, Via::Table);
            if tally != 0 {
                let pin = FlowEntry {
                    backend_id,
                    vip_id,
                    generation: backend.generation,
                    born: config.epoch,
                    ..FlowEntry::default()
                };
                tally |= track(&place, flow, pin, config);
            }
            (vip_id, backend_id, backend, tally, place.hash, config)
        }
    };
    deliver(
        ctx,
        flow,
        (vip_id, backend_id, backend),
        (tally, hash, config),
        trace,
    )
}

/// Sends a packet of `flow` to the backend chosen for it (its VIP, its
/// slot and the slot's value), counting its `TALLY_*` bits `tally`: its
/// MACs rewritten, or handed to the encapsulation program (which spreads
/// by `hash`).
#[inline(always)]
fn deliver(
    ctx: &XdpContext,
    flow: &Flow,
    (vip_id, backend_id, backend): (u32, u32, &Backend),
    (tally, hash, config): (Tally, u64, &DataplaneConfig),
    trace: Trace,
) -> Verdict {
    if flow.icmp {
        count(Reason::IcmpToBackend);
    }
    if encapsulates(backend) {
        // The encapsulation program takes it from here, and counts it.
        if let Some(job) = ENCAP_JOBS.get_ptr_mut(0) {
            let choice = Choice {
                vip_id,
                backend_id,
                backend,
                hash,
            };
            // SAFETY: per-CPU slot, only this CPU uses it while we run.
            unsafe {
                *job = encap_job(flow, &choice, tally, trace.is_some());
                TAIL_CALLS.tail_call(ctx, TAIL_ENCAP);
            }
        }
        return discard(Reason::DropEncapFailed);
    }
    // Taken again here rather than kept from `parse`: with no packet
    // pointer alive across the lookups, the verifier sees one state for
    // every parse path that reaches them, not one per path.
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return discard(Reason::DropTruncated);
    };
    // A copy first: assigning straight from the map value makes LLVM call
    // a byte-wise memmove (the two may overlap, as far as it knows).
    let (if_mac, mac) = (config.if_mac, backend.mac);
    // SAFETY: bounds checked by `header_mut`.
    unsafe {
        (*eth).dst_addr = mac;
        (*eth).src_addr = if_mac;
    }
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    add_traffic(BACKEND_STATS.get_ptr_mut(backend_id), bytes, tally);
    add_traffic(VIP_STATS.get_ptr_mut(vip_id), bytes, tally);
    Verdict {
        action: xdp_action::XDP_TX,
        reason: Reason::Tx,
    }
}
