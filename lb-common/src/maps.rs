//! The layout of every BPF map the XDP program shares with userspace: keys,
//! values, capacities and counter indexes. Both sides compile this one file, so
//! a layout change cannot reach only one of them.

/// Maximum number of VIPs.
pub const MAX_VIPS: u32 = 1024;
/// Lookup tables come in two banks of `MAX_VIPS`: an apply writes every
/// table into the bank not in use, then one swap of the VIP index (whose
/// slots name each VIP's table) makes all of them live together.
pub const TABLE_BANKS: u32 = 2;
/// Length of the outer lookup-table map: `table_id = bank * MAX_VIPS + vip_id`.
pub const LOOKUP_TABLE_IDS: u32 = TABLE_BANKS * MAX_VIPS;

/// The id of VIP `vip_id`'s table in bank `bank`: the index of its lookup
/// table, and of its `Admission` record and source-rule list.
#[inline(always)]
pub const fn table_id(bank: u32, vip_id: u32) -> u32 {
    bank * MAX_VIPS + vip_id
}

/// The version of every map layout in this file. `fulcrum` stamps it into
/// the pinned `META` map and refuses to adopt a pinned instance with
/// another: bump it with any change to a key, value or map here.
pub const LAYOUT_VERSION: u32 = 14;
/// Default number of entries of the backend maps (all VIPs together; slot
/// 0 means "none"). `fulcrum` sets the real size at load time from the
/// config's `max_backends`.
pub const MAX_BACKENDS: u32 = 65536;
/// Default capacity of the connection table, in entries.
pub const CONN_TABLE_ENTRIES: u32 = 262_144;
/// Ways of each connection-table set: a flow can sit in any of the 8 ways
/// of the one set its hash names.
pub const FLOW_WAYS: usize = 8;
/// Default number of connection-table sets (a power of two); `fulcrum`
/// sets the real one at load time from `connection_table_size`.
pub const CONN_TABLE_SETS: u32 = CONN_TABLE_ENTRIES / FLOW_WAYS as u32;
/// Lookup-table slot 0 holds the table's size M; slots 1..=M hold backend ids.
/// Keeping M inside the table means one atomic outer-map update swaps both.
pub const TABLE_HEADER_SLOTS: u32 = 1;
/// `BPF_F_INNER_MAP`: lets inner maps of one outer map differ in `max_entries`
/// (Linux 5.10), so VIPs may use different table sizes.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

/// `BPF_F_MMAPABLE`: lookup tables can be written and read back through
/// mmap instead of one syscall per slot (Linux 5.5).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Flags of every lookup table (the inner-map template and each table must
/// agree exactly).
pub const TABLE_MAP_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

/// Address family tags used in keys.
pub const FAMILY_IPV4: u8 = 4;
/// Address family tag for IPv6.
pub const FAMILY_IPV6: u8 = 6;
/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Key of the VIP map: destination address, port and protocol.
///
/// IPv4 addresses occupy the first four bytes of `addr`, the rest are zero.
/// `port` is in host byte order; port 0 is the "any port" VIP that matches
/// when no exact-port VIP does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// Destination address in network byte order.
    pub addr: [u8; 16],
    /// Destination port (host order); 0 = any port.
    pub port: u16,
    /// IP protocol number (TCP or UDP).
    pub proto: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
}

impl VipKey {
    /// Key equality in five word compares (no `memcmp`, which BPF lacks).
    #[inline(always)]
    pub fn same(&self, other: &VipKey) -> bool {
        let word = |k: &VipKey, i: usize| {
            u32::from_ne_bytes([k.addr[i], k.addr[i + 1], k.addr[i + 2], k.addr[i + 3]])
        };
        word(self, 0) == word(other, 0)
            && word(self, 4) == word(other, 4)
            && word(self, 8) == word(other, 8)
            && word(self, 12) == word(other, 12)
            && self.port == other.port
            && self.proto == other.proto
            && self.family == other.family
    }
}

/// Slots of the VIP index: an open-addressed table, a power of two at most a
/// quarter full, so that a miss (non-VIP traffic) usually ends at slot one.
pub const VIP_INDEX_SLOTS: u32 = 4 * MAX_VIPS;
const _: () = assert!(VIP_INDEX_SLOTS.is_power_of_two());

/// A VIP sits at most this many slots after its home slot; userspace refuses
/// an index it cannot lay out within the bound.
pub const VIP_INDEX_MAX_PROBES: u32 = 16;
/// The slot holds a VIP.
pub const VIP_SLOT_USED: u32 = 1;
/// The VIP's `Admission` has flags: a packet of a new flow reads it.
pub const VIP_SLOT_ADMIT: u32 = 2;
/// The VIP routes QUIC short-header packets by the server ID in their
/// destination connection ID (its `QuicRoute` says where it is).
pub const VIP_SLOT_QUIC: u32 = 4;

/// One slot of the VIP index. The index is a plain array, so the kernel
/// inlines each probe; userspace swaps the whole index atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    /// The VIP's address, port and protocol.
    pub key: VipKey,
    /// The VIP's stable id: its counters, and what its flows' connection
    /// entries and backend slots name.
    pub vip_id: u32,
    /// `VIP_SLOT_USED` when the slot holds a VIP.
    pub flags: u32,
    /// Index of its lookup table in the outer map (`bank * MAX_VIPS + vip_id`).
    pub table_id: u32,
    /// That table's size M (also in its slot 0): with it here, a new flow
    /// reads one slot of the table, one inner-map lookup instead of two.
    pub table_size: u32,
}

/// A filter of the VIPs' addresses (one bit per address hash, 512 bits in
/// one cache line): a packet to an address whose bit is clear is for no
/// VIP, and passes without a connection-table lookup or a VIP probe.
/// Userspace keeps it a superset of the index in force (`VIP_FILTER`).
/// The QUIC VIPs' filter holds their endpoints (address and port) instead
/// (`insert_endpoint`, `may_hold_endpoint`).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipFilter {
    /// The bits.
    pub bits: [u64; 8],
}

impl VipFilter {
    /// The bit of `addr` (network order, IPv4 in the first 4 bytes) and
    /// `port` (0 for the address alone): the top 9 bits of a
    /// multiplicative hash of its four words and the port folded.
    #[inline(always)]
    fn bit(addr: &[u8; 16], port: u16) -> u32 {
        let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        let folded = word(0)
            ^ word(4).rotate_left(8)
            ^ word(8).rotate_left(16)
            ^ word(12).rotate_left(24)
            ^ u32::from(port).wrapping_mul(0x0001_0001);
        folded.wrapping_mul(0x9e37_79b1) >> 23
    }

    /// The word of `bits` and the mask within it of the bit of `addr`
    /// and `port`.
    #[inline(always)]
    fn position(addr: &[u8; 16], port: u16) -> (usize, u64) {
        let bit = Self::bit(addr, port);
        ((bit / 64) as usize & 7, 1 << (bit % 64))
    }

    /// Whether a VIP may have address `addr`.
    #[inline(always)]
    pub fn may_hold(&self, addr: &[u8; 16]) -> bool {
        self.may_hold_endpoint(addr, 0)
    }

    /// Adds `addr`.
    pub fn insert(&mut self, addr: &[u8; 16]) {
        self.insert_endpoint(addr, 0);
    }

    /// Whether a VIP may have address `addr` and port `port` (as the flow
    /// key holds it).
    #[inline(always)]
    pub fn may_hold_endpoint(&self, addr: &[u8; 16], port: u16) -> bool {
        let (word, mask) = Self::position(addr, port);
        self.bits[word] & mask != 0
    }

    /// Adds the endpoint of `addr` and `port`.
    pub fn insert_endpoint(&mut self, addr: &[u8; 16], port: u16) {
        let (word, mask) = Self::position(addr, port);
        self.bits[word] |= mask;
    }

    /// Both filters' addresses.
    pub fn union(self, other: VipFilter) -> VipFilter {
        let mut bits = self.bits;
        for (bit, other) in bits.iter_mut().zip(other.bits) {
            *bit |= other;
        }
        VipFilter { bits }
    }
}

/// The value of the userspace-only `META` map (one entry): what `fulcrum`
/// needs to know before it adopts a pinned instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// `LAYOUT_VERSION` of the `fulcrum` that created the maps.
    pub layout_version: u32,
    /// The table bank in use.
    pub bank: u32,
    /// The config generation in force.
    pub generation: u64,
}

/// The backend slot is in use.
pub const BACKEND_ACTIVE: u16 = 1;

/// How a backend slot's frames leave: L2 direct server return (the frame
/// as it came, to the backend's MAC).
pub const FORWARD_L2_DSR: u8 = 0;
/// IP in IP: an outer IPv4 (protocol 4 or 41) or IPv6 (next header 4 or
/// 41) header to the backend's address, sent to the next hop's MAC.
pub const FORWARD_IPIP: u8 = 1;
/// GUE (variant 0): outer IP, UDP to `Encapsulation::gue_port` whose source
/// port carries the flow hash, a 4-byte GUE header, the packet.
pub const FORWARD_GUE: u8 = 2;

/// Bytes a forwarding mode (`FORWARD_*`) puts in front of a packet whose
/// outer header is of `family`: the outer IP header, and for GUE a UDP
/// header and a 4-byte GUE header.
pub const fn encap_overhead(family: u8, forward: u8) -> usize {
    let ip = if family == FAMILY_IPV4 { 20 } else { 40 };
    match forward {
        FORWARD_GUE => ip + 8 + 4,
        FORWARD_IPIP => ip,
        _ => 0,
    }
}

/// Value of the backend array. Index 0 is never used ("no backend").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Destination MAC written into forwarded frames: the backend's (L2
    /// DSR) or the next hop's towards it (encapsulation).
    pub mac: [u8; 6],
    /// `BACKEND_ACTIVE` when the slot is in use.
    pub flags: u16,
    /// The VIP this slot serves; a connection-table entry is only honoured
    /// while its backend slot still belongs to the flow's VIP.
    pub vip_id: u32,
    /// Bumped each time the slot is given to a new backend; a connection
    /// entry is honoured only while it names the slot's current generation,
    /// so a reused slot never inherits another backend's flows.
    pub generation: u32,
    /// `FORWARD_*`: how frames reach this backend.
    pub forward: u8,
    /// The family of `addr` (`FAMILY_IPV4` or `FAMILY_IPV6`): the outer
    /// header's, when encapsulating.
    pub family: u8,
    /// Reserved; zero.
    pub pad: [u8; 2],
    /// The backend's address (IPv4 in the first four bytes): the outer
    /// destination, when encapsulating.
    pub addr: [u8; 16],
}

/// `EncapJob::flags`: the packet is traced (`TRACE_JOBS` holds its job).
/// The other bits are the packet's `TALLY_*` bits, which the
/// encapsulation program counts once the packet goes out.
pub const JOB_TRACED: u8 = 0x80;

/// What the XDP program hands its encapsulation program, which it
/// tail-calls (so that each has a whole BPF stack of its own), about the
/// packet at hand: one per CPU, the value of `ENCAP_JOBS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncapJob {
    /// The backend chosen, as its slot read.
    pub backend: Backend,
    /// Its slot.
    pub backend_id: u32,
    /// The VIP.
    pub vip_id: u32,
    /// Where the IP header starts in the frame.
    pub l3: u16,
    /// The family of that IP header.
    pub family: u8,
    /// `JOB_*` flags.
    pub flags: u8,
    /// The flow's hash: the entropy of the outer header.
    pub hash: u64,
}

/// `TAIL_CALLS` index of the encapsulation program.
pub const TAIL_ENCAP: u32 = 0;
/// `TAIL_CALLS` index of the trace program.
pub const TAIL_TRACE: u32 = 1;
/// `TAIL_CALLS` index of the traced copy of the XDP program's path.
pub const TAIL_TRACED: u32 = 2;
/// `TAIL_CALLS` index of the QUIC program: the path of a QUIC VIP's
/// packets, which tries the server ID first.
pub const TAIL_QUIC: u32 = 3;
/// `TAIL_CALLS` index of the XDP program itself, which the QUIC program
/// hands back a packet that its server ID does not route.
pub const TAIL_MAIN: u32 = 4;
/// How many `TAIL_CALLS` entries there are.
pub const TAIL_SLOTS: u32 = 5;

/// What `fulcrum_xdp` tells `fulcrum_quic` about the UDP packet it hands
/// over (its flow; a UDP packet neither opens, closes nor resets one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicJob {
    /// The flow's 5-tuple.
    pub key: FlowKey,
    /// Where its IP header starts.
    pub l3: u16,
    /// 1 when the trace job holds its decision so far.
    pub traced: u8,
    /// 1 when the QUIC program hands the packet back for the 4-tuple
    /// path. The XDP program clears it as it reads it, so that it hands
    /// over the same packet only once.
    pub fallback: u8,
    /// Reserved; zero (the key's alignment).
    pub pad: u32,
}

/// `TraceControl::vip_id` that matches every VIP (and traffic of none).
pub const TRACE_ANY_VIP: u32 = u32::MAX;

/// The most bytes of a packet one trace event carries. 256 holds every
/// header the data plane reads or writes in the worst case, an Ethernet
/// header with a VLAN tag, an outer IPv6 header, GUE (UDP and its own
/// header) and an inner IPv6 header and TCP with full options (170
/// bytes), with the start of the payload after it; a record of that size
/// (344 bytes) still leaves the 1 MiB ring room for about 3 seconds of
/// events at the default cap.
pub const TRACE_SNAP_MAX: u32 = 256;

/// What `fulcrum trace` asks the data plane to report: off while
/// `expires_ns` is 0. The controller renews the lease while its client
/// listens; once `bpf_ktime_get_ns()` passes it, the trace program turns
/// tracing off by itself, so a dead controller or client cannot leave it
/// on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceControl {
    /// When tracing stops (the kernel's monotonic clock, ns); 0: off.
    pub expires_ns: u64,
    /// Only flows from this prefix (IPv4 in the first four bytes)...
    pub src_addr: [u8; 16],
    /// ...of this many bits (0: any source).
    pub src_prefix_len: u8,
    /// ...and this family (0: any).
    pub src_family: u8,
    /// Reserved; zero.
    pub pad: [u8; 2],
    /// Only this VIP (`TRACE_ANY_VIP`: any packet).
    pub vip_id: u32,
    /// Only flows to this backend slot (0: any).
    pub backend_id: u32,
    /// One matching packet in `sample` is reported (0 and 1: every one).
    pub sample: u32,
    /// At most this many events a second, per CPU.
    pub per_cpu_per_s: u32,
    /// Each event carries the packet's first `snap_len` bytes (0: none;
    /// at most `TRACE_SNAP_MAX`).
    pub snap_len: u32,
}

impl TraceControl {
    /// Whether `event` is one the control asks for (its lease aside).
    #[inline(always)]
    pub fn matches(&self, event: &TraceEvent) -> bool {
        if self.vip_id != TRACE_ANY_VIP && event.vip_id != self.vip_id {
            return false;
        }
        if self.backend_id != 0 && event.backend_id != self.backend_id {
            return false;
        }
        if self.src_family == 0 {
            return true;
        }
        if event.has_flow == 0 || event.key.family != self.src_family {
            return false;
        }
        let bits = self.src_prefix_len as usize;
        let mut i = 0;
        while i < 16 {
            let taken = bits.saturating_sub(i * 8).min(8);
            let mask = (0xff_u16 << (8 - taken)) as u8;
            if (event.key.src_addr[i] ^ self.src_addr[i]) & mask != 0 {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// The `VIP_FILTER` entry that holds the QUIC VIPs' addresses (entry 0
/// holds every VIP's).
pub const QUIC_FILTER: u32 = 1;
/// The longest server ID (QUIC-LB: 1 to 15 octets).
pub const QUIC_SERVER_ID_MAX: u8 = 15;
/// The longest connection ID (RFC 9000).
pub const QUIC_CID_MAX: u8 = 20;
/// The config rotation codepoint of a connection ID no load balancer can
/// route (QUIC-LB: `0b111`).
pub const QUIC_UNROUTABLE: u8 = 0b111;
/// Server IDs of one bank, over every QUIC VIP.
pub const MAX_QUIC_SERVERS: u32 = 32_768;

/// How a QUIC VIP's servers encode their ID in the connection IDs they
/// issue, in the plaintext form of QUIC-LB (draft-ietf-quic-load-balancers
/// -21): the CID's first octet carries the config rotation codepoint in its
/// top three bits, and the server ID follows at `offset`, `len` octets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuicRoute {
    /// The config rotation codepoint (0 to 6) of the CIDs this VIP routes.
    pub config_id: u8,
    /// Where the server ID starts in the CID, in octets (at least 1: the
    /// first octet is the config's).
    pub offset: u8,
    /// The server ID's length in octets (1 to `QUIC_SERVER_ID_MAX`).
    pub len: u8,
    /// Reserved; zero.
    pub pad: u8,
}

/// Bytes of a QUIC packet the data plane reads for the server ID, from the
/// ID's first octet: every valid short-header packet holds them (header
/// protection samples 16 bytes past the packet number, which follows the
/// CID), so a packet without them is no QUIC packet.
pub const QUIC_WINDOW: usize = 16;

/// The `n` low-order bytes of a little-endian word set, the others clear.
#[inline(always)]
const fn low_bytes(n: u8) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (n as u32 * 8)) - 1
    }
}

impl QuicRoute {
    /// What a short-header packet whose CID starts with `first` says, by
    /// its config rotation codepoint: `None` when it is this VIP's config,
    /// so the server ID decides.
    #[inline(always)]
    pub const fn judge(&self, first: u8) -> Option<QuicOutcome> {
        let codepoint = first >> 5;
        if codepoint == QUIC_UNROUTABLE {
            Some(QuicOutcome::Unroutable)
        } else if codepoint != self.config_id {
            Some(QuicOutcome::OtherConfig)
        } else {
            None
        }
    }

    /// The server ID in `window` (the `QUIC_WINDOW` bytes from the ID's
    /// first octet), as the server-ID map keys it: its `len` octets, zeros
    /// after.
    #[inline(always)]
    pub fn server_id(&self, window: &[u8; QUIC_WINDOW]) -> [u8; QUIC_WINDOW] {
        let word = |at: usize| {
            u64::from_le_bytes([
                window[at],
                window[at + 1],
                window[at + 2],
                window[at + 3],
                window[at + 4],
                window[at + 5],
                window[at + 6],
                window[at + 7],
            ])
        };
        let low = word(0) & low_bytes(self.len);
        let high = word(8) & low_bytes(self.len.saturating_sub(8));
        let mut id = [0u8; QUIC_WINDOW];
        let (head, tail) = id.split_at_mut(8);
        head.copy_from_slice(&low.to_le_bytes());
        tail.copy_from_slice(&high.to_le_bytes());
        id
    }
}

/// A server-ID map key: the VIP's list (its table id in a bank, as the
/// source rules' are) and the server ID, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuicServerKey {
    /// `table_id(bank, vip_id)`.
    pub list: u32,
    /// The server ID (`QuicRoute::server_id`).
    pub id: [u8; QUIC_WINDOW],
}

/// What a QUIC VIP's packet told of its server: the index of its
/// `QuicCounters` entry.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuicOutcome {
    /// A short header naming a server that serves the VIP: sent there.
    Routed = 0,
    /// A long header (Initial, 0-RTT, Handshake, Retry): the connection
    /// table and the 4-tuple hash, as every UDP flow.
    LongHeader = 1,
    /// A short header whose CID says it is unroutable (codepoint `0b111`):
    /// the connection table and the 4-tuple hash.
    Unroutable = 2,
    /// A short header of another config rotation codepoint: the same.
    OtherConfig = 3,
    /// A short header whose server ID no backend of the VIP has: the same.
    UnknownServer = 4,
    /// A short header whose server ID's backend is down or gone: the same.
    ServerDown = 5,
    /// Too short to hold a server ID: the same.
    Truncated = 6,
}

impl QuicOutcome {
    /// Every outcome, in index order.
    pub const ALL: [QuicOutcome; 7] = [
        QuicOutcome::Routed,
        QuicOutcome::LongHeader,
        QuicOutcome::Unroutable,
        QuicOutcome::OtherConfig,
        QuicOutcome::UnknownServer,
        QuicOutcome::ServerDown,
        QuicOutcome::Truncated,
    ];
    /// Length of `QuicCounters::packets`.
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            QuicOutcome::Routed => "routed",
            QuicOutcome::LongHeader => "long_header",
            QuicOutcome::Unroutable => "unroutable",
            QuicOutcome::OtherConfig => "other_config",
            QuicOutcome::UnknownServer => "unknown_server",
            QuicOutcome::ServerDown => "server_down",
            QuicOutcome::Truncated => "truncated",
        }
    }

    /// The outcome of index `index`.
    pub fn from_index(index: u32) -> Option<QuicOutcome> {
        Self::ALL.get(index as usize).copied()
    }
}

/// A QUIC VIP's packets by `QuicOutcome` (per CPU in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuicCounters {
    /// Packets, by `QuicOutcome`.
    pub packets: [u64; QuicOutcome::COUNT],
}

/// Where a traced packet's backend came from.
pub const TRACE_VIA_NONE: u8 = 0;
/// Its flow's connection-table entry.
pub const TRACE_VIA_CONNECTION: u8 = 1;
/// A slot of its VIP's lookup table.
pub const TRACE_VIA_TABLE: u8 = 2;
/// The QUIC server ID in its destination connection ID.
pub const TRACE_VIA_QUIC: u8 = 3;

/// One decision of the data plane, as `fulcrum trace` reports it: the
/// value the XDP program fills as the packet goes (one per CPU, in
/// `TRACE_JOBS`), and the event it sends (`TRACE_EVENTS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// When (the kernel's monotonic clock, ns); set when sent.
    pub time_ns: u64,
    /// The flow (zero when the packet was not parsed that far).
    pub key: FlowKey,
    /// The 802.1Q tag's VLAN id (0: untagged).
    pub vlan: u16,
    /// 1 when `key` holds the packet's flow.
    pub has_flow: u8,
    /// `TRACE_VIA_*`.
    pub via: u8,
    /// The XDP action.
    pub action: u32,
    /// The verdict's `Reason`.
    pub reason: u32,
    /// The VIP (`TRACE_ANY_VIP` when none was found).
    pub vip_id: u32,
    /// The backend slot chosen (0: none).
    pub backend_id: u32,
    /// The lookup-table slot, when `via` is `TRACE_VIA_TABLE`, as the
    /// kernel's table holds it and `fulcrum explain` names it (after the
    /// `TABLE_HEADER_SLOTS` header).
    pub slot: u32,
    /// The lookup table's id (`bank * MAX_VIPS + vip_id`), when `via` is
    /// `TRACE_VIA_TABLE`: its bank tells the generation.
    pub table_id: u32,
    /// The CPU that handled the packet.
    pub cpu: u32,
    /// The packet's length as it left the data plane (after the MAC
    /// rewrite or the encapsulation; as received for a pass or a drop).
    pub packet_len: u32,
    /// How many of its first bytes follow the event (a `TracePacket`);
    /// 0: the record is the event alone.
    pub captured: u32,
    /// For a packet to a QUIC VIP, its `QuicOutcome` plus one; else 0.
    pub quic: u32,
    /// Reserved; zero.
    pub pad: u32,
}

/// The record the trace program sends while `TraceControl::snap_len` is
/// not 0: the event, then the packet's first `event.captured` bytes (the
/// rest of `bytes` is not written). Reserved in the ring buffer and filled
/// there: it is too big for the BPF stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracePacket {
    /// The decision.
    pub event: TraceEvent,
    /// The packet's first bytes.
    pub bytes: [u8; TRACE_SNAP_MAX as usize],
}

/// The trace program's own state on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceState {
    /// Matching packets seen (for sampling).
    pub seen: u64,
    /// The second (`time_ns / 1e9`) `sent` counts in.
    pub second: u64,
    /// Events sent in that second.
    pub sent: u32,
    /// Reserved; zero.
    pub pad: u32,
}

/// `TRACE_STATS` indexes: what became of matching packets.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceOutcome {
    /// Sent to the ring buffer.
    Sent = 0,
    /// Left out by the sampling.
    Sampled = 1,
    /// Dropped: the per-second cap was reached.
    Capped = 2,
    /// Dropped: the ring buffer was full (the reader fell behind).
    RingFull = 3,
}

impl TraceOutcome {
    /// How many outcomes there are.
    pub const COUNT: u32 = 4;
}

/// Addresses a decapsulating host takes tunnelled packets for.
pub const DECAP_ADDRESSES: usize = 8;

/// The decapsulation program's settings (`fulcrum decap attach`): which
/// outer destinations are this host's, and GUE's port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// This host's IPv4 addresses; the first `count4` count.
    pub v4: [[u8; 4]; DECAP_ADDRESSES],
    /// This host's IPv6 addresses; the first `count6` count.
    pub v6: [[u8; 16]; DECAP_ADDRESSES],
    /// How many of `v4` are set.
    pub count4: u8,
    /// How many of `v6` are set.
    pub count6: u8,
    /// GUE's UDP port (host order); 0 takes no GUE.
    pub gue_port: u16,
}

/// Why the decapsulation program did what it did with a frame: an index
/// of its per-CPU counters. Every frame moves exactly one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapReason {
    /// An IP-in-IP or GUE packet for this host: its inner packet passed on.
    Decapsulated = 0,
    /// Not IP in IP or GUE: passed untouched.
    PassNotTunnel = 1,
    /// A tunnelled packet for another address: passed untouched.
    PassNotOurs = 2,
    /// A fragment of a tunnelled packet (the stack reassembles it, and
    /// nothing decapsulates it then): passed.
    PassFragment = 3,
    /// GUE with a control message or extension words, or an inner packet
    /// of neither family: passed.
    PassUnsupported = 4,
    /// A header cut short: dropped.
    DropTruncated = 5,
    /// The kernel refused to move the frame's start: dropped.
    DropFailed = 6,
}

impl DecapReason {
    /// Every reason, in index order.
    pub const ALL: [DecapReason; 7] = [
        DecapReason::Decapsulated,
        DecapReason::PassNotTunnel,
        DecapReason::PassNotOurs,
        DecapReason::PassFragment,
        DecapReason::PassUnsupported,
        DecapReason::DropTruncated,
        DecapReason::DropFailed,
    ];

    /// Length of the counter array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Its name in output.
    pub const fn name(self) -> &'static str {
        match self {
            DecapReason::Decapsulated => "decapsulated",
            DecapReason::PassNotTunnel => "pass_not_tunnel",
            DecapReason::PassNotOurs => "pass_not_ours",
            DecapReason::PassFragment => "pass_fragment",
            DecapReason::PassUnsupported => "pass_unsupported",
            DecapReason::DropTruncated => "drop_truncated",
            DecapReason::DropFailed => "drop_failed",
        }
    }
}

/// Key of the connection table and input of the flow hash: the 5-tuple.
///
/// Addresses are in network byte order (IPv4 in the first four bytes), ports
/// in host order.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src_addr: [u8; 16],
    /// Destination address.
    pub dst_addr: [u8; 16],
    /// Source port (host order).
    pub src_port: u16,
    /// Destination port (host order).
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// Always zero, so that keys compare and hash byte for byte.
    pub pad: [u8; 2],
}

impl FlowKey {
    /// The key as five words, for comparing without `memcmp`.
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: FlowKey is 40 bytes of plain integers with no padding
        // (the layout test checks the size), aligned to 8.
        unsafe { core::mem::transmute(*self) }
    }

    /// Key equality in five word compares.
    #[inline(always)]
    pub fn same(&self, other: &FlowKey) -> bool {
        let (a, b) = (self.words(), other.words());
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
    }
}

/// The client sent a FIN or RST on the flow: it is closing, and no longer
/// counts as active (its entry stays, so late segments still reach its
/// backend, until a new flow needs the way).
pub const FLOW_CLOSING: u8 = 1;
/// The flow has sent only one packet so far (a SYN, or the first packet of
/// a flow the table did not know). A spoofed flood is made of such flows:
/// they may only take free, idle, closing or other unproven ways, never one
/// of an established flow. The flow's second packet proves it.
pub const FLOW_UNPROVEN: u8 = 2;
/// The flow is not TCP (it idles out after `udp_idle_s`).
pub const FLOW_UDP: u8 = 4;
/// The flow was recorded from its SYN: its second packet completes a
/// handshake (a flow recorded from a later packet proves nothing).
pub const FLOW_SYN: u8 = 8;

/// Bits of `DataplaneConfig::epoch` a way records: ages are taken modulo
/// 2^24 seconds (194 days), far beyond any idle timeout.
pub const FLOW_SEEN_MASK: u32 = (1 << 24) - 1;

/// One way's word in `FlowMeta`: the flow's tag (bits 0–31, never zero in
/// a used way), the epoch it last sent a packet (bits 32–55) and its
/// `FLOW_*` flags (bits 56–63). One word, so it is read and written whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WayWord(pub u64);

impl WayWord {
    /// The word of a way holding a flow.
    #[inline(always)]
    pub const fn new(tag: u32, seen: u32, flags: u8) -> WayWord {
        WayWord(tag as u64 | (((seen & FLOW_SEEN_MASK) as u64) << 32) | ((flags as u64) << 56))
    }

    /// The flow's tag; 0 for an empty way.
    #[inline(always)]
    pub const fn tag(self) -> u32 {
        self.0 as u32
    }

    /// Seconds since the flow last sent a packet, at epoch `now`.
    #[inline(always)]
    pub const fn age(self, now: u32) -> u32 {
        now.wrapping_sub(self.seen()) & FLOW_SEEN_MASK
    }

    /// Whether the flow has idled past its protocol's timeout at `config`'s
    /// epoch: its entry has expired.
    #[inline(always)]
    pub const fn idle(self, config: &DataplaneConfig) -> bool {
        self.age(config.epoch) > config.idle_limit(self.flags())
    }

    /// The low 24 bits of the epoch it last sent a packet.
    #[inline(always)]
    pub const fn seen(self) -> u32 {
        ((self.0 >> 32) as u32) & FLOW_SEEN_MASK
    }

    /// Its `FLOW_*` flags.
    #[inline(always)]
    pub const fn flags(self) -> u8 {
        (self.0 >> 56) as u8
    }
}

/// The small half of a connection-table set: one word per way, in one
/// cache line. A new flow reads only this line (of a map an eighth the
/// size of the entries', whose pages the TLB can hold) to find its way; a
/// hit updates only its word.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowMeta {
    /// `WayWord`s.
    pub ways: [u64; FLOW_WAYS],
}

/// One way's flow and the backend it is pinned to. One cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The flow's 5-tuple.
    pub key: FlowKey,
    /// Backend slot the flow is pinned to.
    pub backend_id: u32,
    /// VIP the flow belongs to.
    pub vip_id: u32,
    /// The backend slot's generation when the flow was pinned to it.
    pub generation: u32,
    /// `flow_hash::flow_check` of the way's tag and this entry's backend,
    /// VIP and generation.
    pub check: u32,
    /// `DataplaneConfig::epoch` when the flow was recorded (not covered by
    /// `check`: a torn value misfiles one early reset at most).
    pub born: u32,
    /// Reserved; zero.
    pub pad: u32,
}

/// The large half of a connection-table set: its ways' entries. A writer
/// clears the way's word, writes the entry, then sets the word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowWays {
    /// The entries.
    pub entries: [FlowEntry; FLOW_WAYS],
}

/// A forwarded packet's `TALLY_*` bits: what it adds to its backend's and
/// VIP's `TrafficCounters` beyond one packet and its bytes.
pub type Tally = u8;
/// It was assigned through the lookup table (`new_flows`).
pub const TALLY_NEW_FLOW: Tally = 1;
/// A SYN whose flow the connection table recorded (`syns`).
pub const TALLY_SYN: Tally = 2;
/// A SYN again for a flow recorded from its SYN, to the same backend,
/// with no second packet from the client yet (`syn_retries`).
pub const TALLY_SYN_RETRY: Tally = 4;
/// The second packet of a flow recorded from its SYN, neither a RST nor
/// an ICMP error: the client completed the handshake (`handshakes`).
pub const TALLY_HANDSHAKE: Tally = 8;
/// The client's first RST on a handshaken flow within `EARLY_RESET_S` of
/// its SYN (`early_resets`).
pub const TALLY_EARLY_RESET: Tally = 16;
/// Every `TALLY_*` bit: `EncapJob::flags` carries them beside `JOB_TRACED`.
pub const TALLY_ALL: Tally =
    TALLY_NEW_FLOW | TALLY_SYN | TALLY_SYN_RETRY | TALLY_HANDSHAKE | TALLY_EARLY_RESET;
const _: () = assert!(TALLY_ALL & JOB_TRACED == 0);
/// Seconds after its SYN within which a client's RST counts as early.
pub const EARLY_RESET_S: u32 = 2;

/// Traffic counters kept per backend and per VIP (per CPU in the kernel).
/// Besides the traffic, the handshake counters: what the client's side of
/// each TCP flow says of the backend's answers (passive health).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (whole frames as received).
    pub bytes: u64,
    /// Flows assigned through the lookup table (SYNs and connection-table misses).
    pub new_flows: u64,
    /// TCP flows recorded from their SYN: handshakes attempted.
    pub syns: u64,
    /// SYNs retransmitted to the backend of their recorded, unanswered flow.
    pub syn_retries: u64,
    /// Handshakes completed: the client's second packet on a flow recorded
    /// from its SYN.
    pub handshakes: u64,
    /// Handshaken flows the client reset within `EARLY_RESET_S`.
    pub early_resets: u64,
}

impl TrafficCounters {
    /// Counts one forwarded frame of `bytes` whose `TALLY_*` bits are
    /// `tally`. The handshake fields are written only when a bit asks.
    #[inline(always)]
    pub fn count(&mut self, bytes: u64, tally: Tally) {
        self.packets += 1;
        self.bytes += bytes;
        if tally != 0 {
            self.new_flows += u64::from(tally & TALLY_NEW_FLOW != 0);
            self.syns += u64::from(tally & TALLY_SYN != 0);
            self.syn_retries += u64::from(tally & TALLY_SYN_RETRY != 0);
            self.handshakes += u64::from(tally & TALLY_HANDSHAKE != 0);
            self.early_resets += u64::from(tally & TALLY_EARLY_RESET != 0);
        }
    }

    /// The counters of `words`, the fields in their order in memory.
    pub const fn from_words(words: [u64; 7]) -> Self {
        Self {
            packets: words[0],
            bytes: words[1],
            new_flows: words[2],
            syns: words[3],
            syn_retries: words[4],
            handshakes: words[5],
            early_resets: words[6],
        }
    }
}

/// Where encapsulated frames come from and how large they may be.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encapsulation {
    /// The outer IPv4 source: this prefix, with the bits `source4_host`
    /// sets taken from the flow hash (so the backend's RSS and any ECMP on
    /// the way spread the flows).
    pub source4: [u8; 4],
    /// The host bits of `source4`'s prefix.
    pub source4_host: [u8; 4],
    /// The outer IPv6 source prefix.
    pub source6: [u8; 16],
    /// The host bits of `source6`'s prefix.
    pub source6_host: [u8; 16],
    /// The largest IP packet the egress link carries: an encapsulated
    /// packet that would exceed it is answered with a too-big error (or
    /// dropped, an IPv4 packet without DF).
    pub mtu: u16,
    /// GUE's UDP destination port (host order).
    pub gue_port: u16,
}

/// Interface-wide settings the XDP program reads from its config map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Source MAC written into forwarded frames: the attached interface's.
    pub if_mac: [u8; 6],
    /// Reserved; zero.
    pub pad: [u8; 2],
    /// A coarse clock `fulcrum` advances every second (seconds of the
    /// host's monotonic clock): each way records it in its `WayWord`.
    pub epoch: u32,
    /// The connection table's number of sets minus one (a power of two
    /// minus one); `Dataplane::set_config` fills it from the map.
    pub flow_set_mask: u32,
    /// Seconds after which an idle TCP flow's entry expires: its next
    /// packet is hashed again, and a new flow may take its way.
    pub tcp_idle_s: u32,
    /// The same for UDP.
    pub udp_idle_s: u32,
    /// The flow hash's secret seed.
    pub seed: crate::flow_hash::FlowSeed,
    /// Outer headers of encapsulated frames.
    pub encap: Encapsulation,
    /// The table bank in force: an established flow's VIP finds its
    /// `Admission` there.
    pub bank: u8,
    /// 1 when some VIP has an `Admission` with flags: established flows
    /// read theirs only then.
    pub admission: u8,
    /// Reserved; zero.
    pub reserved: [u8; 2],
}

impl DataplaneConfig {
    /// Seconds a flow with `FLOW_*` flags `flags` may idle before its entry
    /// expires.
    #[inline(always)]
    pub const fn idle_limit(&self, flags: u8) -> u32 {
        if flags & FLOW_UDP != 0 {
            self.udp_idle_s
        } else {
            self.tcp_idle_s
        }
    }
}

/// Source rules (prefixes, either family) the data plane holds in each
/// bank: an apply writes a VIP's rules into the bank not in use, so each
/// source trie holds up to twice this many entries.
pub const MAX_SOURCE_RULES: u32 = 32_768;
/// Slots of the per-rule drop counters, 1 to this (0 is never a deny
/// rule's): a deny rule keeps its slot while either bank holds it, so the
/// two banks together never need more.
pub const SOURCE_RULE_SLOTS: u32 = TABLE_BANKS * MAX_SOURCE_RULES;

/// `Admission.flags`: the VIP has source rules; look its sources up in
/// the tries.
pub const ADMIT_SOURCES: u32 = 1;
/// `Admission.flags`: the VIP's rules include allow rules, so a source no
/// rule covers is refused (`AdmissionDrop::NotAllowed`).
pub const ADMIT_ALLOW_LIST: u32 = 2;

/// `Admission.flags`: the VIP caps its new flows (`new_flows`).
pub const ADMIT_FLOW_LIMIT: u32 = 4;
/// `Admission.flags`: the VIP caps its packets (`packets`).
pub const ADMIT_PACKET_LIMIT: u32 = 8;
/// `Admission.flags`: the VIP caps each source prefix's new flows
/// (`source_new_flows`).
pub const ADMIT_SOURCE_LIMIT: u32 = 16;
/// `Admission.flags`: any of the limits.
pub const ADMIT_LIMITS: u32 = ADMIT_FLOW_LIMIT | ADMIT_PACKET_LIMIT | ADMIT_SOURCE_LIMIT;

/// Buckets of each row of `SOURCE_BUCKETS`: a source prefix's new flows
/// count in one bucket of each of two rows, chosen by a keyed hash of the
/// VIP and the prefix; it is refused only when both are over their rate.
/// Fixed, so a flood of spoofed sources cannot grow it.
pub const SOURCE_BUCKET_ROWS: u32 = 65_536;

/// `SourceRule.action`: the sources the rule covers are admitted.
pub const SOURCE_ALLOW: u32 = 0;
/// `SourceRule.action`: the sources the rule covers are dropped.
pub const SOURCE_DENY: u32 = 1;

/// What the data plane checks before it admits a packet to a VIP, in the
/// `ADMISSION` array at the VIP's table id (`bank * MAX_VIPS + vip_id`):
/// the bank in force names it, so an apply changes it with the tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// `ADMIT_*` bits; 0: every packet is admitted.
    pub flags: u32,
    /// The prefix length a source's new flows are counted under (IPv4).
    pub source_len_v4: u8,
    /// The same for IPv6.
    pub source_len_v6: u8,
    /// Reserved; zero.
    pub reserved: [u8; 2],
    /// The VIP's cap on new flows (`ADMIT_FLOW_LIMIT`).
    pub new_flows: Rate,
    /// The VIP's cap on packets (`ADMIT_PACKET_LIMIT`).
    pub packets: Rate,
    /// Each source prefix's cap on new flows (`ADMIT_SOURCE_LIMIT`).
    pub source_new_flows: Rate,
}

/// A rate limit as a generic cell rate algorithm holds it: a packet
/// conforms while its bucket's theoretical arrival time is at most
/// `burst_ns` after now, and then moves that time on by `interval_ns`. A
/// packet that does not conform leaves the bucket as it was, so a flood
/// the bucket holds only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds per packet: 1e9 / the rate.
    pub interval_ns: u64,
    /// How far ahead of now a bucket may run: a burst of `burst_ns /
    /// interval_ns + 1` packets passes at once.
    pub burst_ns: u64,
}

/// A VIP's limit buckets: theoretical arrival times on the kernel's
/// monotonic clock, in ns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipBuckets {
    /// Its new flows'.
    pub new_flows: u64,
    /// Its packets'.
    pub packets: u64,
}

/// The data of an IPv4 source trie key: the rule list (the VIP's table
/// id, big-endian, so that its 32 bits come first) and the prefix. The
/// key's prefix length counts the list's 32 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceV4 {
    /// `table_id.to_be_bytes()`.
    pub list: [u8; 4],
    /// The address (network order).
    pub addr: [u8; 4],
}

/// The same for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceV6 {
    /// `table_id.to_be_bytes()`.
    pub list: [u8; 4],
    /// The address (network order).
    pub addr: [u8; 16],
}

/// Bits of a source trie key's prefix length that name the list.
pub const SOURCE_LIST_BITS: u32 = 32;

/// A source rule as the tries hold it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRule {
    /// Its slot in `RULE_STATS` (deny rules; 0 for allow rules).
    pub slot: u32,
    /// `SOURCE_ALLOW` or `SOURCE_DENY`.
    pub action: u32,
}

/// Why the data plane refused a packet to a VIP: the index of its
/// `AdmissionCounters` entry.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionDrop {
    /// Its source's longest matching rule is a deny rule.
    Denied = 0,
    /// The VIP has allow rules and none covers its source.
    NotAllowed = 1,
    /// A new flow over the VIP's cap on new flows.
    FlowLimit = 2,
    /// A packet over the VIP's cap on packets.
    PacketLimit = 3,
    /// A new flow over its source prefix's cap.
    SourceLimit = 4,
}

impl AdmissionDrop {
    /// Every reason, in index order.
    pub const ALL: [AdmissionDrop; 5] = [
        AdmissionDrop::Denied,
        AdmissionDrop::NotAllowed,
        AdmissionDrop::FlowLimit,
        AdmissionDrop::PacketLimit,
        AdmissionDrop::SourceLimit,
    ];
    /// Length of `AdmissionCounters::drops`.
    pub const COUNT: usize = Self::ALL.len();

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            AdmissionDrop::Denied => "denied",
            AdmissionDrop::NotAllowed => "not_allowed",
            AdmissionDrop::FlowLimit => "flow_limit",
            AdmissionDrop::PacketLimit => "packet_limit",
            AdmissionDrop::SourceLimit => "source_limit",
        }
    }

    /// The verdict counter it moves.
    pub const fn reason(self) -> Reason {
        match self {
            AdmissionDrop::Denied | AdmissionDrop::NotAllowed => Reason::DropDenied,
            AdmissionDrop::FlowLimit | AdmissionDrop::PacketLimit | AdmissionDrop::SourceLimit => {
                Reason::DropLimited
            }
        }
    }
}

/// Packets the data plane refused to one VIP, by `AdmissionDrop` (per CPU
/// in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionCounters {
    /// Packets, by `AdmissionDrop`.
    pub drops: [u64; AdmissionDrop::COUNT],
}

/// Why a packet got the verdict it got. Each value is an index of the global
/// per-CPU counter array, and every packet increments exactly one of the
/// verdict counters (`Tx` .. `DropNoBackend`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded to a backend with `XDP_TX`.
    Tx = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed to the kernel.
    PassNotIp = 1,
    /// IP, but not addressed to a VIP: passed.
    PassNotVip = 2,
    /// Neither TCP nor UDP (ICMP, SCTP, ...): passed.
    PassOtherProtocol = 3,
    /// IPv4 fragment or IPv6 fragment header: passed (ports are unknown).
    PassFragment = 4,
    /// IPv6 extension headers other than fragments, or a second VLAN tag: passed.
    PassUnsupported = 5,
    /// A header is shorter than its minimum size, or the frame ends before
    /// the IP length field says the packet does: dropped.
    DropTruncated = 6,
    /// A header is malformed: a bad IP version, an IHL below 5, an IPv4
    /// total length below its header, a TCP data offset below 5 or past
    /// the packet's end, a UDP length below 8 or past the packet's end.
    /// Dropped: the kernel would drop it too.
    DropMalformed = 7,
    /// The VIP has no lookup table or the slot holds no backend: dropped.
    DropNoBackend = 8,
    /// A packet for an encapsulating backend would not fit the egress MTU
    /// once encapsulated: answered with an ICMP "fragmentation needed" or
    /// ICMPv6 "packet too big" (`XDP_TX`), its MTU lowered by the overhead.
    TxTooBig = 9,
    /// The same for an IPv4 packet without DF: dropped (XDP cannot
    /// fragment).
    DropTooBig = 10,
    /// The kernel refused to grow the frame for the outer headers: dropped.
    DropEncapFailed = 11,
    /// A unicast frame addressed to another host's MAC (a switch flooding
    /// an unknown destination on a shared segment): passed to the kernel,
    /// which drops it, so that only the host it is for forwards it.
    PassOtherHost = 12,
    /// A broadcast or multicast frame (ARP requests, IPv6 neighbour
    /// discovery): passed to the kernel, never forwarded.
    PassMulticast = 13,
    /// Informational: an IPv4 header with options was parsed (not a verdict).
    Ipv4Options = 14,
    /// Informational: connection-table hit (not a verdict).
    ConnHit = 15,
    /// Informational: connection-table miss or SYN, hashed into the table.
    ConnMiss = 16,
    /// Informational: a new flow's entry went into the connection table.
    ConnInsert = 17,
    /// Informational: a new flow found no way it may take (its set holds
    /// only established flows): it is forwarded by the lookup table, not
    /// tracked, and hashed again on its next packet. A flood of spoofed new
    /// flows shows here instead of evicting established ones.
    ConnInsertFailed = 18,
    /// Informational: a new flow's entry took the way of another flow
    /// (unproven, closing or idle past its timeout).
    ConnEvicted = 19,
    /// Informational: a flow came back after idling past its protocol's
    /// timeout: it was hashed again as a new flow.
    ConnExpired = 20,
    /// Informational: an ICMP error about a VIP flow (its quoted packet
    /// came from the VIP, and the error is addressed to the VIP) went to
    /// the backend that owns the flow.
    IcmpToBackend = 21,
    /// The VIP's source rules refuse the packet's source (a deny rule, or
    /// an allow list that does not cover it): dropped, and counted by VIP,
    /// reason and rule.
    DropDenied = 22,
    /// The VIP's limits refuse the packet: over its cap on new flows or on
    /// packets, or a new flow over its source prefix's cap. Dropped, and
    /// counted by VIP and reason. Flows the connection table holds never
    /// meet the caps on new flows.
    DropLimited = 23,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 24] = [
        Reason::Tx,
        Reason::PassNotIp,
        Reason::PassNotVip,
        Reason::PassOtherProtocol,
        Reason::PassFragment,
        Reason::PassUnsupported,
        Reason::DropTruncated,
        Reason::DropMalformed,
        Reason::DropNoBackend,
        Reason::TxTooBig,
        Reason::DropTooBig,
        Reason::DropEncapFailed,
        Reason::PassOtherHost,
        Reason::PassMulticast,
        Reason::Ipv4Options,
        Reason::ConnHit,
        Reason::ConnMiss,
        Reason::ConnInsert,
        Reason::ConnInsertFailed,
        Reason::ConnEvicted,
        Reason::ConnExpired,
        Reason::IcmpToBackend,
        Reason::DropDenied,
        Reason::DropLimited,
    ];

    /// Whether this reason is a verdict (every packet moves exactly one
    /// verdict counter) rather than an informational counter.
    pub const fn is_verdict(self) -> bool {
        (self as u32) <= Reason::PassMulticast as u32 || (self as u32) >= Reason::DropDenied as u32
    }

    /// Length of the global counter array.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The verdict class of this reason: `tx`, `pass` or `drop` for the
    /// verdicts, `info` for the informational counters.
    pub const fn action(self) -> &'static str {
        match self {
            Reason::Tx | Reason::TxTooBig => "tx",
            Reason::PassNotIp
            | Reason::PassNotVip
            | Reason::PassOtherProtocol
            | Reason::PassFragment
            | Reason::PassUnsupported
            | Reason::PassOtherHost
            | Reason::PassMulticast => "pass",
            Reason::DropTruncated
            | Reason::DropMalformed
            | Reason::DropNoBackend
            | Reason::DropTooBig
            | Reason::DropEncapFailed
            | Reason::DropDenied
            | Reason::DropLimited => "drop",
            Reason::Ipv4Options
            | Reason::ConnHit
            | Reason::ConnMiss
            | Reason::ConnInsert
            | Reason::ConnInsertFailed
            | Reason::ConnEvicted
            | Reason::ConnExpired
            | Reason::IcmpToBackend => "info",
        }
    }

    /// Its reason by metric label.
    pub fn by_name(name: &str) -> Option<Reason> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The metric label for this reason.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Tx => "tx",
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassOtherProtocol => "pass_other_protocol",
            Reason::PassFragment => "pass_fragment",
            Reason::PassUnsupported => "pass_unsupported",
            Reason::DropTruncated => "drop_truncated",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::TxTooBig => "tx_too_big",
            Reason::DropTooBig => "drop_too_big",
            Reason::DropEncapFailed => "drop_encap_failed",
            Reason::PassOtherHost => "pass_other_host",
            Reason::PassMulticast => "pass_multicast",
            Reason::Ipv4Options => "ipv4_options",
            Reason::ConnHit => "conn_hit",
            Reason::ConnMiss => "conn_miss",
            Reason::ConnInsert => "conn_insert",
            Reason::ConnInsertFailed => "conn_insert_failed",
            Reason::ConnEvicted => "conn_evicted",
            Reason::ConnExpired => "conn_expired",
            Reason::IcmpToBackend => "icmp_to_backend",
            Reason::DropDenied => "drop_denied",
            Reason::DropLimited => "drop_limited",
        }
    }
}

/// Names of the maps in the eBPF object.
pub mod names {
    /// `ArrayOfMaps<Array<VipSlot>>` with one entry: the current VIP index.
    pub const VIP_INDEX: &str = "VIP_INDEX";
    /// `Array<VipFilter>` with two entries: the VIPs' addresses, then the
    /// QUIC VIPs'.
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// `Array<Backend>`.
    pub const BACKENDS: &str = "BACKENDS";
    /// `ArrayOfMaps<Array<u32>>` indexed by table id (`bank * MAX_VIPS + vip_id`).
    pub const LOOKUP_TABLES: &str = "LOOKUP_TABLES";
    /// `Array<FlowWays>`: the connection table's entries, one set each.
    pub const CONN_TABLE: &str = "CONN_TABLE";
    /// `Array<FlowMeta>`: the connection table's way words, one set each.
    pub const CONN_META: &str = "CONN_META";
    /// `PerCpuArray<TrafficCounters>` indexed by backend id.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// `PerCpuArray<TrafficCounters>` indexed by `vip_id`.
    pub const VIP_STATS: &str = "VIP_STATS";
    /// `PerCpuArray<u64>` indexed by `Reason`.
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    /// `Array<DataplaneConfig>` with one entry.
    pub const CONFIG: &str = "CONFIG";
    /// `ProgramArray`: the programs the XDP program tail-calls
    /// (`TAIL_ENCAP`, `TAIL_TRACE`, `TAIL_TRACED`, `TAIL_QUIC`,
    /// `TAIL_MAIN`).
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    /// `PerCpuArray<EncapJob>` with one entry.
    pub const ENCAP_JOBS: &str = "ENCAP_JOBS";
    /// `Array<TraceControl>` with one entry.
    pub const TRACE_CONTROL: &str = "TRACE_CONTROL";
    /// `PerCpuArray<TraceEvent>` with one entry: the decision being made.
    pub const TRACE_JOBS: &str = "TRACE_JOBS";
    /// `PerCpuArray<TraceState>` with one entry.
    pub const TRACE_STATE: &str = "TRACE_STATE";
    /// `PerCpuArray<u64>` indexed by `TraceOutcome`.
    pub const TRACE_STATS: &str = "TRACE_STATS";
    /// `RingBuf<TraceEvent>`: the events (`TracePacket`s while the
    /// control's `snap_len` is not 0).
    pub const TRACE_EVENTS: &str = "TRACE_EVENTS";
    /// `Array<Admission>` indexed by table id (`bank * MAX_VIPS + vip_id`).
    pub const ADMISSION: &str = "ADMISSION";
    /// `LpmTrie<SourceV4, SourceRule>`: every VIP's IPv4 source rules.
    pub const SOURCES_V4: &str = "SOURCES_V4";
    /// `LpmTrie<SourceV6, SourceRule>`: every VIP's IPv6 source rules.
    pub const SOURCES_V6: &str = "SOURCES_V6";
    /// `PerCpuArray<u64>` indexed by a deny rule's slot: packets it dropped.
    pub const RULE_STATS: &str = "RULE_STATS";
    /// `PerCpuArray<AdmissionCounters>` indexed by `vip_id`.
    pub const ADMISSION_STATS: &str = "ADMISSION_STATS";
    /// `Array<VipBuckets>` indexed by `vip_id`.
    pub const VIP_BUCKETS: &str = "VIP_BUCKETS";
    /// `Array<u64>` of `2 * SOURCE_BUCKET_ROWS` buckets: the source
    /// prefixes' new flows.
    pub const SOURCE_BUCKETS: &str = "SOURCE_BUCKETS";
    /// `HashMap<QuicServerKey, u32>`: each QUIC VIP's server IDs, by list,
    /// to backend ids.
    pub const QUIC_SERVERS: &str = "QUIC_SERVERS";
    /// `PerCpuArray<QuicCounters>` indexed by `vip_id`.
    pub const QUIC_STATS: &str = "QUIC_STATS";
    /// `Array<QuicRoute>` indexed by table id (`bank * MAX_VIPS + vip_id`).
    pub const QUIC_ROUTES: &str = "QUIC_ROUTES";
    /// `PerCpuArray<QuicJob>` with one entry.
    pub const QUIC_JOBS: &str = "QUIC_JOBS";
    /// `Array<Meta>` with one entry; created and pinned by `fulcrum`, not
    /// part of the eBPF object.
    pub const META: &str = "META";
    /// Name of the XDP program.
    pub const PROGRAM: &str = "fulcrum_xdp";
    /// Name of the encapsulation program it tail-calls.
    pub const ENCAP_PROGRAM: &str = "fulcrum_encap";
    /// Name of the QUIC program it tail-calls.
    pub const QUIC_PROGRAM: &str = "fulcrum_quic";
    /// Name of the trace program it tail-calls.
    pub const TRACE_PROGRAM: &str = "fulcrum_trace";
    /// Name of the traced copy of its path, which it tail-calls while
    /// tracing is on.
    pub const TRACED_PROGRAM: &str = "fulcrum_traced";
    /// The decapsulation object's settings: `Array<DecapConfig>`, one entry.
    pub const DECAP_CONFIG: &str = "DECAP_CONFIG";
    /// The decapsulation object's counters: `PerCpuArray<u64>` by `DecapReason`.
    pub const DECAP_STATS: &str = "DECAP_STATS";
    /// The decapsulation program.
    pub const DECAP_PROGRAM: &str = "fulcrum_decap";
    /// The maps of the eBPF object, every one pinned.
    pub const OBJECT_MAPS: [&str; 28] = [
        VIP_INDEX,
        VIP_FILTER,
        BACKENDS,
        LOOKUP_TABLES,
        CONN_TABLE,
        CONN_META,
        BACKEND_STATS,
        VIP_STATS,
        GLOBAL_STATS,
        CONFIG,
        TAIL_CALLS,
        ENCAP_JOBS,
        TRACE_CONTROL,
        TRACE_JOBS,
        TRACE_STATE,
        TRACE_STATS,
        TRACE_EVENTS,
        ADMISSION,
        SOURCES_V4,
        SOURCES_V6,
        RULE_STATS,
        ADMISSION_STATS,
        VIP_BUCKETS,
        SOURCE_BUCKETS,
        QUIC_SERVERS,
        QUIC_STATS,
        QUIC_JOBS,
        QUIC_ROUTES,
    ];
}

#[cfg(feature = "user")]
mod pod {
    /// Marks each type as plain old data for aya's maps.
    macro_rules! pod {
        ($($name:ident),* $(,)?) => {
            $(
                // SAFETY: the type is #[repr(C)], Copy, and has no padding
                // bytes that could leak uninitialised memory (explicit
                // `pad` fields fill the gaps).
                unsafe impl aya::Pod for super::$name {}
            )*
        };
    }

    pod!(
        VipKey,
        VipSlot,
        VipFilter,
        Backend,
        FlowKey,
        FlowEntry,
        FlowWays,
        FlowMeta,
        TrafficCounters,
        DataplaneConfig,
        TraceControl,
        TraceEvent,
        TraceState,
        Encapsulation,
        EncapJob,
        DecapConfig,
        Meta,
        Admission,
        SourceV4,
        SourceV6,
        SourceRule,
        AdmissionCounters,
        Rate,
        VipBuckets,
        QuicRoute,
        QuicServerKey,
        QuicCounters,
        QuicJob,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_trace_control_matches_vip_backend_and_source_prefix() {
        let mut event = TraceEvent {
            has_flow: 1,
            vip_id: 3,
            backend_id: 7,
            ..TraceEvent::default()
        };
        event.key.family = FAMILY_IPV4;
        event.key.src_addr[..4].copy_from_slice(&[198, 18, 5, 77]);
        let any = TraceControl {
            vip_id: TRACE_ANY_VIP,
            ..TraceControl::default()
        };
        assert!(any.matches(&event));
        assert!(TraceControl { vip_id: 3, ..any }.matches(&event));
        assert!(!TraceControl { vip_id: 4, ..any }.matches(&event));
        assert!(
            TraceControl {
                backend_id: 7,
                ..any
            }
            .matches(&event)
        );
        assert!(
            !TraceControl {
                backend_id: 8,
                ..any
            }
            .matches(&event)
        );
        let mut prefix = TraceControl {
            src_family: FAMILY_IPV4,
            src_prefix_len: 20,
            ..any
        };
        prefix.src_addr[..4].copy_from_slice(&[198, 18, 0, 0]);
        assert!(prefix.matches(&event));
        prefix.src_prefix_len = 24;
        assert!(!prefix.matches(&event));
        prefix.src_addr[2] = 5;
        assert!(prefix.matches(&event));
        prefix.src_prefix_len = 0;
        prefix.src_addr = [0; 16];
        assert!(prefix.matches(&event), "a /0 of the family matches it all");
        assert!(
            !TraceControl {
                src_family: FAMILY_IPV6,
                ..prefix
            }
            .matches(&event)
        );
        event.has_flow = 0;
        assert!(!prefix.matches(&event), "no flow, no source to match");
    }

    use super::*;
    use core::mem::size_of;

    #[test]
    fn the_vip_filter_holds_its_addresses_and_few_others() {
        let v4 = |a: u8, b: u8| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&[198, 18, a, b]);
            addr
        };
        let mut filter = VipFilter::default();
        let vips: Vec<[u8; 16]> = (0..16).map(|i| v4(0, 100 + i)).collect();
        for vip in &vips {
            filter.insert(vip);
        }
        assert!(vips.iter().all(|vip| filter.may_hold(vip)));
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0, 2]);
        v6[15] = 1;
        assert!(!VipFilter::default().may_hold(&v6));
        // 16 addresses set at most 16 of 512 bits: other hosts of the
        // same networks mostly fall on clear bits.
        let others = (1..=255u8).flat_map(|a| (0..4u8).map(move |b| v4(a, b)));
        let (passed, total) = others.fold((0, 0), |(p, t), addr| {
            (p + u32::from(filter.may_hold(&addr)), t + 1)
        });
        assert!(passed * 10 < total, "{passed} of {total} others pass");
        let mut other = VipFilter::default();
        other.insert(&v6);
        let both = filter.union(other);
        assert!(both.may_hold(&v6) && vips.iter().all(|vip| both.may_hold(vip)));
        // By endpoint: the same addresses' other ports mostly pass by.
        let mut endpoints = VipFilter::default();
        for vip in &vips {
            endpoints.insert_endpoint(vip, 443);
        }
        assert!(vips.iter().all(|vip| endpoints.may_hold_endpoint(vip, 443)));
        let (passed, total) = vips
            .iter()
            .flat_map(|vip| (1..1024u16).filter(|&p| p != 443).map(move |p| (vip, p)))
            .fold((0, 0), |(p, t), (vip, port)| {
                (p + u32::from(endpoints.may_hold_endpoint(vip, port)), t + 1)
            });
        assert!(passed * 10 < total, "{passed} of {total} other ports pass");
    }

    #[test]
    fn a_quic_route_reads_its_codepoint_and_server_id() {
        let route = QuicRoute {
            config_id: 0,
            offset: 1,
            len: 3,
            pad: 0,
        };
        // QUIC-LB's plaintext test vector: config 0, server ID c4605e,
        // nonce 4504cc4f.
        let cid = [0x07, 0xc4, 0x60, 0x5e, 0x45, 0x04, 0xcc, 0x4f];
        assert_eq!(route.judge(cid[0]), None);
        let mut window = [0xaa; QUIC_WINDOW];
        window[..7].copy_from_slice(&cid[1..]);
        let mut id = [0; QUIC_WINDOW];
        id[..3].copy_from_slice(&[0xc4, 0x60, 0x5e]);
        assert_eq!(route.server_id(&window), id);
        assert_eq!(route.judge(0xe7), Some(QuicOutcome::Unroutable));
        assert_eq!(route.judge(0x27), Some(QuicOutcome::OtherConfig));
        let widest = QuicRoute { len: 15, ..route };
        let id = widest.server_id(&[0xff; QUIC_WINDOW]);
        assert_eq!((id[14], id[15]), (0xff, 0), "15 octets and a zero");
        let narrowest = QuicRoute { len: 1, ..route };
        assert_eq!(narrowest.server_id(&[0xff; QUIC_WINDOW])[..2], [0xff, 0]);
        for (index, outcome) in QuicOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "{}", outcome.name());
            assert_eq!(QuicOutcome::from_index(index as u32), Some(*outcome));
        }
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(size_of::<VipSlot>(), 36);
        assert_eq!(size_of::<QuicRoute>(), 4);
        assert_eq!(size_of::<QuicServerKey>(), 20);
        assert_eq!(size_of::<QuicJob>(), 48);
        assert_eq!(size_of::<VipFilter>(), 64);
        assert_eq!(size_of::<Meta>(), 16);
        assert_eq!(size_of::<Backend>(), 36);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowEntry>(), 64);
        assert_eq!(size_of::<FlowWays>(), 8 * 64);
        assert_eq!(size_of::<FlowMeta>(), 64);
        assert_eq!(size_of::<TrafficCounters>(), 56);
        assert_eq!(size_of::<Encapsulation>(), 44);
        assert_eq!(size_of::<EncapJob>(), 56);
        assert_eq!(size_of::<DecapConfig>(), 8 * 4 + 8 * 16 + 4);
        assert_eq!(size_of::<DataplaneConfig>(), 88);
        assert_eq!(size_of::<TraceControl>(), 48);
        assert_eq!(size_of::<TraceEvent>(), 96);
        assert_eq!(size_of::<TracePacket>(), 96 + TRACE_SNAP_MAX as usize);
        assert_eq!(size_of::<TraceState>(), 24);
        assert_eq!(size_of::<Admission>(), 56);
        assert_eq!(size_of::<SourceV4>(), 8);
        assert_eq!(size_of::<SourceV6>(), 20);
        assert_eq!(size_of::<SourceRule>(), 8);
    }

    #[test]
    fn a_way_word_packs_tag_clock_and_flags() {
        let word = WayWord::new(0xdead_beef, 0x0123_4567, FLOW_UNPROVEN | FLOW_UDP);
        assert_eq!(word.tag(), 0xdead_beef);
        assert_eq!(word.seen(), 0x23_4567, "24 bits of the clock");
        assert_eq!(word.flags(), FLOW_UNPROVEN | FLOW_UDP);
        assert_eq!(word.age(0x0123_4567 + 5), 5);
        // Across the 24-bit wrap the age is still right.
        let old = WayWord::new(1, FLOW_SEEN_MASK - 2, 0);
        assert_eq!(old.age(FLOW_SEEN_MASK + 4), 6);
        assert_eq!(WayWord::default().tag(), 0, "an empty way");
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.name());
        }
        let informational = [
            Reason::Ipv4Options,
            Reason::ConnHit,
            Reason::ConnMiss,
            Reason::ConnInsert,
            Reason::ConnInsertFailed,
            Reason::ConnEvicted,
            Reason::ConnExpired,
            Reason::IcmpToBackend,
        ];
        for reason in Reason::ALL {
            assert_eq!(
                reason.is_verdict(),
                !informational.contains(&reason),
                "{}",
                reason.name()
            );
        }
    }
}
