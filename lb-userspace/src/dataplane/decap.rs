//! The backends' side of encapsulation: the decapsulation program attached
//! to an interface, its settings (this host's addresses, GUE's port) and
//! counters, all pinned under one bpffs directory per interface so that
//! decapsulation outlives the command that attached it.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    EbpfError, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray},
    pin::PinError,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use lb_common::maps::{DECAP_ADDRESSES, DecapConfig, DecapReason, names};

use crate::net::InterfaceError;

/// Where decapsulation pins live unless told otherwise.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/fulcrum-decap";

/// Why decapsulation could not be set up, changed, removed or read. Each
/// message names the step, and the underlying error is its source; a failed
/// pin, and a link that cannot be pinned, quote aya's error instead.
#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    /// More addresses of a family than the program holds.
    #[error("more than {DECAP_ADDRESSES} {family} addresses to decapsulate for")]
    TooManyAddresses {
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// The interface to attach to is not there.
    #[error(transparent)]
    Interface(#[from] InterfaceError),
    /// The settings pinned for an attached program could not be opened.
    #[error("opening the pinned settings in {}", dir.display())]
    OpenSettings {
        /// The pin directory.
        dir: PathBuf,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// The settings could not be written (`writing`) or changed
    /// (`updating`).
    #[error("{step} the settings")]
    WriteSettings {
        /// `writing` or `updating`.
        step: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// A map could not be used.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The decapsulation object could not be loaded.
    #[error("loading the decapsulation object")]
    Load(#[source] EbpfError),
    /// The decapsulation object lacks a map or its program.
    #[error("the decapsulation object has no {0}")]
    Missing(&'static str),
    /// The program could not be used.
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The kernel's verifier refused the program.
    #[error("verifying the decapsulation program")]
    Verify(#[source] ProgramError),
    /// The program could not be attached to the interface.
    #[error("attaching to {interface}")]
    Attach {
        /// The interface.
        interface: String,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// The program was attached through a link that cannot be pinned.
    #[error("the XDP link is not a bpf_link")]
    NotBpfLink(#[source] LinkError),
    /// The pin directory could not be made.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A map could not be pinned.
    #[error("pinning {name}")]
    PinMap {
        /// The map's name.
        name: &'static str,
        /// aya's error.
        #[source]
        error: PinError,
    },
    /// The link could not be pinned.
    #[error("pinning the link")]
    PinLink(#[source] PinError),
    /// Pinning under the pin directory failed (and the program was
    /// detached again).
    #[error("pinning under {}", dir.display())]
    Pin {
        /// The pin directory.
        dir: PathBuf,
        /// The step that failed.
        #[source]
        source: Box<DecapError>,
    },
    /// No decapsulation program is pinned for the interface (its link
    /// pin is missing, or its counters cannot be opened).
    #[error("no decapsulation program is pinned for {interface} under {}", root.display())]
    NotPinned {
        /// The interface.
        interface: String,
        /// The pin root.
        root: PathBuf,
        /// aya's error opening the counters, if that is how it showed
        /// (boxed: it is large).
        #[source]
        source: Option<Box<MapError>>,
    },
    /// The link's pin could not be opened.
    #[error("opening the link pin")]
    OpenLink(#[source] LinkError),
    /// The link's pin could not be removed.
    #[error("removing the link pin")]
    Unpin(#[source] std::io::Error),
    /// The pin directory could not be removed.
    #[error("removing {}", dir.display())]
    Remove {
        /// The pin directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

const LINK: &str = "link";

/// The settings for `addresses` (at most `DECAP_ADDRESSES` of each family)
/// and `gue_port` (0: no GUE).
pub fn settings(addresses: &[IpAddr], gue_port: u16) -> Result<DecapConfig, DecapError> {
    let mut config = DecapConfig {
        gue_port,
        ..DecapConfig::default()
    };
    for address in addresses {
        match address {
            IpAddr::V4(v4) => take(&mut config.v4, &mut config.count4, v4.octets(), "IPv4")?,
            IpAddr::V6(v6) => take(&mut config.v6, &mut config.count6, v6.octets(), "IPv6")?,
        }
    }
    Ok(config)
}

/// Puts `octets` in the next free slot of `slots`.
fn take<const N: usize>(
    slots: &mut [[u8; N]; DECAP_ADDRESSES],
    count: &mut u8,
    octets: [u8; N],
    family: &'static str,
) -> Result<(), DecapError> {
    let slot = slots
        .get_mut(usize::from(*count))
        .ok_or(DecapError::TooManyAddresses { family })?;
    *slot = octets;
    *count += 1;
    Ok(())
}

/// The pin directory of `interface` under `root`.
pub fn pin_dir(root: &Path, interface: &str) -> PathBuf {
    root.join(interface)
}

/// Attaches the decapsulation program to `interface` with `config`, and
/// pins it; if it is attached already, only its settings change. Returns
/// whether it was newly attached, and in which mode.
pub fn attach(
    root: &Path,
    interface: &str,
    config: DecapConfig,
) -> Result<Option<&'static str>, DecapError> {
    let dir = pin_dir(root, interface);
    if dir.join(LINK).exists() {
        let data = MapData::from_pin(dir.join(names::DECAP_CONFIG)).map_err(|source| {
            DecapError::OpenSettings {
                dir: dir.clone(),
                source,
            }
        })?;
        let mut array: Array<_, DecapConfig> = Array::try_from(aya::maps::Map::Array(data))?;
        write_settings(&mut array, config, "updating")?;
        return Ok(None);
    }
    crate::net::require_interface(interface)?;
    let mut ebpf = EbpfLoader::new()
        .load(crate::DECAP_OBJECT)
        .map_err(DecapError::Load)?;
    {
        let mut array: Array<_, DecapConfig> = Array::try_from(
            ebpf.map_mut(names::DECAP_CONFIG)
                .ok_or(DecapError::Missing("settings map"))?,
        )?;
        write_settings(&mut array, config, "writing")?;
    }
    let program: &mut Xdp = ebpf
        .program_mut(names::DECAP_PROGRAM)
        .ok_or(DecapError::Missing("program"))?
        .try_into()?;
    program.load().map_err(DecapError::Verify)?;
    let (id, mode) = match program.attach(interface, XdpMode::Driver) {
        Ok(id) => (id, "native"),
        Err(_) => (
            program
                .attach(interface, XdpMode::Skb)
                .map_err(|source| DecapError::Attach {
                    interface: interface.to_string(),
                    source,
                })?,
            "generic",
        ),
    };
    let link = FdLink::try_from(program.take_link(id)?).map_err(DecapError::NotBpfLink)?;
    let pinned = (|| {
        std::fs::create_dir_all(&dir)?;
        for name in [names::DECAP_CONFIG, names::DECAP_STATS] {
            ebpf.map(name)
                .ok_or(DecapError::Missing(name))?
                .pin(dir.join(name))
                .map_err(|error| DecapError::PinMap { name, error })?;
        }
        link.pin(dir.join(LINK)).map_err(DecapError::PinLink)?;
        Ok(())
    })();
    if let Err(e) = pinned {
        // The link was not pinned: dropping it detached the program.
        let _ = std::fs::remove_dir_all(&dir);
        return Err(DecapError::Pin {
            dir,
            source: Box::new(e),
        });
    }
    Ok(Some(mode))
}

/// Detaches the decapsulation program from `interface` and removes its
/// pins. Fails if nothing is pinned for it.
pub fn detach(root: &Path, interface: &str) -> Result<(), DecapError> {
    let dir = pin_dir(root, interface);
    if !dir.join(LINK).exists() {
        return Err(DecapError::NotPinned {
            interface: interface.to_string(),
            root: root.to_path_buf(),
            source: None,
        });
    }
    let link = PinnedLink::from_pin(dir.join(LINK)).map_err(DecapError::OpenLink)?;
    // Dropping the last reference to the link detaches the program.
    drop(link.unpin().map_err(DecapError::Unpin)?);
    std::fs::remove_dir_all(&dir).map_err(|source| DecapError::Remove { dir, source })
}

/// The counters of the decapsulation program on `interface`, by reason,
/// summed over CPUs.
pub fn counters(root: &Path, interface: &str) -> Result<Vec<(DecapReason, u64)>, DecapError> {
    let dir = pin_dir(root, interface);
    let data = MapData::from_pin(dir.join(names::DECAP_STATS)).map_err(|source| {
        DecapError::NotPinned {
            interface: interface.to_string(),
            root: root.to_path_buf(),
            source: Some(Box::new(source)),
        }
    })?;
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?;
    DecapReason::ALL
        .into_iter()
        .map(|reason| {
            let values = stats.get(&(reason as u32), 0)?;
            Ok((reason, values.iter().sum()))
        })
        .collect()
}

/// Writes `config` into the settings array; `step` says how (updating a
/// pinned program's, or writing a new one's).
fn write_settings<T: std::borrow::BorrowMut<MapData>>(
    array: &mut Array<T, DecapConfig>,
    config: DecapConfig,
    step: &'static str,
) -> Result<(), DecapError> {
    array
        .set(0, config, 0)
        .map_err(|source| DecapError::WriteSettings { step, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_hold_each_family_apart_and_refuse_too_many() {
        let addresses: Vec<IpAddr> = vec![
            "198.18.1.11".parse().unwrap(),
            "2001:2:0:1::11".parse().unwrap(),
        ];
        let config = settings(&addresses, 6080).unwrap();
        assert_eq!(
            (config.count4, config.count6, config.gue_port),
            (1, 1, 6080)
        );
        assert_eq!(config.v4[0], [198, 18, 1, 11]);
        let many: Vec<IpAddr> = (1..=9).map(|i| IpAddr::from([198, 18, 1, i])).collect();
        assert!(settings(&many, 0).is_err());
    }
}
