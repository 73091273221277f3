//! The record of what is installed, kept beside the pins (in a directory
//! per interface, by default under `/run/fulcrum`): for each table bank,
//! the config text it was built from, its generation, and the ids and MACs
//! it gave VIPs and backends. A bank's record is written durably before the
//! bank goes live, so a restarted controller rebuilds exactly the state the
//! kernel holds, checks it against the kernel, and plans from it.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use lb_common::maps::LAYOUT_VERSION;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, MacAddr},
    daemon::desk::{LeftOut, Ramped},
    dataplane::state::{BackendState, DesiredState, UnknownMac, VipState, ip_from, vip_key},
    durable,
    table::TableSize,
    table::VipTable,
};

/// Where installed records live unless told otherwise.
pub const DEFAULT_ROOT: &str = "/run/fulcrum";

/// What one table bank holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The map layout it was written for.
    pub layout_version: u32,
    /// The generation the bank went live as.
    pub generation: u64,
    /// The config text it was built from.
    pub config: String,
    /// Backends held out of the tables for want of a MAC.
    #[serde(default)]
    pub held_out: Vec<IpAddr>,
    /// Backends the health checker took out: VIP endpoint and identity.
    #[serde(default)]
    pub down: Vec<(String, SocketAddr)>,
    /// Backends ejected as outliers (out of the tables, their slots still
    /// active): VIP endpoint and identity.
    #[serde(default)]
    pub ejected: Vec<(String, SocketAddr)>,
    /// Backends ramping up (slow start), with the fraction of their weight
    /// they took.
    #[serde(default)]
    pub ramped: Vec<Ramped>,
    /// The ids and MACs it gave.
    pub vips: Vec<RecordedVip>,
}

/// A VIP's ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedVip {
    /// Its address.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its IP protocol number.
    pub protocol: u8,
    /// Its id.
    pub vip_id: u32,
    /// Its backends.
    pub backends: Vec<RecordedBackend>,
}

/// A backend's id and MAC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedBackend {
    /// Its identity.
    pub address: SocketAddr,
    /// Its slot.
    pub backend_id: u32,
    /// The MAC it was installed with.
    pub mac: [u8; 6],
}

impl Record {
    /// The record of `state`, built from `config` text with the backends
    /// `held_out` and `left_out` left out of its tables, as `generation`.
    pub fn of(
        state: &DesiredState,
        config: &str,
        (held_out, left_out): (&[IpAddr], &LeftOut<'_>),
        generation: u64,
    ) -> Self {
        Self {
            layout_version: LAYOUT_VERSION,
            generation,
            config: config.to_string(),
            held_out: held_out.to_vec(),
            down: state.down_backends(),
            ejected: left_out.ejected.to_vec(),
            ramped: left_out.ramped.to_vec(),
            vips: state
                .vips
                .iter()
                .map(|v| RecordedVip {
                    address: ip_from(&v.key.addr, v.key.family),
                    port: v.key.port,
                    protocol: v.key.proto,
                    vip_id: v.vip_id,
                    backends: v
                        .backends
                        .iter()
                        .map(|b| RecordedBackend {
                            address: b.addr,
                            backend_id: b.backend_id,
                            mac: b.mac.0,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Rebuilds the config and the exact state this record describes: the
    /// same ids, MACs and tables (held-out, dead and ejected backends at
    /// weight 0, ramping ones at their fraction).
    /// The config returned holds out only the backends without a MAC: it
    /// is the operator's config as the plan judges it.
    pub fn state(&self) -> anyhow::Result<(Config, DesiredState)> {
        let mut config = Config::parse(&self.config).context("the recorded config")?;
        config.hold_out(&self.held_out);
        let judged = config.clone();
        let out: Vec<(String, SocketAddr)> =
            self.down.iter().chain(&self.ejected).cloned().collect();
        config.take_down(&out);
        config.ramp(&self.ramped);
        let skeleton = DesiredState {
            table_size: TableSize::new(config.table_size)?,
            idle: config.idle,
            vips: self
                .vips
                .iter()
                .map(|v| VipState {
                    label: String::new(),
                    key: vip_key(v.address, v.port, v.protocol),
                    vip_id: v.vip_id,
                    backends: v
                        .backends
                        .iter()
                        .map(|b| BackendState {
                            label: String::new(),
                            backend_id: b.backend_id,
                            addr: b.address,
                            weight: 0,
                            mac: MacAddr(b.mac),
                            down: false,
                            server_id: None,
                        })
                        .collect(),
                    table: VipTable::default(),
                    // Only ids are taken from the skeleton.
                    forwarding: config.forwarding,
                    sources: Default::default(),
                    limits: Default::default(),
                    quic: None,
                })
                .collect(),
            encap: config.encapsulation.clone(),
        };
        // A MAC belongs to an address on the segment, whatever the VIP; the
        // first recorded one wins.
        let mut macs = std::collections::HashMap::new();
        for backend in skeleton.vips.iter().flat_map(|v| &v.backends) {
            macs.entry(backend.addr.ip()).or_insert(backend.mac);
        }
        let mut state = DesiredState::build_from(&config, Some(&skeleton), |backend| {
            macs.get(&backend.address).copied().ok_or(UnknownMac {
                address: backend.address,
                why: "no recorded MAC",
            })
        })?;
        state.mark_down(&self.down);
        Ok((judged, state))
    }
}

/// The record directory of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordDir(PathBuf);

impl RecordDir {
    /// `<root>/<interface>`.
    pub fn new(root: &Path, interface: &str) -> Self {
        Self(root.join(interface))
    }

    fn bank_path(&self, bank: u32) -> PathBuf {
        self.0.join(format!("bank-{bank}.json"))
    }

    /// Writes bank `bank`'s record durably (before the bank goes live).
    pub fn write(&self, bank: u32, record: &Record) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating {}", self.0.display()))?;
        let text = serde_json::to_vec(record)?;
        Ok(durable::write(&self.bank_path(bank), &text, 0o600)?)
    }

    /// Bank `bank`'s record.
    pub fn read(&self, bank: u32) -> anyhow::Result<Record> {
        let path = self.bank_path(bank);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn health_path(&self) -> PathBuf {
        self.0.join("health.json")
    }

    /// Records the backends the health checker finds failing, per VIP
    /// endpoint, for the next daemon to start from.
    pub fn write_health(&self, failing: &[crate::policy::health::Down]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating {}", self.0.display()))?;
        let text = serde_json::to_vec(failing)?;
        Ok(durable::write(&self.health_path(), &text, 0o600)?)
    }

    /// The failing backends last recorded; none when nothing was.
    pub fn read_health(&self) -> anyhow::Result<Vec<crate::policy::health::Down>> {
        let path = self.health_path();
        match std::fs::read(&path) {
            Ok(text) => {
                serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Takes the interface's controller lock (`flock` on a file beside the
    /// records), or fails naming the process that holds it. The lock goes
    /// with the returned file, so a crashed controller never leaves it.
    pub fn lock(&self) -> anyhow::Result<std::fs::File> {
        use std::io::{Read as _, Seek as _, Write as _};
        use std::os::fd::AsRawFd as _;
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating {}", self.0.display()))?;
        let path = self.0.join("controller.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "another fulcrum (pid {}) controls this data plane ({}); stop it first",
                holder.trim(),
                path.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(file)
    }

    /// Removes every record.
    pub fn remove(&self) -> anyhow::Result<()> {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.0.display()))
            }
            _ => Ok(()),
        }
    }
}
