//! The handle on the loaded XDP program: loading and attaching it, writing
//! VIPs, backends and whole lookup tables into its maps, and reading its
//! counters back. Everything that touches aya lives here.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ArrayOfMaps, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::maps::{
    BACKEND_ACTIVE, Backend, CONN_TABLE_ENTRIES, DataplaneConfig, MAX_BACKENDS, Reason,
    TABLE_HEADER_SLOTS, TABLE_MAP_FLAGS, TrafficCounters, VIP_INDEX_SLOTS, VIP_SLOT_USED, VipKey,
    names,
};

use crate::{
    state::DesiredState,
    vip_index::{self, VipIndexError},
};

/// Errors from the data plane, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The eBPF object could not be parsed or its maps created.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The program could not be verified, loaded or attached.
    #[error("{what}: {source}")]
    Program {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: ProgramError,
    },
    /// A map operation failed.
    #[error("map {map}: {source}")]
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
    /// A lookup table is empty or too large.
    #[error("lookup table for VIP {vip_id} has {len} slots; it needs 1..={max}")]
    TableSize {
        /// The VIP.
        vip_id: u32,
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

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Flows the connection table holds.
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

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP: works everywhere, slower.
    Generic,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// The loaded XDP program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    installed: Option<DesiredState>,
}

impl Dataplane {
    /// Loads and verifies the XDP program (not attached anywhere yet).
    pub fn load() -> Result<Self> {
        Self::load_with(Capacities::default())
    }

    /// Loads the program with maps of the given capacities.
    pub fn load_with(capacities: Capacities) -> Result<Self> {
        let backend_entries = capacities.max_backends.saturating_add(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::CONN_TABLE, capacities.connection_table_size)
            .map_max_entries(names::BACKENDS, backend_entries)
            .map_max_entries(names::BACKEND_STATS, backend_entries)
            .load(crate::EBPF_OBJECT)?;
        let program = Self::xdp_program(&mut ebpf)?;
        program.load().map_err(|source| DataplaneError::Program {
            what: "verifying the XDP program".into(),
            source,
        })?;
        Ok(Self {
            ebpf,
            link: None,
            installed: None,
        })
    }

    fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
        ebpf.program_mut(names::PROGRAM)
            .ok_or(DataplaneError::Missing(names::PROGRAM))?
            .try_into()
            .map_err(|source| DataplaneError::Program {
                what: "the program is not XDP".into(),
                source,
            })
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        Self::xdp_program(&mut self.ebpf)
    }

    /// Attaches to `interface`: native mode first, generic if the driver
    /// refuses. The program stays attached until `detach` or drop.
    pub fn attach(&mut self, interface: &str) -> Result<AttachMode> {
        let program = Self::xdp_program(&mut self.ebpf)?;
        let (link, mode) = match program.attach(interface, XdpMode::Driver) {
            Ok(link) => (link, AttachMode::Native),
            Err(ProgramError::UnknownInterface { name }) => {
                return Err(DataplaneError::Program {
                    what: format!("attaching to interface {name:?}"),
                    source: ProgramError::UnknownInterface { name },
                });
            }
            Err(_) => {
                let link = program.attach(interface, XdpMode::Skb).map_err(|source| {
                    DataplaneError::Program {
                        what: format!("attaching to interface {interface:?}"),
                        source,
                    }
                })?;
                (link, AttachMode::Generic)
            }
        };
        self.link = Some(link);
        Ok(mode)
    }

    /// Detaches the program if it is attached.
    pub fn detach(&mut self) -> Result<()> {
        if let Some(link) = self.link.take() {
            Self::xdp_program(&mut self.ebpf)?
                .detach(link)
                .map_err(|source| DataplaneError::Program {
                    what: "detaching".into(),
                    source,
                })?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or(DataplaneError::Missing(name))
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or(DataplaneError::Missing(name))
    }

    /// Sets the interface-wide settings (the source MAC of forwarded frames).
    pub fn set_config(&mut self, config: DataplaneConfig) -> Result<()> {
        let mut array: Array<_, DataplaneConfig> =
            Array::try_from(self.map_mut(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        array.set(0, config, 0).map_err(map_err(names::CONFIG))
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
        self.set_backend(backend_id, Backend::default())
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

    /// Replaces the whole VIP index in one atomic step.
    pub fn install_vip_index(&mut self, entries: &[(VipKey, u32)]) -> Result<()> {
        let slots = vip_index::build(entries)?;
        let used = (0u32..)
            .zip(slots)
            .filter(|(_, slot)| slot.flags & VIP_SLOT_USED != 0);
        self.swap_in(names::VIP_INDEX, 0, (VIP_INDEX_SLOTS, 0), used)
    }

    /// Installs a VIP's whole lookup table in one atomic step (slot 0 holds
    /// the size). The table is written through mmap into a fresh inner map,
    /// then one outer-map update swaps it in: packets see the old table or
    /// the new one, never a mix.
    pub fn install_table(&mut self, vip_id: u32, table: &[u32]) -> Result<()> {
        const MAX_SLOTS: u32 = (u32::MAX >> 4) - TABLE_HEADER_SLOTS;
        let size = u32::try_from(table.len())
            .ok()
            .filter(|&size| size > 0 && size <= MAX_SLOTS)
            .ok_or(DataplaneError::TableSize {
                vip_id,
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
            let mut view = MappedU32Array::map(&inner, entries, true)?;
            view.set(0, size);
            for (slot, &backend_id) in (TABLE_HEADER_SLOTS..).zip(table) {
                view.set(slot, backend_id);
            }
        }
        let mut outer: ArrayOfMaps<_, MapData> =
            ArrayOfMaps::try_from(self.map_mut(names::LOOKUP_TABLES)?)
                .map_err(map_err(names::LOOKUP_TABLES))?;
        outer
            .set(vip_id, &inner, 0)
            .map_err(map_err(names::LOOKUP_TABLES))
    }

    /// Reads back the lookup table the kernel holds for `vip_id` (without the
    /// size header), to verify an install.
    pub fn read_table(&self, vip_id: u32) -> Result<Vec<u32>> {
        let outer: ArrayOfMaps<_, MapData> = ArrayOfMaps::try_from(self.map(names::LOOKUP_TABLES)?)
            .map_err(map_err(names::LOOKUP_TABLES))?;
        let inner = outer
            .get(&vip_id, 0)
            .map_err(map_err(names::LOOKUP_TABLES))?;
        let entries = inner.info().map_err(map_err("lookup table"))?.max_entries();
        let view = MappedU32Array::map(&inner, entries, false)?;
        let size = view.get(0).min(entries.saturating_sub(TABLE_HEADER_SLOTS));
        Ok((TABLE_HEADER_SLOTS..TABLE_HEADER_SLOTS + size)
            .map(|slot| view.get(slot))
            .collect())
    }

    fn max_entries(&self, name: &'static str) -> Result<u32> {
        let data: &MapData = match self.map(name)? {
            aya::maps::Map::LruHashMap(data) | aya::maps::Map::Array(data) => data,
            _ => return Err(DataplaneError::Missing(name)),
        };
        Ok(data.info().map_err(map_err(name))?.max_entries())
    }

    /// The capacities the kernel actually gave the maps.
    pub fn capacities(&self) -> Result<Capacities> {
        Ok(Capacities {
            connection_table_size: self.max_entries(names::CONN_TABLE)?,
            max_backends: self.max_entries(names::BACKENDS)?.saturating_sub(1),
        })
    }

    /// The state installed last.
    pub fn installed(&self) -> Option<&DesiredState> {
        self.installed.as_ref()
    }

    /// Writes a whole desired state: backends, then each VIP's table, then
    /// the VIP index that makes the kernel use them. Reads every table back and
    /// fails if the kernel holds anything else. Only then are backend slots
    /// the previous state used and this one does not freed, so their flows
    /// are hashed into the new tables.
    pub fn install(&mut self, state: &DesiredState) -> Result<()> {
        if let Some(previous) = &self.installed {
            check_stable_ids(previous, state)?;
        }
        for vip in &state.vips {
            for backend in &vip.backends {
                self.set_backend(
                    backend.backend_id,
                    Backend {
                        mac: backend.mac.0,
                        flags: BACKEND_ACTIVE,
                        vip_id: vip.vip_id,
                    },
                )?;
            }
            self.install_table(vip.vip_id, &vip.table)?;
        }
        let entries: Vec<_> = state.vips.iter().map(|v| (v.key, v.vip_id)).collect();
        self.install_vip_index(&entries)?;
        for vip in &state.vips {
            let held = self.read_table(vip.vip_id)?;
            let differing = held.len().abs_diff(vip.table.len())
                + held
                    .iter()
                    .zip(&vip.table)
                    .filter(|(held, want)| held != want)
                    .count();
            if differing > 0 {
                return Err(DataplaneError::Verify {
                    vip: vip.label.clone(),
                    differing,
                    size: vip.table.len(),
                });
            }
        }
        if let Some(previous) = self.installed.take() {
            let kept: std::collections::HashSet<u32> = state.backend_ids().collect();
            for gone in previous.backend_ids().filter(|id| !kept.contains(id)) {
                self.remove_backend(gone)?;
            }
        }
        self.installed = Some(state.clone());
        Ok(())
    }

    fn sum_counters(values: PerCpuValues<TrafficCounters>) -> TrafficCounters {
        values
            .iter()
            .fold(TrafficCounters::default(), |sum, cpu| TrafficCounters {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
                new_flows: sum.new_flows + cpu.new_flows,
            })
    }

    fn traffic(&self, name: &'static str, index: u32) -> Result<TrafficCounters> {
        let array: PerCpuArray<_, TrafficCounters> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        array
            .get(&index, 0)
            .map(Self::sum_counters)
            .map_err(map_err(name))
    }

    /// Traffic forwarded to one backend slot, summed over CPUs.
    pub fn backend_counters(&self, backend_id: u32) -> Result<TrafficCounters> {
        self.traffic(names::BACKEND_STATS, backend_id)
    }

    /// Traffic forwarded for one VIP, summed over CPUs.
    pub fn vip_counters(&self, vip_id: u32) -> Result<TrafficCounters> {
        self.traffic(names::VIP_STATS, vip_id)
    }

    /// The global per-reason counters, summed over CPUs, in `Reason::ALL` order.
    pub fn reason_counters(&self) -> Result<Vec<(Reason, u64)>> {
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(names::GLOBAL_STATS)?)
            .map_err(map_err(names::GLOBAL_STATS))?;
        Reason::ALL
            .iter()
            .map(|&reason| {
                array
                    .get(&(reason as u32), 0)
                    .map(|values| (reason, values.iter().sum()))
                    .map_err(map_err(names::GLOBAL_STATS))
            })
            .collect()
    }
}

/// Every backend id both states use must name the same backend of the same
/// VIP.
fn check_stable_ids(previous: &DesiredState, next: &DesiredState) -> Result<()> {
    let owner = |v: &crate::state::VipState, b: &crate::state::BackendState| {
        ((v.key, b.addr), format!("{} of VIP {}", b.addr, v.label))
    };
    let before: std::collections::HashMap<u32, _> = previous
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

/// An mmap view of a `BPF_F_MMAPABLE` array of `u32`: the kernel lays the
/// values out 8 bytes apart (it rounds element sizes up to 8).
struct MappedU32Array {
    base: *mut u8,
    len: usize,
    entries: u32,
}

const MMAP_ELEMENT_SIZE: usize = 8;

impl MappedU32Array {
    fn map(map: &MapData, entries: u32, writable: bool) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries as usize * MMAP_ELEMENT_SIZE).div_ceil(page) * page;
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // that the length fits the map.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self {
            base: base.cast(),
            len,
            entries,
        })
    }

    /// The address of element `index`.
    fn element(&self, index: u32) -> *mut u32 {
        assert!(
            index < self.entries,
            "index {index} beyond {}",
            self.entries
        );
        // SAFETY: in bounds (checked above); the mapping is 8-byte aligned.
        unsafe { self.base.add(index as usize * MMAP_ELEMENT_SIZE).cast() }
    }

    fn get(&self, index: u32) -> u32 {
        // SAFETY: a valid, aligned element of the live mapping.
        unsafe { self.element(index).read_volatile() }
    }

    fn set(&mut self, index: u32, value: u32) {
        // SAFETY: as in `get`; `map` was asked for a writable mapping.
        unsafe { self.element(index).write_volatile(value) }
    }
}

impl Drop for MappedU32Array {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
