//! The backends' side of encapsulation: the decapsulation program attached
//! to an interface, its settings (this host's addresses, GUE's port) and
//! counters, all pinned under one bpffs directory per interface so that
//! decapsulation outlives the command that attached it.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::maps::{DECAP_ADDRESSES, DecapConfig, DecapReason, names};

/// Where decapsulation pins live unless told otherwise.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/fulcrum-decap";

const LINK: &str = "link";

/// The settings for `addresses` (at most `DECAP_ADDRESSES` of each family)
/// and `gue_port` (0: no GUE).
pub fn settings(addresses: &[IpAddr], gue_port: u16) -> anyhow::Result<DecapConfig> {
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
    family: &str,
) -> anyhow::Result<()> {
    let slot = slots.get_mut(usize::from(*count)).with_context(|| {
        format!("more than {DECAP_ADDRESSES} {family} addresses to decapsulate for")
    })?;
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
) -> anyhow::Result<Option<&'static str>> {
    let dir = pin_dir(root, interface);
    if dir.join(LINK).exists() {
        let data = MapData::from_pin(dir.join(names::DECAP_CONFIG))
            .with_context(|| format!("opening the pinned settings in {}", dir.display()))?;
        let mut array: Array<_, DecapConfig> = Array::try_from(aya::maps::Map::Array(data))?;
        array.set(0, config, 0).context("updating the settings")?;
        return Ok(None);
    }
    crate::net::require_interface(interface)?;
    let mut ebpf = EbpfLoader::new()
        .load(crate::DECAP_OBJECT)
        .context("loading the decapsulation object")?;
    {
        let mut array: Array<_, DecapConfig> = Array::try_from(
            ebpf.map_mut(names::DECAP_CONFIG)
                .context("the decapsulation object has no settings map")?,
        )?;
        array.set(0, config, 0).context("writing the settings")?;
    }
    let program: &mut Xdp = ebpf
        .program_mut(names::DECAP_PROGRAM)
        .context("the decapsulation object has no program")?
        .try_into()?;
    program
        .load()
        .context("verifying the decapsulation program")?;
    let (id, mode) = match program.attach(interface, XdpMode::Driver) {
        Ok(id) => (id, "native"),
        Err(_) => (
            program
                .attach(interface, XdpMode::Skb)
                .with_context(|| format!("attaching to {interface}"))?,
            "generic",
        ),
    };
    let link = FdLink::try_from(program.take_link(id)?)
        .map_err(|e| anyhow::anyhow!("the XDP link is not a bpf_link: {e}"))?;
    let pinned = (|| {
        std::fs::create_dir_all(&dir)?;
        for name in [names::DECAP_CONFIG, names::DECAP_STATS] {
            ebpf.map(name)
                .with_context(|| format!("the decapsulation object has no {name}"))?
                .pin(dir.join(name))
                .map_err(|e| anyhow::anyhow!("pinning {name}: {e}"))?;
        }
        link.pin(dir.join(LINK))
            .map_err(|e| anyhow::anyhow!("pinning the link: {e}"))?;
        anyhow::Ok(())
    })();
    if let Err(e) = pinned {
        // The link was not pinned: dropping it detached the program.
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e.context(format!("pinning under {}", dir.display())));
    }
    Ok(Some(mode))
}

/// Detaches the decapsulation program from `interface` and removes its
/// pins. Fails if nothing is pinned for it.
pub fn detach(root: &Path, interface: &str) -> anyhow::Result<()> {
    let dir = pin_dir(root, interface);
    if !dir.join(LINK).exists() {
        bail!(
            "no decapsulation program is pinned for {interface} under {}",
            root.display()
        );
    }
    let link = PinnedLink::from_pin(dir.join(LINK)).context("opening the link pin")?;
    // Dropping the last reference to the link detaches the program.
    drop(link.unpin().context("removing the link pin")?);
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
}

/// The counters of the decapsulation program on `interface`, by reason,
/// summed over CPUs.
pub fn counters(root: &Path, interface: &str) -> anyhow::Result<Vec<(DecapReason, u64)>> {
    let dir = pin_dir(root, interface);
    let data = MapData::from_pin(dir.join(names::DECAP_STATS)).with_context(|| {
        format!(
            "no decapsulation program is pinned for {interface} under {}",
            root.display()
        )
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
