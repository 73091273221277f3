//! The handle on the XDP program and its maps: loading it (or adopting a
//! pinned instance), attaching it, writing backends and whole lookup tables,
//! making one apply live in one step, and reading counters back. Everything
//! that touches aya lives in this folder.

pub mod admission;
pub mod clock;
pub mod counters;
pub mod decap;
pub mod flows;
mod mmap;
pub mod pins;
pub mod quic;
pub mod state;
pub mod sys;
pub mod system;
pub mod trace;
pub mod vip_index;

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, Map, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramError, Xdp, XdpMode as AttachAs, links::PinnedLink, xdp::XdpLinkId},
};
use counters::{CounterReader, Counters};
pub use lb_common::maps::table_id;
use lb_common::maps::{
    AdmissionCounters, BACKEND_ACTIVE, Backend, CONN_TABLE_ENTRIES, DataplaneConfig, FLOW_WAYS,
    FlowKey, FlowMeta, FlowWays, LAYOUT_VERSION, MAX_BACKENDS, Meta, QUIC_FILTER, QuicCounters,
    TABLE_BANKS, TABLE_HEADER_SLOTS, TABLE_MAP_FLAGS, TAIL_ENCAP, TAIL_MAIN, TAIL_QUIC, TAIL_TRACE,
    TAIL_TRACED, TrafficCounters, VIP_INDEX_SLOTS, VIP_SLOT_QUIC, VIP_SLOT_USED, VipFilter,
    VipSlot, names,
};
use mmap::MappedArray;
use sys::{BatchMap, SysError};
use vip_index::VipIndexError;

use crate::{
    dataplane::state::{DesiredState, VipState},
    net::XdpMode,
};

/// The bench object, built by build.rs from lb-ebpf beside the production
/// object: programs for the benchmarks and the test lab (`bench_untraced`,
/// `bench_floor_tx`, `lab_peer_pass`), which `fulcrum` never loads; the
/// tests do.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fulcrum-bench"));

/// Errors from the data plane, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The eBPF object could not be parsed or its maps created.
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    /// The program could not be verified, loaded or attached.
    #[error("{what}")]
    Program {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The underlying error.
        source: MapError,
    },
    /// The object lacks a map or program this code expects.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A lookup table could not be mapped into memory.
    #[error("mapping a lookup table: {0}")]
    Mmap(std::io::Error),
    /// The VIP index could not be laid out.
    #[error(transparent)]
    VipIndex(#[from] VipIndexError),
    /// A new state reuses a backend id for a different backend, which would
    /// silently move that backend's established flows.
    #[error(
        "backend id {backend_id} was {was} and would now be {now}; build the new state \
         from the installed one (DesiredState::build_from)"
    )]
    IdConflict {
        /// The id.
        backend_id: u32,
        /// What it named.
        was: String,
        /// What it would name.
        now: String,
    },
    /// A VIP encapsulates, and neither the config nor the interface gives
    /// the MTU encapsulated packets must fit.
    #[error(
        "VIP {vip} encapsulates, but no MTU is known: set encapsulation.mtu (the largest \
         packet the path to the backends carries)"
    )]
    NoMtu {
        /// The first such VIP's label.
        vip: String,
    },
    /// The kernel holds a different table than the one just installed.
    #[error(
        "VIP {vip}: the kernel's lookup table differs from the installed one in {differing} of {size} slots"
    )]
    Verify {
        /// The VIP's label.
        vip: String,
        /// Slots that differ (or the length difference).
        differing: usize,
        /// The expected table size.
        size: usize,
    },
    /// A pinned instance this `fulcrum` cannot safely adopt.
    #[error("the pinned data plane at {path}: {why}")]
    Pinned {
        /// Its pin directory.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// Pinning or unpinning failed.
    #[error("{what}")]
    Pin {
        /// What was being pinned or removed.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `bpf(2)` call of fulcrum's own (where aya has no API) failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A system call outside the maps failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A lookup table is empty or too large.
    #[error("lookup table {table_id} has {len} slots; it needs 1..={max}")]
    TableSize {
        /// The table.
        table_id: u32,
        /// The rejected length.
        len: usize,
        /// The largest accepted length.
        max: u32,
    },
}

type Result<T> = std::result::Result<T, DataplaneError>;

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// A fresh lookup table (slot 0 holds the size), filled through mmap;
/// not referenced by anything yet.
fn new_table(table_id: u32, table: &[u32]) -> Result<MapData> {
    const MAX_SLOTS: u32 = (u32::MAX >> 4) - TABLE_HEADER_SLOTS;
    let size = u32::try_from(table.len())
        .ok()
        .filter(|&size| size > 0 && size <= MAX_SLOTS)
        .ok_or(DataplaneError::TableSize {
            table_id,
            len: table.len(),
            max: MAX_SLOTS,
        })?;
    let entries = size + TABLE_HEADER_SLOTS;
    let params = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        4,
        entries,
        TABLE_MAP_FLAGS,
    );
    let inner = MapData::create(params, "fulcrum_table", None)
        .map_err(map_err("lookup table (new inner map)"))?;
    {
        let mut view = MappedArray::<u32>::map(inner.fd().as_fd(), entries, true)
            .map_err(DataplaneError::Mmap)?;
        view.set(0, size);
        for (slot, &backend_id) in (TABLE_HEADER_SLOTS..).zip(table) {
            view.set(slot, backend_id);
        }
    }
    Ok(inner)
}

/// A lookup table's slots (without the size header), read through mmap.
fn read_inner(inner: &MapData) -> Result<Vec<u32>> {
    let entries = inner.info().map_err(map_err("lookup table"))?.max_entries();
    let view = MappedArray::<u32>::map(inner.fd().as_fd(), entries, false)
        .map_err(DataplaneError::Mmap)?;
    let size = view.get(0).min(entries.saturating_sub(TABLE_HEADER_SLOTS));
    Ok((TABLE_HEADER_SLOTS..TABLE_HEADER_SLOTS + size)
        .map(|slot| view.get(slot))
        .collect())
}

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Flows the connection table holds: a power of two sets of
    /// `FLOW_WAYS` ways, rounded up from what was asked.
    pub connection_table_size: u32,
    /// Backend slots over all VIPs (slot 0 is never used).
    pub max_backends: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            connection_table_size: CONN_TABLE_ENTRIES,
            max_backends: MAX_BACKENDS - 1,
        }
    }
}

/// Which XDP mode to attach in (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpChoice {
    /// Native if the driver has it, else generic.
    #[default]
    Auto,
    /// Native only: an interface whose driver refuses it is an error.
    Native,
    /// Generic only.
    Generic,
}

impl XdpChoice {
    /// Whether the program attached in `mode` is what was asked for.
    pub fn allows(self, mode: XdpMode) -> bool {
        match self {
            XdpChoice::Auto => matches!(mode, XdpMode::Native | XdpMode::Generic),
            XdpChoice::Native => mode == XdpMode::Native,
            XdpChoice::Generic => mode == XdpMode::Generic,
        }
    }
}

/// How the program is attached, if it is.
enum Link {
    /// Not attached.
    None,
    /// Attached by this process; detached when it exits.
    Owned(XdpLinkId),
    /// Attached through a pinned link, which outlives every process.
    Pinned(PinnedLink),
}

/// The XDP program's maps, and the program itself when this process loaded it.
pub struct Dataplane {
    maps: HashMap<&'static str, Map>,
    /// The loaded object; `None` for an adopted instance, whose program
    /// runs from its pin.
    ebpf: Option<Ebpf>,
    link: Link,
    installed: Option<DesiredState>,
    /// Both banks' admission as the kernel holds it, once read.
    admissions: Option<admission::Admissions>,
    /// Both banks' QUIC server IDs as the kernel holds them, once read.
    quic_servers: Option<quic::QuicServers>,
    /// The table bank the VIP index points into.
    bank: u32,
    /// Applies made live so far (kept in `META`, so it survives restarts).
    generation: u64,
    /// The MTU of the interface it serves: encapsulated packets' limit
    /// unless the config sets one.
    link_mtu: u16,
}

/// An apply written into the bank not in use and verified there, but not
/// live yet: `commit` makes it live in one step.
#[must_use = "a staged state is not live until committed"]
pub struct Staged {
    state: DesiredState,
    bank: u32,
}

impl Staged {
    /// The table bank it was written into.
    pub fn bank(&self) -> u32 {
        self.bank
    }
}

/// The id of VIP `vip_id`'s lookup table in `bank`.
/// Sets of a connection table for `flows` flows: a power of two, at
/// least one.
pub fn connection_table_sets(flows: u32) -> u32 {
    flows.div_ceil(FLOW_WAYS as u32).max(1).next_power_of_two()
}

impl Dataplane {
    /// Loads and verifies the XDP program (not attached anywhere yet).
    pub fn load() -> Result<Self> {
        Self::load_with(Capacities::default())
    }

    /// Loads the program with maps of the given capacities.
    pub fn load_with(capacities: Capacities) -> Result<Self> {
        let backend_entries = capacities.max_backends.saturating_add(1);
        let sets = connection_table_sets(capacities.connection_table_size);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::CONN_TABLE, sets)
            .map_max_entries(names::CONN_META, sets)
            .map_max_entries(names::BACKENDS, backend_entries)
            .map_max_entries(names::BACKEND_STATS, backend_entries)
            .load(crate::EBPF_OBJECT)?;
        Self::load_programs(&mut ebpf)?;
        let mut maps = HashMap::new();
        for name in names::OBJECT_MAPS {
            let map = ebpf.take_map(name).ok_or(DataplaneError::Missing(name))?;
            maps.insert(name, map);
        }
        let meta = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            size_of::<Meta>() as u32,
            1,
            0,
        );
        let meta = MapData::create(meta, "fulcrum_meta", None).map_err(map_err(names::META))?;
        maps.insert(names::META, Map::Array(meta));
        let mut dataplane = Self {
            maps,
            ebpf: Some(ebpf),
            link: Link::None,
            installed: None,
            admissions: None,
            quic_servers: None,
            bank: 0,
            generation: 0,
            link_mtu: 0,
        };
        dataplane.write_meta()?;
        Ok(dataplane)
    }

    fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
        Self::xdp_named(ebpf, names::PROGRAM)
    }

    fn xdp_named<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut Xdp> {
        ebpf.program_mut(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                what: format!("{name} is not XDP"),
                source,
            })
    }

    /// Loads the XDP program and the programs it tail-calls (encapsulation,
    /// trace, the traced path, QUIC) and puts each in `TAIL_CALLS` (the
    /// QUIC program hands packets back to the XDP program; the entries
    /// outlive this process while the map is pinned).
    fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
        for (index, name, what) in [
            (TAIL_MAIN, names::PROGRAM, "the XDP program"),
            (
                TAIL_ENCAP,
                names::ENCAP_PROGRAM,
                "the encapsulation program",
            ),
            (TAIL_TRACE, names::TRACE_PROGRAM, "the trace program"),
            (TAIL_TRACED, names::TRACED_PROGRAM, "the traced path"),
            (TAIL_QUIC, names::QUIC_PROGRAM, "the QUIC path"),
        ] {
            let program = Self::xdp_named(ebpf, name)?;
            let program_error = |doing: String| {
                move |source| DataplaneError::Program {
                    what: doing,
                    source,
                }
            };
            program
                .load()
                .map_err(program_error(format!("verifying {what}")))?;
            let fd = program
                .fd()
                .map_err(program_error(what.to_string()))?
                .try_clone()
                .map_err(|io_error| {
                    program_error(format!("a copy of {what}'s descriptor"))(
                        aya::sys::SyscallError {
                            call: "dup",
                            io_error,
                        }
                        .into(),
                    )
                })?;
            let map = ebpf
                .map_mut(names::TAIL_CALLS)
                .ok_or(DataplaneError::Missing(names::TAIL_CALLS))?;
            let mut programs = ProgramArray::try_from(map).map_err(map_err(names::TAIL_CALLS))?;
            programs
                .set(index, &fd, 0)
                .map_err(map_err(names::TAIL_CALLS))?;
        }
        Ok(())
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        let ebpf = self.ebpf.as_mut().ok_or(DataplaneError::Missing(
            "program (adopted instances run from their pin)",
        ))?;
        Self::xdp_program(ebpf)
    }

    /// Attaches to `interface` as `choice` says: with `Auto`, native
    /// mode first and generic if the driver refuses. The program stays
    /// attached until `detach` or drop, unless the link is pinned
    /// (`pins::Pins::pin_link`).
    pub fn attach(&mut self, interface: &str, choice: XdpChoice) -> Result<XdpMode> {
        let program = self.program()?;
        let failed = |mode: XdpMode| {
            move |source| DataplaneError::Program {
                what: format!("attaching to interface {interface:?} in {mode} XDP mode"),
                source,
            }
        };
        let (link, mode) = match choice {
            XdpChoice::Native => (
                program
                    .attach(interface, AttachAs::Driver)
                    .map_err(failed(XdpMode::Native))?,
                XdpMode::Native,
            ),
            XdpChoice::Generic => (
                program
                    .attach(interface, AttachAs::Skb)
                    .map_err(failed(XdpMode::Generic))?,
                XdpMode::Generic,
            ),
            XdpChoice::Auto => match program.attach(interface, AttachAs::Driver) {
                Ok(link) => (link, XdpMode::Native),
                Err(source @ ProgramError::UnknownInterface { .. }) => {
                    return Err(failed(XdpMode::Native)(source));
                }
                Err(_) => (
                    program
                        .attach(interface, AttachAs::Skb)
                        .map_err(failed(XdpMode::Generic))?,
                    XdpMode::Generic,
                ),
            },
        };
        self.link = Link::Owned(link);
        Ok(mode)
    }

    /// Whether the program is attached (by this process or through a pin).
    pub fn is_attached(&self) -> bool {
        !matches!(self.link, Link::None)
    }

    /// Detaches the program if it is attached, pinned or not. A pinned
    /// link's pin is removed, which releases the link.
    pub fn detach(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.link, Link::None) {
            Link::None => {}
            Link::Owned(link) => {
                self.program()?
                    .detach(link)
                    .map_err(|source| DataplaneError::Program {
                        what: "detaching".into(),
                        source,
                    })?;
            }
            Link::Pinned(pinned) => {
                // Dropping the last reference to the link detaches it.
                drop(pinned.unpin().map_err(|source| DataplaneError::Pin {
                    what: "removing the link's pin".into(),
                    source,
                })?);
            }
        }
        Ok(())
    }

    /// The generation in force (0 before the first apply).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The table bank in use.
    pub fn bank(&self) -> u32 {
        self.bank
    }

    fn write_meta(&mut self) -> Result<()> {
        let meta = Meta {
            layout_version: LAYOUT_VERSION,
            bank: self.bank,
            generation: self.generation,
        };
        let mut array: Array<_, Meta> =
            Array::try_from(self.map_mut(names::META)?).map_err(map_err(names::META))?;
        array.set(0, meta, 0).map_err(map_err(names::META))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.maps.get_mut(name).ok_or(DataplaneError::Missing(name))
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.maps.get(name).ok_or(DataplaneError::Missing(name))
    }

    /// Sets the interface-wide settings (the source MAC of forwarded
    /// frames, the flow timeouts and the flow hash seed). The connection
    /// table's set mask comes from the map itself.
    pub fn set_config(&mut self, config: DataplaneConfig) -> Result<()> {
        let config = DataplaneConfig {
            flow_set_mask: self.max_entries(names::CONN_TABLE)? - 1,
            ..config
        };
        let mut array: Array<_, DataplaneConfig> =
            Array::try_from(self.map_mut(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        array.set(0, config, 0).map_err(map_err(names::CONFIG))
    }

    /// Sets the MTU of the interface served, which encapsulated packets
    /// must fit unless the config sets `encapsulation.mtu`.
    pub fn set_link_mtu(&mut self, mtu: u16) {
        self.link_mtu = mtu;
    }

    /// The interface-wide settings as the kernel holds them.
    pub fn config(&self) -> Result<DataplaneConfig> {
        let array: Array<_, DataplaneConfig> =
            Array::try_from(self.map(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        array.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    /// Writes backend slot `backend_id` (1-based; 0 means none).
    pub fn set_backend(&mut self, backend_id: u32, backend: Backend) -> Result<()> {
        let mut array: Array<_, Backend> =
            Array::try_from(self.map_mut(names::BACKENDS)?).map_err(map_err(names::BACKENDS))?;
        array
            .set(backend_id, backend, 0)
            .map_err(map_err(names::BACKENDS))
    }

    /// Frees backend slot `backend_id`. Connections pinned to it stop being
    /// honoured, so their next packet is hashed into the current table.
    pub fn remove_backend(&mut self, backend_id: u32) -> Result<()> {
        let generation = self.read_backend(backend_id)?.generation;
        self.set_backend(
            backend_id,
            Backend {
                generation,
                ..Backend::default()
            },
        )
    }

    /// Zeroes entry `index` of a per-CPU counter map of `V`s.
    fn zero_counters<V: aya::Pod + Default>(
        &mut self,
        name: &'static str,
        index: u32,
    ) -> Result<()> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| DataplaneError::Io { what, source }
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io("counting CPUs")(e))?;
        let zeros = PerCpuValues::try_from(vec![V::default(); cpus])
            .map_err(io("zeroed per-CPU counters"))?;
        let mut array: PerCpuArray<_, V> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        array.set(index, zeros, 0).map_err(map_err(name))
    }

    /// Fills a fresh inner array of `len` entries with `entries`, then makes
    /// it entry `index` of map-of-maps `outer` in one update: the kernel sees
    /// the old inner map or the complete new one, never a mix.
    fn swap_in<V: aya::Pod>(
        &mut self,
        outer: &'static str,
        index: u32,
        (len, flags): (u32, u32),
        entries: impl IntoIterator<Item = (u32, V)>,
    ) -> Result<()> {
        let mut inner =
            Array::<MapData, V>::create(len, flags).map_err(map_err("new inner map"))?;
        for (slot, value) in entries {
            inner
                .set(slot, value, 0)
                .map_err(map_err("new inner map"))?;
        }
        let mut outer_map: ArrayOfMaps<_, Array<MapData, V>> =
            ArrayOfMaps::try_from(self.map_mut(outer)?).map_err(map_err(outer))?;
        outer_map.set(index, &inner, 0).map_err(map_err(outer))
    }

    /// Replaces the whole VIP index in one atomic step. Each entry names
    /// its VIP's key, id and table id. The address filter holds the old
    /// index's addresses and the new one's while the index changes, so a
    /// packet never meets a filter without its VIP.
    pub fn install_vip_index(&mut self, entries: &[VipSlot]) -> Result<()> {
        let slots = vip_index::build(entries)?;
        let used = (0u32..)
            .zip(slots)
            .filter(|(_, slot)| slot.flags & VIP_SLOT_USED != 0);
        let mut filters = [VipFilter::default(); 2];
        for entry in entries {
            filters[0].insert(&entry.key.addr);
            if entry.flags & VIP_SLOT_QUIC != 0 {
                filters[QUIC_FILTER as usize].insert_endpoint(&entry.key.addr, entry.key.port);
            }
        }
        for (index, filter) in (0..).zip(filters) {
            let held = self.vip_filter(index)?;
            self.set_vip_filter(index, held.union(filter))?;
        }
        self.swap_in(names::VIP_INDEX, 0, (VIP_INDEX_SLOTS, 0), used)?;
        for (index, filter) in (0..).zip(filters) {
            self.set_vip_filter(index, filter)?;
        }
        Ok(())
    }

    /// VIP address filter `index` as the kernel holds it: 0 of every VIP,
    /// `QUIC_FILTER` of the QUIC VIPs.
    pub fn vip_filter(&self, index: u32) -> Result<VipFilter> {
        let array: Array<_, VipFilter> =
            Array::try_from(self.map(names::VIP_FILTER)?).map_err(map_err(names::VIP_FILTER))?;
        array.get(&index, 0).map_err(map_err(names::VIP_FILTER))
    }

    fn set_vip_filter(&mut self, index: u32, filter: VipFilter) -> Result<()> {
        let mut array: Array<_, VipFilter> = Array::try_from(self.map_mut(names::VIP_FILTER)?)
            .map_err(map_err(names::VIP_FILTER))?;
        array
            .set(index, filter, 0)
            .map_err(map_err(names::VIP_FILTER))
    }

    /// Installs a whole lookup table as table `table_id` in one atomic step
    /// (slot 0 holds the size): a fresh inner map, filled through mmap, then
    /// one outer-map update swaps it in: packets see the old table or the
    /// new one, never a mix.
    pub fn install_table(&mut self, table_id: u32, table: &[u32]) -> Result<()> {
        let inner = new_table(table_id, table)?;
        self.set_tables(&[(table_id, &inner)])
    }

    /// Points outer lookup-table slots at inner maps, all in one
    /// `BPF_MAP_UPDATE_BATCH` (Linux 5.6). Each single update of a
    /// map-of-maps waits for an RCU grace period (milliseconds); the batch
    /// waits once, which is what makes a 100-VIP apply fast.
    fn set_tables(&mut self, entries: &[(u32, &MapData)]) -> Result<()> {
        let Map::ArrayOfMaps(outer) = self.map(names::LOOKUP_TABLES)? else {
            return Err(DataplaneError::Missing(names::LOOKUP_TABLES));
        };
        let keys: Vec<u32> = entries.iter().map(|(id, _)| *id).collect();
        let values: Vec<u32> = entries
            .iter()
            .map(|(_, inner)| inner.fd().as_fd().as_raw_fd() as u32)
            .collect();
        BatchMap::new(outer, names::LOOKUP_TABLES)?.update(&keys, &values)?;
        Ok(())
    }

    /// The inner map the kernel holds as table `table_id`.
    fn table_map(&self, table_id: u32) -> Result<MapData> {
        let outer: ArrayOfMaps<_, MapData> = ArrayOfMaps::try_from(self.map(names::LOOKUP_TABLES)?)
            .map_err(map_err(names::LOOKUP_TABLES))?;
        outer
            .get(&table_id, 0)
            .map_err(map_err(names::LOOKUP_TABLES))
    }

    /// Reads back the lookup table the kernel holds as `table_id` (without
    /// the size header), to verify an install.
    pub fn read_table(&self, table_id: u32) -> Result<Vec<u32>> {
        read_inner(&self.table_map(table_id)?)
    }

    fn max_entries(&self, name: &'static str) -> Result<u32> {
        let data: &MapData = match self.map(name)? {
            Map::Array(data) => data,
            _ => return Err(DataplaneError::Missing(name)),
        };
        Ok(data.info().map_err(map_err(name))?.max_entries())
    }

    /// The capacities the kernel actually gave the maps.
    pub fn capacities(&self) -> Result<Capacities> {
        Ok(Capacities {
            connection_table_size: self
                .max_entries(names::CONN_TABLE)?
                .saturating_mul(FLOW_WAYS as u32),
            max_backends: self.max_entries(names::BACKENDS)?.saturating_sub(1),
        })
    }

    /// The state installed last.
    pub fn installed(&self) -> Option<&DesiredState> {
        self.installed.as_ref()
    }

    /// Installs a whole desired state and makes it live: `stage`, `verify`,
    /// then `commit`.
    pub fn install(&mut self, state: &DesiredState) -> Result<()> {
        let staged = self.stage(state)?;
        self.verify(&staged)?;
        self.commit(staged)
    }

    /// Writes a state into the table bank not in use, without making it
    /// live: its backends (new ones in slots nothing refers to yet), then
    /// every VIP's table. Packets still see the state in force. Refuses a
    /// state that renumbers a backend.
    pub fn stage(&mut self, state: &DesiredState) -> Result<Staged> {
        if let Some(previous) = &self.installed {
            check_stable_ids(previous, state)?;
        }
        if state.encap.kernel(self.link_mtu).mtu == 0
            && let Some(vip) = state.vips.iter().find(|v| v.forwarding.encapsulates())
        {
            return Err(DataplaneError::NoMtu {
                vip: vip.label.clone(),
            });
        }
        let bank = (self.bank + 1) % TABLE_BANKS;
        let (kept_vips, kept_backends): (
            std::collections::HashSet<u32>,
            std::collections::HashSet<u32>,
        ) = self.installed.as_ref().map_or_else(Default::default, |s| {
            (
                s.vips.iter().map(|v| v.vip_id).collect(),
                s.backend_ids().collect(),
            )
        });
        for vip in &state.vips {
            if !kept_vips.contains(&vip.vip_id) {
                // A new VIP's id may have served another VIP before.
                self.zero_counters::<TrafficCounters>(names::VIP_STATS, vip.vip_id)?;
                self.zero_counters::<AdmissionCounters>(names::ADMISSION_STATS, vip.vip_id)?;
                self.zero_counters::<QuicCounters>(names::QUIC_STATS, vip.vip_id)?;
            }
            for backend in &vip.backends {
                let slot = self.read_backend(backend.backend_id)?;
                let kept = kept_backends.contains(&backend.backend_id);
                // A backend found dead stays active until the tables that
                // leave it out are live (`commit` clears it then).
                let active = !backend.down || (kept && slot.flags & BACKEND_ACTIVE != 0);
                // A slot given to a new backend gets a new generation, so
                // connection entries of its previous owner are not honoured.
                let generation = if kept {
                    slot.generation
                } else {
                    slot.generation.wrapping_add(1)
                };
                let wanted = backend.slot(vip, active, generation);
                if !kept {
                    self.zero_counters::<TrafficCounters>(
                        names::BACKEND_STATS,
                        backend.backend_id,
                    )?;
                }
                if slot != wanted {
                    self.set_backend(backend.backend_id, wanted)?;
                }
            }
        }
        // A table the state in force already holds is shared, not rewritten.
        let live: HashMap<u32, Vec<u32>> = self
            .installed
            .iter()
            .flat_map(|s| &s.vips)
            .map(|v| (v.vip_id, v.kernel_table()))
            .collect();
        let mut inner = Vec::with_capacity(state.vips.len());
        let mut fresh = Vec::new();
        for vip in &state.vips {
            let table = vip.kernel_table();
            if live.get(&vip.vip_id) == Some(&table) {
                inner.push((vip.vip_id, self.table_map(table_id(self.bank, vip.vip_id))?));
            } else {
                fresh.push((vip.vip_id, table));
            }
        }
        let filled = crate::parallel::map(&fresh, |(vip_id, table)| {
            new_table(table_id(bank, *vip_id), table).map(|map| (*vip_id, map))
        });
        for table in filled {
            inner.push(table?);
        }
        let entries: Vec<(u32, &MapData)> = inner
            .iter()
            .map(|(vip_id, map)| (table_id(bank, *vip_id), map))
            .collect();
        self.set_tables(&entries)?;
        self.stage_admission(bank, state)?;
        self.stage_quic(bank, state)?;
        Ok(Staged {
            state: state.clone(),
            bank,
        })
    }

    /// Fails unless the kernel holds every table of a staged state.
    pub fn verify(&self, staged: &Staged) -> Result<()> {
        self.verify_tables(&staged.state, staged.bank)
    }

    /// Fails unless the kernel holds every table of `state` in `bank`
    /// (read back through the outer map, compared in parallel).
    pub fn verify_tables(&self, state: &DesiredState, bank: u32) -> Result<()> {
        let held = state
            .vips
            .iter()
            .map(|vip| Ok((vip, self.table_map(table_id(bank, vip.vip_id))?)))
            .collect::<Result<Vec<_>>>()?;
        let checks = crate::parallel::map(&held, |(vip, inner)| {
            let held = read_inner(inner)?;
            let want = vip.kernel_table();
            let differing = held.len().abs_diff(want.len())
                + held
                    .iter()
                    .zip(&want)
                    .filter(|(held, want)| held != want)
                    .count();
            if differing > 0 {
                return Err(DataplaneError::Verify {
                    vip: vip.label.clone(),
                    differing,
                    size: want.len(),
                });
            }
            Ok(())
        });
        checks.into_iter().collect()
    }

    /// Makes a staged state live in one step: one swap of the VIP index,
    /// whose slots point every VIP at its table in the staged bank. Then
    /// records the generation and frees the backend slots only the previous
    /// state used, so their flows are hashed into the new tables.
    pub fn commit(&mut self, staged: Staged) -> Result<()> {
        let Staged { state, bank } = staged;
        // The settings first: a VIP made live below may be the first to
        // encapsulate.
        let config = self.config()?;
        let wanted = DataplaneConfig {
            tcp_idle_s: state.idle.tcp_s,
            udp_idle_s: state.idle.udp_s,
            encap: state.encap.kernel(self.link_mtu),
            bank: bank as u8,
            admission: u8::from(state.vips.iter().any(VipState::admits)),
            ..config
        };
        if wanted != config {
            self.set_config(wanted)?;
        }
        let entries: Vec<VipSlot> = state.vips.iter().map(|v| v.slot(bank)).collect();
        self.install_vip_index(&entries)?;
        self.bank = bank;
        self.generation += 1;
        self.write_meta()?;
        // Dead backends' slots go inactive once no table names them: their
        // flows are hashed again, into the tables just made live.
        for backend in state
            .vips
            .iter()
            .flat_map(|v| &v.backends)
            .filter(|b| b.down)
        {
            let slot = self.read_backend(backend.backend_id)?;
            if slot.flags & BACKEND_ACTIVE != 0 {
                self.set_backend(backend.backend_id, Backend { flags: 0, ..slot })?;
            }
        }
        if let Some(previous) = self.installed.take() {
            let kept: std::collections::HashSet<u32> = state.backend_ids().collect();
            for gone in previous.backend_ids().filter(|id| !kept.contains(id)) {
                self.remove_backend(gone)?;
            }
        }
        self.installed = Some(state);
        Ok(())
    }

    /// The VIP index the kernel holds: its used slots.
    pub fn read_vip_index(&self) -> Result<Vec<VipSlot>> {
        let outer: ArrayOfMaps<_, MapData> = ArrayOfMaps::try_from(self.map(names::VIP_INDEX)?)
            .map_err(map_err(names::VIP_INDEX))?;
        let inner = outer.get(&0, 0).map_err(map_err(names::VIP_INDEX))?;
        let index: Array<_, VipSlot> =
            Array::try_from(Map::Array(inner)).map_err(map_err(names::VIP_INDEX))?;
        (0..VIP_INDEX_SLOTS)
            .map(|i| index.get(&i, 0).map_err(map_err(names::VIP_INDEX)))
            .filter(|slot| slot.as_ref().map_or(true, |s| s.flags & VIP_SLOT_USED != 0))
            .collect()
    }

    /// The connection-table entry of a flow, if the kernel holds a whole
    /// one (found where the kernel would look, under its seed).
    pub fn connection(&self, key: &FlowKey) -> Result<Option<flows::Tracked>> {
        let (set, tag) = flows::locate(key, &self.config()?);
        let meta: Array<_, FlowMeta> =
            Array::try_from(self.map(names::CONN_META)?).map_err(map_err(names::CONN_META))?;
        let ways: Array<_, FlowWays> =
            Array::try_from(self.map(names::CONN_TABLE)?).map_err(map_err(names::CONN_TABLE))?;
        let meta = meta.get(&set, 0).map_err(map_err(names::CONN_META))?;
        let ways = ways.get(&set, 0).map_err(map_err(names::CONN_TABLE))?;
        Ok(flows::find(&meta, &ways, key, tag))
    }

    /// The backend slot `backend_id` as the kernel holds it.
    pub fn read_backend(&self, backend_id: u32) -> Result<Backend> {
        let array: Array<_, Backend> =
            Array::try_from(self.map(names::BACKENDS)?).map_err(map_err(names::BACKENDS))?;
        array.get(&backend_id, 0).map_err(map_err(names::BACKENDS))
    }

    /// A reader of the counter maps with handles of its own, for other
    /// threads.
    pub fn counter_reader(&self) -> Result<CounterReader> {
        let handle = |name: &'static str| {
            let (Map::PerCpuArray(data) | Map::Array(data)) = self.map(name)? else {
                return Err(DataplaneError::Missing(name));
            };
            data.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::Io {
                    what: format!("duplicating the {name} handle"),
                    source,
                })
        };
        CounterReader::new(
            [
                handle(names::BACKEND_STATS)?,
                handle(names::VIP_STATS)?,
                handle(names::GLOBAL_STATS)?,
                handle(names::ADMISSION_STATS)?,
                handle(names::RULE_STATS)?,
                handle(names::QUIC_STATS)?,
            ],
            (handle(names::CONN_META)?, handle(names::CONN_TABLE)?),
            handle(names::CONFIG)?,
        )
        .map_err(|source| DataplaneError::Io {
            what: "counting CPUs".into(),
            source,
        })
    }

    /// A clock that advances the data plane's epoch, for another thread.
    pub fn epoch_clock(&self) -> Result<clock::EpochClock> {
        let Map::Array(data) = self.map(names::CONFIG)? else {
            return Err(DataplaneError::Missing(names::CONFIG));
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::Io {
                what: "duplicating the CONFIG handle".into(),
                source,
            })?;
        clock::EpochClock::new(fd)
    }

    /// Every counter the installed state uses, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let (backends, vips) = self.installed.as_ref().map_or((0, 0), counted_ids);
        self.counter_reader()?
            .read((backends, vips, 0))
            .map_err(|source| DataplaneError::Io {
                what: "reading the counters".into(),
                source,
            })
    }
}

/// How many backend and VIP counter entries cover `state`'s ids.
pub fn counted_ids(state: &DesiredState) -> (u32, u32) {
    let backends = state.backend_ids().max().map_or(0, |id| id + 1);
    let vips = state.vips.iter().map(|v| v.vip_id + 1).max().unwrap_or(0);
    (backends, vips)
}

/// Every backend id both states use must name the same backend of the same
/// VIP.
fn check_stable_ids(previous: &DesiredState, next: &DesiredState) -> Result<()> {
    let owner = |v: &VipState, b: &state::BackendState| {
        ((v.key, b.addr), format!("{} of VIP {}", b.addr, v.label))
    };
    let before: HashMap<u32, _> = previous
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(move |b| (b.backend_id, owner(v, b))))
        .collect();
    for vip in &next.vips {
        for backend in &vip.backends {
            let (identity, now) = owner(vip, backend);
            if let Some((was_identity, was)) = before.get(&backend.backend_id)
                && *was_identity != identity
            {
                return Err(DataplaneError::IdConflict {
                    backend_id: backend.backend_id,
                    was: was.clone(),
                    now,
                });
            }
        }
    }
    Ok(())
}
