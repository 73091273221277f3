//! Pinning: the program, its link and every map under one bpffs directory
//! per interface, so that forwarding outlives the controller (a crash, a
//! restart, an upgrade); adopting such an instance; and removing it.
//!
//! An instance exists when its `META` map is pinned. `META` holds the map
//! layout version, so a `fulcrum` refuses maps it does not understand
//! instead of misreading them.

use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, Map, MapData},
    programs::{
        ProgramError,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
    sys::SyscallError,
};
use lb_common::maps::{BACKEND_ACTIVE, LAYOUT_VERSION, Meta, VipSlot, names};

use super::sys::{PinnedXdpLink, SysError};
use super::{Dataplane, DataplaneError, Link, Result, XdpChoice, map_err};
use crate::errors::Chain;
use crate::{dataplane::state::DesiredState, net::XdpMode};

/// Where pins live unless told otherwise.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/fulcrum";

const LINK: &str = "link";
const PROGRAM: &str = "program";

/// The pin directory of one interface's data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir(PathBuf);

impl PinDir {
    /// `<root>/<interface>`.
    pub fn new(root: &Path, interface: &str) -> Self {
        Self(root.join(interface))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Whether an instance is pinned here.
    pub fn exists(&self) -> bool {
        self.0.join(names::META).exists()
    }

    fn io(&self, what: &str) -> impl Fn(std::io::Error) -> DataplaneError {
        let what = format!("{what} {}", self.0.display());
        move |source| DataplaneError::Pin {
            what: what.clone(),
            source,
        }
    }

    fn refuse(&self, why: impl Into<String>) -> DataplaneError {
        DataplaneError::Pinned {
            path: self.0.display().to_string(),
            why: why.into(),
        }
    }

    /// The interface index the pinned XDP link is attached to, as the
    /// kernel reports it now: `None` when no link is pinned, or when the
    /// link lost its interface (the interface was deleted).
    pub fn attached_ifindex(&self) -> std::result::Result<Option<u32>, SysError> {
        let link = self.0.join(LINK);
        if !link.exists() {
            return Ok(None);
        }
        PinnedXdpLink::open(&link)?.ifindex()
    }

    /// The pinned link, through aya.
    fn open_link(&self) -> Result<PinnedLink> {
        PinnedLink::from_pin(self.0.join(LINK))
            .map_err(|e| self.refuse(format!("its link pin cannot be opened: {}", Chain(&e))))
    }

    /// Detaches the instance pinned here, if any, and removes every pin.
    /// Works whatever the instance's layout version: it reads no map.
    /// Returns whether there was anything to remove.
    pub fn remove(&self) -> Result<bool> {
        if !self.0.exists() {
            return Ok(false);
        }
        if self.0.join(LINK).exists() {
            let pinned = self.open_link()?;
            // Dropping the last reference to the link detaches the program.
            drop(
                pinned
                    .unpin()
                    .map_err(self.io("removing the link pin in"))?,
            );
        }
        std::fs::remove_dir_all(&self.0).map_err(self.io("removing the pins in"))?;
        Ok(true)
    }
}

fn pin_error(what: &str) -> impl Fn(aya::pin::PinError) -> DataplaneError + '_ {
    move |e| DataplaneError::Pin {
        what: format!("pinning {what}"),
        source: std::io::Error::other(Chain(&e).to_string()),
    }
}

impl Dataplane {
    /// Pins every map and the program under `dir` (created if needed). The
    /// link is pinned separately, once attached (`pin_link`).
    pub fn pin(&mut self, dir: &PinDir) -> Result<()> {
        std::fs::create_dir_all(dir.path()).map_err(dir.io("creating"))?;
        for name in names::OBJECT_MAPS {
            self.map(name)?
                .pin(dir.path().join(name))
                .map_err(pin_error(name))?;
        }
        self.program()?
            .pin(dir.path().join(PROGRAM))
            .map_err(pin_error("the program"))?;
        // META last: an instance counts as pinned only once all of it is.
        self.map(names::META)?
            .pin(dir.path().join(names::META))
            .map_err(pin_error(names::META))
    }

    /// Pins the link this process attached, so that the program stays
    /// attached after the process exits, whatever the reason.
    pub fn pin_link(&mut self, dir: &PinDir) -> Result<()> {
        let Link::Owned(id) = std::mem::replace(&mut self.link, Link::None) else {
            return Err(DataplaneError::Missing("an attached link to pin"));
        };
        let link = self
            .program()?
            .take_link(id)
            .map_err(|source| DataplaneError::Program {
                what: "taking the XDP link".into(),
                source,
            })?;
        let fd_link = FdLink::try_from(link).map_err(|e| DataplaneError::Pin {
            what: "the XDP link is not a bpf_link (kernel older than 5.9?)".into(),
            source: std::io::Error::other(Chain(&e).to_string()),
        })?;
        let pinned = fd_link
            .pin(dir.path().join(LINK))
            .map_err(pin_error("the XDP link"))?;
        self.link = Link::Pinned(pinned);
        Ok(())
    }

    /// Adopts the instance pinned in `dir`: its maps (tables, connection
    /// table, counters) and its link, without touching the program or any
    /// packet. `Ok(None)` when nothing is pinned there.
    ///
    /// Refuses an instance whose map layout differs from this build's, and
    /// one whose link is gone (it forwards nothing; remove it and start
    /// afresh).
    pub fn adopt(dir: &PinDir) -> Result<Option<Self>> {
        if !dir.exists() {
            return Ok(None);
        }
        let meta_data = MapData::from_pin(dir.path().join(names::META))
            .map_err(|e| dir.refuse(format!("its META map cannot be opened: {}", Chain(&e))))?;
        let meta_map = Map::from_map_data(meta_data).map_err(map_err(names::META))?;
        let meta = {
            let array: Array<_, Meta> = Array::try_from(&meta_map).map_err(|e| {
                dir.refuse(format!(
                    "its META map does not have this fulcrum's layout ({}); it was made by \
                     another version: `fulcrum detach` removes it",
                    Chain(&e)
                ))
            })?;
            array.get(&0, 0).map_err(map_err(names::META))?
        };
        if meta.layout_version != LAYOUT_VERSION {
            return Err(dir.refuse(format!(
                "its maps have layout version {}, this fulcrum understands {LAYOUT_VERSION}; \
                 run the fulcrum that made it, or `fulcrum detach` to remove it",
                meta.layout_version
            )));
        }
        if !dir.path().join(LINK).exists() {
            return Err(dir.refuse(
                "it has maps but no link, so it forwards nothing (a start that did not \
                 finish); `fulcrum detach` removes it",
            ));
        }
        let link = dir.open_link()?;
        let mut maps = std::collections::HashMap::new();
        maps.insert(names::META, meta_map);
        for name in names::OBJECT_MAPS {
            let data = MapData::from_pin(dir.path().join(name))
                .map_err(|e| dir.refuse(format!("map {name} cannot be opened: {}", Chain(&e))))?;
            maps.insert(name, Map::from_map_data(data).map_err(map_err(name))?);
        }
        Ok(Some(Self {
            maps,
            ebpf: None,
            link: Link::Pinned(link),
            installed: None,
            admissions: None,
            quic_servers: None,
            bank: meta.bank,
            generation: meta.generation,
            link_mtu: 0,
        }))
    }

    /// Puts this build's XDP program in place of the adopted instance's, in
    /// one step: the new program is loaded against the pinned maps
    /// (tables, connection table, counters stay as they are), verified,
    /// and swapped into the pinned link (aya's `attach_to_link`: a
    /// `BPF_LINK_UPDATE`, Linux 5.7). Packets see the old program or the
    /// new one; none is dropped. This is how an upgrade of `fulcrum` ships
    /// new data-plane code. Returns the new program's id.
    pub fn upgrade_program(&mut self, dir: &PinDir) -> Result<u32> {
        let link = XdpLink::try_from(FdLink::from(dir.open_link()?))
            .map_err(|e| dir.refuse(format!("its link pin holds no XDP link: {}", Chain(&e))))?;
        let (ebpf, id) = Self::load_against(dir, |program| {
            let swapped = program
                .attach_to_link(link)
                .map_err(|source| match source {
                    // The kernel's reason, not only the call's name.
                    ProgramError::SyscallError(SyscallError { io_error, .. }) => {
                        dir.io("swapping the program of the link in")(io_error)
                    }
                    source => DataplaneError::Program {
                        what: "swapping the program of the link".into(),
                        source,
                    },
                })?;
            // The program took a handle on the link; this process holds it
            // through `self.link` already, and `detach` must be able to
            // release it alone.
            drop(program.take_link(swapped));
            Ok(())
        })?;
        self.ebpf = Some(ebpf);
        Ok(id)
    }

    /// Attaches this build's XDP program to `interface` again, on the
    /// pinned maps, with a new pinned link in place of the old one: for an
    /// adopted instance whose link lost its interface (detached from
    /// outside, or the interface was deleted and made again), which
    /// forwards nothing. Established flows keep their connection entries.
    pub fn reattach(
        &mut self,
        dir: &PinDir,
        interface: &str,
        choice: XdpChoice,
    ) -> Result<XdpMode> {
        let (ebpf, _) = Self::load_against(dir, |_| Ok(()))?;
        self.ebpf = Some(ebpf);
        self.link = Link::None;
        let mode = self.attach(interface, choice)?;
        let old = dir.path().join(LINK);
        std::fs::remove_file(&old).map_err(dir.io("removing the old link pin in"))?;
        self.pin_link(dir)?;
        Ok(mode)
    }

    /// Loads and verifies this build's program against the maps pinned in
    /// `dir`, runs `install` on it (which puts it to work), then pins it in
    /// place of the old program pin, so that a later adoption sees what
    /// runs. Returns the object and the program's id.
    fn load_against(
        dir: &PinDir,
        install: impl FnOnce(&mut aya::programs::Xdp) -> Result<()>,
    ) -> Result<(aya::Ebpf, u32)> {
        let mut loader = aya::EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = names::OBJECT_MAPS
            .iter()
            .map(|&name| (name, dir.path().join(name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(crate::EBPF_OBJECT)?;
        // The new tail-called programs first: the old XDP program hands
        // them jobs of the same layout (the layout version says so).
        Self::load_programs(&mut ebpf)?;
        let program = Self::xdp_program(&mut ebpf)?;
        install(program)?;
        let id = program
            .info()
            .map_err(|source| DataplaneError::Program {
                what: "the new XDP program's id".into(),
                source,
            })?
            .id();
        let pin = dir.path().join(PROGRAM);
        let _ = std::fs::remove_file(&pin);
        program.pin(&pin).map_err(pin_error("the program"))?;
        Ok((ebpf, id))
    }

    /// Takes `state` as what is installed, after checking that the kernel
    /// holds it: the VIP index names exactly its VIPs, each pointing at its
    /// table in the bank in use, every table matches, and every backend
    /// slot it uses holds that backend. For adopting a pinned instance.
    pub fn adopt_state(&mut self, state: DesiredState, bank: u32, generation: u64) -> Result<()> {
        let mut held: Vec<VipSlot> = self
            .read_vip_index()?
            .iter()
            .map(|s| VipSlot { flags: 0, ..*s })
            .collect();
        let mut want: Vec<VipSlot> = state.vips.iter().map(|v| v.slot(bank)).collect();
        let order = |a: &VipSlot, b: &VipSlot| a.vip_id.cmp(&b.vip_id);
        held.sort_by(order);
        want.sort_by(order);
        if held != want {
            return Err(DataplaneError::Verify {
                vip: "(the VIP index)".into(),
                differing: held.len().abs_diff(want.len()).max(1),
                size: want.len(),
            });
        }
        self.verify_tables(&state, bank)?;
        for vip in &state.vips {
            for backend in &vip.backends {
                let slot = self.read_backend(backend.backend_id)?;
                let wanted = backend.slot(vip, slot.flags & BACKEND_ACTIVE != 0, slot.generation);
                if slot != wanted {
                    return Err(DataplaneError::Verify {
                        vip: format!("{} backend {}", vip.label, backend.label),
                        differing: 1,
                        size: 1,
                    });
                }
            }
        }
        self.bank = bank;
        self.generation = generation;
        self.installed = Some(state);
        self.write_meta()
    }

    /// The bank packets use: the one the VIP index points into (`META`
    /// may lag it by one apply after a crash), else `META`'s.
    pub fn live_bank(&self) -> Result<u32> {
        Ok(self
            .read_vip_index()?
            .first()
            .map_or(self.bank, |slot| slot.table_id / lb_common::maps::MAX_VIPS))
    }
}
