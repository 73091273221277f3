//! The data plane's coarse clock: `fulcrum` writes the seconds of the
//! host's monotonic clock into the config map every second, and every
//! packet of a tracked flow records it in its connection entry (no helper
//! call on the packet path). The same clock tells which flows are active.

use std::os::fd::OwnedFd;

use aya::maps::{Array, Map, MapData};
use lb_common::maps::{DataplaneConfig, names};

use super::{Result, map_err};

/// Nanoseconds of the host's monotonic clock: `bpf_ktime_get_ns`'s.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Seconds of the host's monotonic clock (it does not jump, and it keeps
/// counting across restarts of `fulcrum`).
pub fn epoch_now() -> u32 {
    (monotonic_ns() / 1_000_000_000) as u32
}

/// Advances the epoch in the config map, from any thread.
pub struct EpochClock(Array<MapData, DataplaneConfig>);

impl EpochClock {
    /// A clock over the config map behind `fd`.
    pub fn new(fd: OwnedFd) -> Result<Self> {
        let data = MapData::from_fd(fd).map_err(map_err(names::CONFIG))?;
        let array = Array::try_from(Map::Array(data)).map_err(map_err(names::CONFIG))?;
        Ok(Self(array))
    }

    /// Writes the epoch now (keeping the rest of the config).
    pub fn tick(&mut self) -> Result<()> {
        let mut config = self.0.get(&0, 0).map_err(map_err(names::CONFIG))?;
        let now = epoch_now();
        if config.epoch != now {
            config.epoch = now;
            self.0.set(0, config, 0).map_err(map_err(names::CONFIG))?;
        }
        Ok(())
    }
}
