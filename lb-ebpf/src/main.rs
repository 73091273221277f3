//! Fulcrum's XDP program: finds the headers of each frame, looks up the VIP,
//! picks a backend from the connection table or the VIP's lookup table,
//! and sends the frame back out with `XDP_TX`: with the MACs rewritten for
//! L2 direct server return, or inside an outer header (`encap`). ICMP
//! errors about a VIP's flows go to the backend that owns the flow. Every
//! frame moves exactly one verdict counter.
#![no_std]
#![no_main]

mod encap;
mod trace;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, ArrayOfMaps, PerCpuArray, ProgramArray, RingBuf},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    flow_hash::{flow_check, flow_hash, flow_set, flow_tag, table_slot, vip_home_slot},
    maps::{
        BACKEND_ACTIVE, BPF_F_MMAPABLE, Backend, CONN_TABLE_SETS, DataplaneConfig, EncapJob,
        FAMILY_IPV4, FAMILY_IPV6, FLOW_CLOSING, FLOW_UDP, FLOW_UNPROVEN, FLOW_WAYS, FORWARD_L2_DSR,
        FlowEntry, FlowKey, FlowMeta, FlowWays, JOB_NEW_FLOW, JOB_TRACED, LOOKUP_TABLE_IDS,
        MAX_BACKENDS, MAX_VIPS, PROTO_TCP, Reason, TABLE_MAP_FLAGS, TAIL_ENCAP, TAIL_TRACE,
        TAIL_TRACED, TRACE_ANY_VIP, TRACE_VIA_CONNECTION, TRACE_VIA_TABLE, TraceControl,
        TraceEvent, TraceOutcome, TraceState, TrafficCounters, VIP_INDEX_MAX_PROBES,
        VIP_INDEX_SLOTS, VIP_SLOT_USED, VipFilter, VipKey, VipSlot, WayWord,
    },
};
use lb_ebpf::{
    Addressee, IPV6_NEXT_FRAGMENT, addressee, header, icmp_quotes_flow, ip_packet_end,
    ipv4_header_len, ipv4_is_fragment, ipv6_is_extension, is_balanced_protocol, is_vlan,
    outer::{PROTO_ICMP, PROTO_ICMPV6},
    same_address, tcp_closes_flow, tcp_header_fits, tcp_opens_flow, udp_length_fits,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// The current VIP index (entry 0). A fixed-size inner array, so the kernel
/// inlines every probe; userspace replaces the whole index in one update.
#[btf_map]
static VIP_INDEX: ArrayOfMaps<Array<VipSlot, { VIP_INDEX_SLOTS as usize }>, 1> = ArrayOfMaps::new();

/// The VIPs' addresses: a packet other than a SYN to no VIP passes after
/// one bit test (a SYN's VIP probe is as cheap).
#[btf_map]
static VIP_FILTER: Array<VipFilter, 1> = Array::new();

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
static BACKEND_STATS: PerCpuArray<TrafficCounters, { MAX_BACKENDS as usize }> = PerCpuArray::new();

#[btf_map]
static VIP_STATS: PerCpuArray<TrafficCounters, { MAX_VIPS as usize }> = PerCpuArray::new();

#[btf_map]
static GLOBAL_STATS: PerCpuArray<u64, { Reason::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
static CONFIG: Array<DataplaneConfig, 1> = Array::new();

/// The programs `fulcrum_xdp` tail-calls, which `fulcrum` puts here:
/// `fulcrum_encap` at `TAIL_ENCAP`, `fulcrum_trace` at `TAIL_TRACE`,
/// `fulcrum_traced` at `TAIL_TRACED`.
#[btf_map]
static TAIL_CALLS: ProgramArray<3> = ProgramArray::new();

/// What `fulcrum trace` asks for; off while its lease is 0.
#[btf_map]
static TRACE_CONTROL: Array<TraceControl, 1> = Array::new();

/// The decision being made, filled while tracing is on.
#[btf_map]
static TRACE_JOBS: PerCpuArray<TraceEvent, 1> = PerCpuArray::new();

/// The trace program's sampling and cap, per CPU.
#[btf_map]
static TRACE_STATE: PerCpuArray<TraceState, 1> = PerCpuArray::new();

/// What became of matching packets, by `TraceOutcome`.
#[btf_map]
static TRACE_STATS: PerCpuArray<u64, { TraceOutcome::COUNT as usize }> = PerCpuArray::new();

/// The events, for the controller to read (1 MiB: 13,107 events).
#[btf_map]
static TRACE_EVENTS: RingBuf<TraceEvent, { 1 << 20 }> = RingBuf::new();

/// What `fulcrum_xdp` tells `fulcrum_encap` about the packet it hands over.
#[btf_map]
static ENCAP_JOBS: PerCpuArray<EncapJob, 1> = PerCpuArray::new();

/// What to do with a frame and which counter says why.
struct Verdict {
    action: u32,
    reason: Reason,
}

const fn pass(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_PASS,
        reason,
    }
}

const fn discard(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_DROP,
        reason,
    }
}

/// A parsed flow: its 5-tuple, whether it opens a new connection (a SYN),
/// whether it closes one (a TCP FIN or RST), whether the packet is an ICMP
/// error about the flow (the 5-tuple is then its quote's, reversed), and
/// where its IP header starts.
struct Flow {
    key: FlowKey,
    opens: bool,
    closes: bool,
    icmp: bool,
    l3: usize,
}

/// The decision being traced, while tracing is on: `TRACE_JOBS`' entry.
type Trace = Option<*mut TraceEvent>;

#[xdp]
pub fn fulcrum_xdp(ctx: XdpContext) -> u32 {
    // While tracing is on, the traced copy of the path takes the packet:
    // this program itself carries no trace hook but this one test.
    if TRACE_CONTROL.get(0).is_some_and(|c| c.expires_ns != 0) {
        // SAFETY: a tail call; it returns only if the slot is empty.
        unsafe { TAIL_CALLS.tail_call(&ctx, TAIL_TRACED) };
    }
    let verdict = process(&ctx, None);
    count(verdict.reason);
    verdict.action
}

/// `fulcrum_xdp`'s path with the trace hooks, tail-called while tracing
/// is on: it fills the packet's trace job and hands the verdict to
/// `fulcrum_trace`.
#[xdp]
pub fn fulcrum_traced(ctx: XdpContext) -> u32 {
    let trace = trace_job();
    let verdict = process(&ctx, trace);
    count(verdict.reason);
    if let Some(job) = trace {
        hand_to_trace(&ctx, job, &verdict);
    }
    verdict.action
}

/// For the benchmarks: `fulcrum_xdp` without its trace hooks, the
/// baseline the cost of tracing (off and on) is measured against.
#[xdp]
pub fn bench_untraced(ctx: XdpContext) -> u32 {
    let verdict = process(&ctx, None);
    count(verdict.reason);
    verdict.action
}

/// `TRACE_JOBS`' entry, cleared for a new packet.
#[inline(always)]
fn trace_job() -> Trace {
    let job = TRACE_JOBS.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, only this CPU uses it while we run.
    unsafe {
        (*job).has_flow = 0;
        (*job).via = 0;
        (*job).vlan = 0;
        (*job).vip_id = TRACE_ANY_VIP;
        (*job).backend_id = 0;
        (*job).slot = 0;
        (*job).table_id = 0;
    }
    Some(job)
}

/// Records the verdict and tail-calls the trace program, which returns
/// the action itself. Without it (not loaded), the caller returns it.
#[inline(always)]
fn hand_to_trace(ctx: &XdpContext, job: *mut TraceEvent, verdict: &Verdict) {
    // SAFETY: per-CPU slot, only this CPU uses it while we run.
    unsafe {
        (*job).action = verdict.action;
        (*job).reason = verdict.reason as u32;
        TAIL_CALLS.tail_call(ctx, TAIL_TRACE);
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

/// Reports the decision `fulcrum_xdp` or `fulcrum_encap` handed over (and
/// returns its action). A program of its own: the main program's stack
/// has no room for the event, and the cost stays off the path while
/// tracing is off.
#[xdp]
pub fn fulcrum_trace(_ctx: XdpContext) -> u32 {
    let Some(job) = TRACE_JOBS.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot, only this CPU uses it while we run.
    let job = unsafe { &mut *job };
    trace::report(job);
    job.action
}

/// Encapsulates the packet `fulcrum_xdp` tail-called it for, as its
/// `ENCAP_JOBS` entry says, and counts the verdict (and, once the packet
/// goes out, its traffic). A program of its own, so that it has a whole
/// BPF stack and is verified apart from the main path.
#[xdp]
pub fn fulcrum_encap(ctx: XdpContext) -> u32 {
    let (Some(job), Some(config)) = (ENCAP_JOBS.get(0), CONFIG.get(0)) else {
        count(Reason::DropEncapFailed);
        return xdp_action::XDP_DROP;
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let reason = encap::encapsulate(&ctx, job, config);
    count(reason);
    let action = match reason {
        Reason::Tx => {
            let new_flow = job.flags & JOB_NEW_FLOW != 0;
            add_traffic(BACKEND_STATS.get_ptr_mut(job.backend_id), bytes, new_flow);
            add_traffic(VIP_STATS.get_ptr_mut(job.vip_id), bytes, new_flow);
            xdp_action::XDP_TX
        }
        Reason::TxTooBig => xdp_action::XDP_TX,
        _ => xdp_action::XDP_DROP,
    };
    // The main program filled the trace job before handing over.
    if job.flags & JOB_TRACED != 0
        && let Some(trace) = TRACE_JOBS.get_ptr_mut(0)
    {
        hand_to_trace(&ctx, trace, &Verdict { action, reason });
    }
    action
}

/// For the test lab: attached to the veth peer facing the load balancer.
/// A veth delivers XDP_TX'd frames promptly only when its peer runs XDP
/// (which gives the peer NAPI); without it they arrive late, in bursts.
#[xdp]
pub fn lab_peer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// For the benchmarks: the cheapest possible XDP_TX, the floor every path
/// of `fulcrum_xdp` is measured against.
#[xdp]
pub fn bench_floor_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(counter) = GLOBAL_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn process(ctx: &XdpContext, trace: Trace) -> Verdict {
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return discard(Reason::DropTruncated);
    };
    // XDP runs before the kernel drops frames for other hosts' MACs: on a
    // shared segment every host that got a flooded frame would forward it.
    let Some(config) = CONFIG.get(0) else {
        return discard(Reason::DropNoBackend);
    };
    // SAFETY: `header` checked the bounds.
    match addressee(unsafe { &(*eth).dst_addr }, &config.if_mac) {
        Addressee::Us => {}
        Addressee::OtherHost => return pass(Reason::PassOtherHost),
        Addressee::Group => return pass(Reason::PassMulticast),
    }
    // SAFETY: `header` checked the bounds.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3 = EthHdr::LEN;
    if is_vlan(ether_type) {
        let Some(vlan) = header::<VlanHdr>(ctx, l3) else {
            return discard(Reason::DropTruncated);
        };
        // SAFETY: bounds checked above.
        ether_type = unsafe { (*vlan).ether_type };
        if let Some(job) = trace {
            // SAFETY: bounds checked above; per-CPU slot.
            unsafe { (*job).vlan = u16::from_be_bytes((*vlan).tci) & 0x0fff };
        }
        l3 += VlanHdr::LEN;
        if is_vlan(ether_type) {
            return pass(Reason::PassUnsupported);
        }
    }
    let flow = if ether_type == EtherType::Ipv4 as u16 {
        parse_ipv4(ctx, l3)
    } else if ether_type == EtherType::Ipv6 as u16 {
        parse_ipv6(ctx, l3)
    } else {
        return pass(Reason::PassNotIp);
    };
    match flow {
        Ok(flow) => forward(ctx, &flow, trace),
        Err(verdict) => verdict,
    }
}

/// The 5-tuple of the packet an ICMP error at `l4` quotes, reversed (so
/// it is the flow's as the VIP received it), if it quotes a TCP or UDP
/// packet with its ports: an IPv4 header without options that is no
/// fragment, or an IPv6 header without extensions. Only an error sent to
/// the quoted packet's source (the VIP) belongs to the flow's backend; one
/// sent to this host's own address is the host's. `end` is where the
/// error's IP packet ends.
#[inline(always)]
fn parse_icmp(
    ctx: &XdpContext,
    (l3, l4, end): (usize, usize, usize),
    family: u8,
    outer_dst: &[u8; 16],
) -> Result<Flow, Verdict> {
    let Some(icmp) = header::<[u8; 8]>(ctx, l4) else {
        return Err(discard(Reason::DropTruncated));
    };
    // SAFETY: bounds checked by `header`.
    let kind = unsafe { (*icmp)[0] };
    if !icmp_quotes_flow(family, kind) {
        return Err(pass(Reason::PassOtherProtocol));
    }
    let quoted = l4 + 8;
    let mut key = FlowKey {
        family,
        ..FlowKey::default()
    };
    let ports = if family == FAMILY_IPV4 {
        let ip = header::<Ipv4Hdr>(ctx, quoted).ok_or(pass(Reason::PassOtherProtocol))?;
        // SAFETY: bounds checked by `header`.
        let ip = unsafe { &*ip };
        if ip.vihl != 0x45 {
            return Err(pass(Reason::PassOtherProtocol));
        }
        // A fragment's "ports" would be payload bytes.
        if ipv4_is_fragment(ip.frags) {
            return Err(pass(Reason::PassFragment));
        }
        key.proto = ip.proto;
        key.src_addr[..4].copy_from_slice(&ip.dst_addr);
        key.dst_addr[..4].copy_from_slice(&ip.src_addr);
        quoted + Ipv4Hdr::LEN
    } else {
        let ip = header::<Ipv6Hdr>(ctx, quoted).ok_or(pass(Reason::PassOtherProtocol))?;
        // SAFETY: bounds checked by `header`.
        let ip = unsafe { &*ip };
        key.proto = ip.next_hdr;
        key.src_addr = ip.dst_addr;
        key.dst_addr = ip.src_addr;
        quoted + Ipv6Hdr::LEN
    };
    if !is_balanced_protocol(key.proto) || !same_address(&key.dst_addr, outer_dst) {
        return Err(pass(Reason::PassOtherProtocol));
    }
    if ports + 4 > end {
        return Err(pass(Reason::PassOtherProtocol));
    }
    let ports = header::<[u8; 4]>(ctx, ports).ok_or(pass(Reason::PassOtherProtocol))?;
    // SAFETY: bounds checked by `header`.
    let [s0, s1, d0, d1] = unsafe { *ports };
    key.src_port = u16::from_be_bytes([d0, d1]);
    key.dst_port = u16::from_be_bytes([s0, s1]);
    Ok(Flow {
        key,
        opens: false,
        closes: false,
        icmp: true,
        l3,
    })
}

/// The frame's length in bytes.
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<Flow, Verdict> {
    let ip = header::<Ipv4Hdr>(ctx, l3).ok_or(discard(Reason::DropTruncated))?;
    // SAFETY: bounds checked by `header`.
    let ip = unsafe { &*ip };
    let header_len = ipv4_header_len(ip.vihl).ok_or(discard(Reason::DropMalformed))?;
    let total = usize::from(u16::from_be_bytes(ip.tot_len));
    let end = ip_packet_end(l3, header_len, total, frame_len(ctx)).map_err(discard)?;
    if ipv4_is_fragment(ip.frags) {
        return Err(pass(Reason::PassFragment));
    }
    let mut key = FlowKey {
        proto: ip.proto,
        family: FAMILY_IPV4,
        ..FlowKey::default()
    };
    key.src_addr[..4].copy_from_slice(&ip.src_addr);
    key.dst_addr[..4].copy_from_slice(&ip.dst_addr);
    if !is_balanced_protocol(ip.proto) {
        // Off the TCP/UDP path: an ICMP error may be about a VIP's flow.
        if ip.proto == PROTO_ICMP {
            let l4 = l3 + header_len;
            return parse_icmp(ctx, (l3, l4, end), FAMILY_IPV4, &key.dst_addr);
        }
        return Err(pass(Reason::PassOtherProtocol));
    }
    if header_len > Ipv4Hdr::LEN {
        count(Reason::Ipv4Options);
    }
    parse_l4(ctx, (l3, l3 + header_len, end), key)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<Flow, Verdict> {
    let ip = header::<Ipv6Hdr>(ctx, l3).ok_or(discard(Reason::DropTruncated))?;
    // SAFETY: bounds checked by `header`.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(discard(Reason::DropMalformed));
    }
    let total = Ipv6Hdr::LEN + usize::from(u16::from_be_bytes(ip.payload_len));
    let end = ip_packet_end(l3, Ipv6Hdr::LEN, total, frame_len(ctx)).map_err(discard)?;
    let next = ip.next_hdr;
    if next == IPV6_NEXT_FRAGMENT {
        return Err(pass(Reason::PassFragment));
    }
    if ipv6_is_extension(next) {
        return Err(pass(Reason::PassUnsupported));
    }
    let l4 = l3 + Ipv6Hdr::LEN;
    if !is_balanced_protocol(next) {
        if next == PROTO_ICMPV6 {
            return parse_icmp(ctx, (l3, l4, end), FAMILY_IPV6, &ip.dst_addr);
        }
        return Err(pass(Reason::PassOtherProtocol));
    }
    let key = FlowKey {
        src_addr: ip.src_addr,
        dst_addr: ip.dst_addr,
        proto: next,
        family: FAMILY_IPV6,
        ..FlowKey::default()
    };
    parse_l4(ctx, (l3, l4, end), key)
}

/// The flow of a TCP or UDP packet whose IP header starts at `l3` and
/// its transport header at `l4`, in an IP packet that ends at `end`.
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    (l3, l4, end): (usize, usize, usize),
    mut key: FlowKey,
) -> Result<Flow, Verdict> {
    let (opens, closes) = if key.proto == PROTO_TCP {
        let tcp = header::<TcpHdr>(ctx, l4).ok_or(discard(Reason::DropTruncated))?;
        // SAFETY: bounds checked by `header`.
        let tcp = unsafe { &*tcp };
        // Byte 12 holds the data offset, byte 13 CWR..FIN.
        // SAFETY: within the 20 bytes checked above.
        let [offset, flags] = unsafe { *((tcp as *const TcpHdr as *const [u8; 2]).byte_add(12)) };
        if !tcp_header_fits(offset, l4, end) {
            return Err(discard(Reason::DropMalformed));
        }
        key.src_port = u16::from_be_bytes(tcp.source);
        key.dst_port = u16::from_be_bytes(tcp.dest);
        (tcp_opens_flow(flags), tcp_closes_flow(flags))
    } else {
        let udp = header::<UdpHdr>(ctx, l4).ok_or(discard(Reason::DropTruncated))?;
        // SAFETY: bounds checked by `header`.
        let udp = unsafe { &*udp };
        if !udp_length_fits(u16::from_be_bytes(udp.len), l4, end) {
            return Err(discard(Reason::DropMalformed));
        }
        key.src_port = u16::from_be_bytes(udp.src);
        key.dst_port = u16::from_be_bytes(udp.dst);
        (false, false)
    };
    Ok(Flow {
        key,
        opens,
        closes,
        icmp: false,
        l3,
    })
}

/// The VIP id, table id and table size of `key` in the index, probing from
/// its home slot until an empty slot or the probe bound.
#[inline(always)]
fn find_vip(
    index: &Array<VipSlot, { VIP_INDEX_SLOTS as usize }>,
    key: &VipKey,
) -> Option<(u32, u32, u32)> {
    let home = vip_home_slot(key);
    for probe in 0..VIP_INDEX_MAX_PROBES {
        let slot = index.get((home + probe) & (VIP_INDEX_SLOTS - 1))?;
        if slot.flags & VIP_SLOT_USED == 0 {
            return None;
        }
        if slot.key.same(key) {
            return Some((slot.vip_id, slot.table_id, slot.table_size));
        }
    }
    None
}

/// The VIP a flow is addressed to (its id, table id and table size): exact
/// port first, then the any-port VIP.
#[inline(always)]
fn lookup_vip(key: &FlowKey) -> Option<(u32, u32, u32)> {
    let index = VIP_INDEX.get(0)?;
    let mut vip = VipKey {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: key.proto,
        family: key.family,
    };
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
    (backend.flags & BACKEND_ACTIVE != 0 && backend.vip_id == vip_id).then_some(backend)
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
        // SAFETY: map values are valid while the program runs; the entry
        // is read only when the way's tag matches.
        let (meta, ways) = unsafe { (&*meta, &*ways) };
        (0..FLOW_WAYS)
            .find(|&way| WayWord(meta.ways[way]).tag() == tag && ways.entries[way].key.same(key))
    });
    Place {
        hash,
        tag,
        set,
        way,
    }
}

/// An established flow: the VIP, backend id and backend its entry names,
/// if the entry is whole (its check holds), has not idled past its
/// timeout, and its backend slot still serves the VIP with the same
/// backend (same generation). Refreshes the way's clock and marks.
#[inline(always)]
fn tracked_flow(
    place: &Place,
    flow: &Flow,
    config: &DataplaneConfig,
) -> Option<(u32, u32, &'static Backend)> {
    let ((meta, ways), way) = (place.set?, place.way?);
    // SAFETY: map values are valid while the program runs; `way` is a way
    // index found by `locate`.
    let (word, entry) = unsafe { (&mut (*meta).ways[way], &(*ways).entries[way]) };
    let state = *entry;
    let seen = WayWord(*word);
    if state.check != flow_check(place.tag, state.backend_id, state.vip_id, state.generation) {
        return None;
    }
    if seen.idle(config) {
        count(Reason::ConnExpired);
        return None;
    }
    let backend = live_backend(state.backend_id, state.vip_id)
        .filter(|backend| backend.generation == state.generation)?;
    // One word holds the tag, the clock and the marks: a racing writer on
    // another CPU replaces it whole, or this store does.
    let now = WayWord::new(
        place.tag,
        config.epoch,
        (seen.flags() & !FLOW_UNPROVEN) | closing(flow),
    );
    if now != seen {
        *word = now.0;
    }
    Some((state.vip_id, state.backend_id, backend))
}

#[inline(always)]
fn closing(flow: &Flow) -> u8 {
    if flow.closes { FLOW_CLOSING } else { 0 }
}

/// A way a new flow may take when no way holds its 5-tuple: an empty way,
/// else the longest-idle of the ways it may reclaim (unproven, closing, or
/// idle past their timeout), never an established flow's. The flag says
/// whether it evicts another flow. Reads only the set's way words.
#[inline(always)]
fn free_way(meta: &FlowMeta, config: &DataplaneConfig) -> Option<(usize, bool)> {
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

/// Records a new flow, unproven until its next packet, in its own way or
/// a free one; counts the insert, an eviction, or that it found no way.
#[inline(always)]
fn track(place: &Place, flow: &Flow, entry: FlowEntry, config: &DataplaneConfig) {
    let Some((meta, ways)) = place.set else {
        count(Reason::ConnInsertFailed);
        return;
    };
    // SAFETY: map values are valid while the program runs.
    let (meta, ways) = unsafe { (&mut *meta, &mut *ways) };
    let Some((way, evicts)) = place
        .way
        .map(|way| (way, false))
        .or_else(|| free_way(meta, config))
    else {
        count(Reason::ConnInsertFailed);
        return;
    };
    let entry = FlowEntry {
        key: flow.key,
        check: flow_check(place.tag, entry.backend_id, entry.vip_id, entry.generation),
        ..entry
    };
    let udp = if flow.key.proto == PROTO_TCP {
        0
    } else {
        FLOW_UDP
    };
    let word = WayWord::new(place.tag, config.epoch, FLOW_UNPROVEN | udp | closing(flow));
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
}

/// The backend the VIP's lookup table assigns to a new flow.
#[inline(always)]
fn table_backend(
    hash: u64,
    vip_id: u32,
    table_id: u32,
    size: u32,
) -> Option<(u32, u32, &'static Backend)> {
    let slot = table_slot(hash, size)?;
    let table = LOOKUP_TABLES.get(table_id)?;
    let backend_id = *table.get(slot)?;
    live_backend(backend_id, vip_id).map(|backend| (slot, backend_id, backend))
}

#[inline(always)]
fn add_traffic(counters: Option<*mut TrafficCounters>, bytes: u64, new_flow: bool) {
    if let Some(counters) = counters {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        let counters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += bytes;
        counters.new_flows += u64::from(new_flow);
    }
}

#[inline(always)]
fn forward(ctx: &XdpContext, flow: &Flow, trace: Trace) -> Verdict {
    if let Some(job) = trace {
        // SAFETY: per-CPU slot, only this CPU uses it while we run.
        unsafe {
            (*job).key = flow.key;
            (*job).has_flow = 1;
        }
    }
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
    let (vip_id, backend_id, backend, new_flow, hash, config) = match (tracked, looked_up) {
        (Some((vip_id, backend_id, backend)), Some((place, config))) => {
            count(Reason::ConnHit);
            trace_choice(trace, vip_id, backend_id, TRACE_VIA_CONNECTION, (0, 0));
            (vip_id, backend_id, backend, false, place.hash, config)
        }
        (_, looked_up) => {
            let Some((vip_id, table_id, table_size)) = lookup_vip(&flow.key) else {
                return pass(Reason::PassNotVip);
            };
            count(Reason::ConnMiss);
            trace_choice(trace, vip_id, 0, 0, (0, table_id));
            let (place, config) = match looked_up {
                Some(found) => found,
                None => {
                    let Some(config) = CONFIG.get(0) else {
                        return discard(Reason::DropNoBackend);
                    };
                    (locate(&flow.key, config), config)
                }
            };
            let Some((slot, backend_id, backend)) =
                table_backend(place.hash, vip_id, table_id, table_size)
            else {
                return discard(Reason::DropNoBackend);
            };
            trace_choice(trace, vip_id, backend_id, TRACE_VIA_TABLE, (slot, table_id));
            // An ICMP error follows its flow but never starts one.
            if !flow.icmp {
                let entry = FlowEntry {
                    backend_id,
                    vip_id,
                    generation: backend.generation,
                    ..FlowEntry::default()
                };
                track(&place, flow, entry, config);
            }
            (vip_id, backend_id, backend, !flow.icmp, place.hash, config)
        }
    };
    if flow.icmp {
        count(Reason::IcmpToBackend);
    }
    if backend.forward != FORWARD_L2_DSR {
        // The encapsulation program takes it from here, and counts it.
        if let Some(job) = ENCAP_JOBS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU uses it while we run.
            unsafe {
                *job = EncapJob {
                    backend: *backend,
                    backend_id,
                    vip_id,
                    l3: flow.l3 as u16,
                    family: flow.key.family,
                    flags: if new_flow { JOB_NEW_FLOW } else { 0 }
                        | if trace.is_some() { JOB_TRACED } else { 0 },
                    hash,
                };
                TAIL_CALLS.tail_call(ctx, TAIL_ENCAP);
            }
        }
        return discard(Reason::DropEncapFailed);
    }
    // Taken again here rather than kept from `process`: with no packet
    // pointer alive across the lookups, the verifier sees one state for
    // every parse path that reaches them, not one per path.
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return discard(Reason::DropTruncated);
    };
    // A copy first: assigning straight from the map value makes LLVM call
    // a byte-wise memmove (the two may overlap, as far as it knows).
    let (if_mac, mac) = (config.if_mac, backend.mac);
    // SAFETY: bounds checked by `header`.
    unsafe {
        (*eth).dst_addr = mac;
        (*eth).src_addr = if_mac;
    }
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    add_traffic(BACKEND_STATS.get_ptr_mut(backend_id), bytes, new_flow);
    add_traffic(VIP_STATS.get_ptr_mut(vip_id), bytes, new_flow);
    Verdict {
        action: xdp_action::XDP_TX,
        reason: Reason::Tx,
    }
}

/// Never reached: the verifier rejects any path into it. On the host (where
/// clippy checks this crate) std provides the handler.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
