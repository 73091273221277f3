//! Every traffic counter of the data plane read at once: one
//! `BPF_MAP_LOOKUP_BATCH` per per-CPU map instead of one lookup per entry,
//! so 100,000 backends cost a few system calls. The reader holds its own
//! handles on the counter maps, so the sampler and the metrics server read
//! them from their own threads while the controller applies changes.

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use std::collections::HashMap;

use aya::maps::{Array, MapData};
use lb_common::maps::{
    AdmissionCounters, AdmissionDrop, DataplaneConfig, QuicCounters, QuicOutcome, Reason,
    TrafficCounters, names,
};

use super::{
    flows::{self, Census, MappedTable},
    mmap::MappedArray,
    sys::BatchMap,
};

/// A flow counts as active while it sent a packet within this many seconds
/// and the client has not closed it (FIN or RST).
pub const ACTIVE_IDLE_S: u32 = 60;

/// Counters summed over CPUs: per backend slot and per VIP id (indexed by
/// id, up to the largest id asked for), and per reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Indexed by backend id.
    pub backends: Vec<TrafficCounters>,
    /// Indexed by VIP id.
    pub vips: Vec<TrafficCounters>,
    /// Indexed by `Reason`.
    pub reasons: Vec<u64>,
    /// Packets each VIP refused, indexed by VIP id.
    pub refused: Vec<AdmissionCounters>,
    /// Packets each deny rule dropped, indexed by its counter's slot.
    pub rules: Vec<u64>,
    /// Each QUIC VIP's packets by outcome, indexed by VIP id.
    pub quic: Vec<QuicCounters>,
}

impl Counters {
    /// Backend slot `id`'s counters (zero beyond what was read).
    pub fn backend(&self, id: u32) -> TrafficCounters {
        self.backends.get(id as usize).copied().unwrap_or_default()
    }

    /// VIP `id`'s counters (zero beyond what was read).
    pub fn vip(&self, id: u32) -> TrafficCounters {
        self.vips.get(id as usize).copied().unwrap_or_default()
    }

    /// Packets VIP `id` refused, by `AdmissionDrop` (zero beyond what was
    /// read).
    pub fn refused(&self, id: u32) -> AdmissionCounters {
        self.refused.get(id as usize).copied().unwrap_or_default()
    }

    /// VIP `id`'s QUIC packets, by `QuicOutcome` (zero beyond what was
    /// read).
    pub fn quic(&self, id: u32) -> QuicCounters {
        self.quic.get(id as usize).copied().unwrap_or_default()
    }

    /// One reason's count.
    pub fn reason(&self, reason: Reason) -> u64 {
        self.reasons.get(reason as usize).copied().unwrap_or(0)
    }
}

/// Reads the three counter maps and the connection table; cheap to share
/// between threads.
pub struct CounterReader {
    backends: BatchMap<MapData>,
    vips: BatchMap<MapData>,
    reasons: BatchMap<MapData>,
    refused: BatchMap<MapData>,
    rules: BatchMap<MapData>,
    quic: BatchMap<MapData>,
    /// The connection table.
    flows: MappedTable,
    config: Array<MapData, DataplaneConfig>,
    cpus: usize,
    /// Where the next fill sample starts.
    sample_at: std::sync::atomic::AtomicU32,
}

/// Sets of the connection table one fill sample reads (all of a table of
/// the default size, a window of a larger one): their way words only, 64
/// bytes a set, read in place.
pub const CENSUS_SETS: u32 = 65_536;

/// Reads entries `0..len` of the per-CPU array `map`, whose values are
/// `value_words` u64 words per CPU: `len * cpus * value_words` words,
/// entry-major; whatever was asked beyond the array stays 0.
fn read_per_cpu(
    map: &BatchMap<MapData>,
    len: u32,
    cpus: usize,
    value_words: usize,
) -> io::Result<Vec<u64>> {
    let mut values = vec![0u64; len as usize * cpus * value_words];
    let mut keys = vec![0u32; len as usize];
    map.lookup(&mut keys, &mut values)?;
    Ok(values)
}

/// u64 words of one `TrafficCounters`.
const TRAFFIC_WORDS: usize = size_of::<TrafficCounters>() / size_of::<u64>();

/// Sums per-CPU values of `N` u64 words each (`cpus` values an entry).
fn summed<const N: usize>(words: &[u64], cpus: usize) -> Vec<[u64; N]> {
    words
        .chunks_exact(cpus * N)
        .map(|entry| {
            let mut sum = [0u64; N];
            for cpu in entry.chunks_exact(N) {
                for (total, word) in sum.iter_mut().zip(cpu) {
                    *total += word;
                }
            }
            sum
        })
        .collect()
}

/// Sums per-CPU `TrafficCounters` (`TRAFFIC_WORDS` u64 words per CPU).
fn traffic(words: &[u64], cpus: usize) -> Vec<TrafficCounters> {
    summed::<TRAFFIC_WORDS>(words, cpus)
        .into_iter()
        .map(TrafficCounters::from_words)
        .collect()
}

impl CounterReader {
    /// A reader over the given maps (`BACKEND_STATS`, `VIP_STATS`,
    /// `GLOBAL_STATS`, `ADMISSION_STATS`, `RULE_STATS`, `QUIC_STATS`,
    /// (`CONN_META`, `CONN_TABLE`) and `CONFIG` handles).
    pub fn new(
        [backends, vips, reasons, refused, rules, quic]: [OwnedFd; 6],
        (meta, ways): (OwnedFd, OwnedFd),
        config: OwnedFd,
    ) -> io::Result<Self> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| io::Error::new(e.kind(), what))?;
        let batch = |fd, name| -> io::Result<BatchMap<MapData>> {
            let data = MapData::from_fd(fd).map_err(io::Error::other)?;
            Ok(BatchMap::new(data, name)?)
        };
        let config = MapData::from_fd(config)
            .map_err(io::Error::other)
            .and_then(|data| {
                Array::try_from(aya::maps::Map::Array(data)).map_err(io::Error::other)
            })?;
        let sets = MapData::from_fd(meta.try_clone()?)
            .and_then(|data| data.info())
            .map_err(io::Error::other)?
            .max_entries();
        let flows = MappedTable {
            meta: MappedArray::map(meta.as_fd(), sets, false)?,
            ways: MappedArray::map(ways.as_fd(), sets, false)?,
        };
        Ok(Self {
            backends: batch(backends, names::BACKEND_STATS)?,
            vips: batch(vips, names::VIP_STATS)?,
            reasons: batch(reasons, names::GLOBAL_STATS)?,
            refused: batch(refused, names::ADMISSION_STATS)?,
            rules: batch(rules, names::RULE_STATS)?,
            quic: batch(quic, names::QUIC_STATS)?,
            flows,
            config,
            cpus,
            sample_at: Default::default(),
        })
    }

    /// The data plane's settings (clock, timeouts, seed) as the kernel
    /// holds them.
    pub fn config(&self) -> io::Result<DataplaneConfig> {
        self.config.get(&0, 0).map_err(io::Error::other)
    }

    /// Active flows per (VIP id, backend id), from one pass over the
    /// connection table: established flows that sent a packet within
    /// `ACTIVE_IDLE_S` (see `flows::WayState`).
    pub fn active_flows(&self) -> io::Result<HashMap<(u32, u32), u64>> {
        Ok(flows::active_flows(
            &self.flows,
            &self.config()?,
            ACTIVE_IDLE_S,
        ))
    }

    /// Each VIP's clients' sources (by VIP id): of its active flows, and
    /// of the proven flows recorded in the last `recent_s` seconds.
    pub fn sources(&self, recent_s: u32) -> io::Result<HashMap<u32, flows::Sources>> {
        Ok(flows::sources(
            &self.flows,
            &self.config()?,
            ACTIVE_IDLE_S,
            recent_s,
        ))
    }

    /// The connection table's ways by state, from a window of at most
    /// `CENSUS_SETS` sets that moves on at each call, and the table's
    /// size in sets.
    pub fn census(&self) -> io::Result<(Census, u32)> {
        use std::sync::atomic::Ordering::Relaxed;
        let config = self.config()?;
        let sets = self.flows.sets();
        let window = CENSUS_SETS.min(sets);
        let first = self.sample_at.fetch_add(window, Relaxed) % sets.max(1);
        let census = Census::read(&self.flows, first, window, &config);
        Ok((census, sets))
    }

    /// Reads backend slots `0..backends`, VIP ids `0..vips`, deny-rule
    /// counter slots `0..rules` and every reason.
    pub fn read(&self, (backends, vips, rules): (u32, u32, u32)) -> io::Result<Counters> {
        let cpus = self.cpus;
        let reasons = read_per_cpu(&self.reasons, Reason::COUNT, cpus, 1)?
            .chunks_exact(cpus)
            .map(|per_cpu| per_cpu.iter().sum())
            .collect();
        Ok(Counters {
            backends: traffic(
                &read_per_cpu(&self.backends, backends, cpus, TRAFFIC_WORDS)?,
                cpus,
            ),
            vips: traffic(&read_per_cpu(&self.vips, vips, cpus, TRAFFIC_WORDS)?, cpus),
            reasons,
            refused: summed::<{ AdmissionDrop::COUNT }>(
                &read_per_cpu(&self.refused, vips, cpus, AdmissionDrop::COUNT)?,
                cpus,
            )
            .into_iter()
            .map(|drops| AdmissionCounters { drops })
            .collect(),
            rules: summed::<1>(&read_per_cpu(&self.rules, rules, cpus, 1)?, cpus)
                .into_iter()
                .map(|[count]| count)
                .collect(),
            quic: summed::<{ QuicOutcome::COUNT }>(
                &read_per_cpu(&self.quic, vips, cpus, QuicOutcome::COUNT)?,
                cpus,
            )
            .into_iter()
            .map(|packets| QuicCounters { packets })
            .collect(),
        })
    }
}
