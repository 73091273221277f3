//! What the hosts of one ECMP group must share, made comparable: the flow
//! hash seed's fingerprint, each VIP's lookup table spelt in backend
//! identities (address and port, never host-local slot ids) with its
//! digest, and the comparison of two hosts' tables slot by slot.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_common::flow_hash::{FlowSeed, flow_hash};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::state::{VipState, flow_key},
    policy::validate::Validation,
};

/// How many bits of a digest are shown: few enough to be exact in a
/// Prometheus sample (a float with 53 bits of mantissa).
const DIGEST_BITS: u32 = 48;

/// Differing slots a comparison lists, of each VIP.
const SHOWN_SLOTS: usize = 8;

/// The seed's fingerprint: the hash of a fixed flow under it. The hash is
/// keyed by the seed, so the fingerprint tells two seeds apart without
/// telling anything about either.
pub fn seed_fingerprint(seed: &FlowSeed) -> String {
    let probe = flow_key(
        SocketAddr::from(([198, 18, 0, 1], 1)),
        SocketAddr::from(([198, 18, 0, 2], 2)),
        lb_common::maps::PROTO_TCP,
    );
    format!("{:012x}", flow_hash(&probe, seed) >> (64 - DIGEST_BITS))
}

/// The host's place in a group, for `status` and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    /// The group's name, when the config names one.
    pub name: Option<String>,
    /// The fingerprint of the seed the data plane hashes with.
    pub seed_fingerprint: String,
}

/// One VIP's lookup table in identities: what every host of a group must
/// hold alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipTableDump {
    /// Its label.
    pub name: String,
    /// `address:port/protocol`: what a group's hosts match VIPs by.
    pub endpoint: String,
    /// Its backends' identities; `slots` index into this list.
    pub backends: Vec<SocketAddr>,
    /// Slot -> position in `backends`.
    pub slots: Vec<u32>,
    /// The table's digest.
    pub digest: String,
}

impl VipTableDump {
    /// The dump of `slots` (slot -> position in `backends`).
    pub fn new(name: &str, endpoint: String, backends: Vec<SocketAddr>, slots: Vec<u32>) -> Self {
        let digest = spelt(digest(&backends, &slots));
        Self {
            name: name.to_string(),
            endpoint,
            backends,
            slots,
            digest,
        }
    }

    fn identity(&self, slot: usize) -> Option<SocketAddr> {
        let position = *self.slots.get(slot)?;
        self.backends.get(position as usize).copied()
    }

    /// Slots per backend identity.
    fn shares(&self) -> BTreeMap<SocketAddr, u32> {
        let mut shares = BTreeMap::new();
        for slot in 0..self.slots.len() {
            if let Some(identity) = self.identity(slot) {
                *shares.entry(identity).or_default() += 1;
            }
        }
        shares
    }
}

/// A table's digest: FNV-1a over every slot's backend identity, in slot
/// order, cut to `DIGEST_BITS`. Equal tables have equal digests on any
/// host, whatever slot ids and backend order each host uses.
pub fn digest(backends: &[SocketAddr], slots: &[u32]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let spelt: Vec<[u8; 18]> = backends.iter().map(|b| identity_bytes(*b)).collect();
    let mut hash = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    };
    eat(&(slots.len() as u64).to_be_bytes());
    for &position in slots {
        match spelt.get(position as usize) {
            Some(bytes) => eat(bytes),
            None => eat(&[0xff; 18]),
        }
    }
    hash >> (64 - DIGEST_BITS)
}

/// A digest as `status` and `tables` show it.
pub fn spelt(digest: u64) -> String {
    format!("{digest:012x}")
}

/// The digest of an installed VIP's table.
pub fn vip_digest(vip: &VipState) -> u64 {
    let backends: Vec<SocketAddr> = vip.backends.iter().map(|b| b.addr).collect();
    digest(&backends, &vip.table.table)
}

fn identity_bytes(addr: SocketAddr) -> [u8; 18] {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut bytes = [0; 18];
    bytes[..16].copy_from_slice(&ip.octets());
    bytes[16..].copy_from_slice(&addr.port().to_be_bytes());
    bytes
}

/// One host's tables, as `fulcrum tables` prints them and `fulcrum
/// compare` reads them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    /// Where they came from: a config file, a running daemon.
    pub source: String,
    /// The group the host says it belongs to.
    pub group: Option<String>,
    /// The seed's fingerprint; `None` for a config without a seed (each
    /// host would generate its own).
    pub seed_fingerprint: Option<String>,
    /// Every VIP's table.
    pub vips: Vec<VipTableDump>,
}

impl Tables {
    /// The tables a valid config builds (what every host running it
    /// installs, health checks aside).
    pub fn of_config(source: &str, validation: &Validation) -> Option<Self> {
        let config = validation.config.as_ref()?;
        let vips = config
            .vips
            .iter()
            .zip(&validation.tables)
            .map(|(vip, table)| {
                let table = table.as_ref()?;
                Some(VipTableDump::new(
                    &vip.label(),
                    vip.endpoint(),
                    vip.backends.iter().map(|b| vip.backend_addr(b)).collect(),
                    table.table.clone(),
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            source: source.to_string(),
            group: config.group.as_ref().map(|g| g.name.clone()),
            seed_fingerprint: config
                .flow_hash_seed
                .as_ref()
                .map(|s| seed_fingerprint(&s.0)),
            vips,
        })
    }
}

/// How one VIP's tables compare on two hosts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VipComparison {
    /// `address:port/protocol`.
    pub endpoint: String,
    /// Its label on each side (`None`: the side has no such VIP).
    pub names: [Option<String>; 2],
    /// Whether both sides hold the same table.
    pub identical: bool,
    /// Table sizes on each side.
    pub sizes: [usize; 2],
    /// Slots whose backend differs (all of them when the sizes differ).
    pub differing_slots: usize,
    /// The first few differing slots: slot, and each side's backend.
    pub first_differences: Vec<(usize, Option<SocketAddr>, Option<SocketAddr>)>,
    /// Backends whose slot counts differ: identity and each side's count.
    pub shares: Vec<(SocketAddr, [u32; 2])>,
}

/// The comparison of two hosts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The two sources.
    pub sources: [String; 2],
    /// Whether both hash with the same seed (`false` also when either
    /// seed is unknown).
    pub same_seed: bool,
    /// Every VIP on either side, by endpoint.
    pub vips: Vec<VipComparison>,
}

impl Comparison {
    /// Whether every flow goes to the same backend on both hosts.
    pub fn identical(&self) -> bool {
        self.same_seed && self.vips.iter().all(|v| v.identical)
    }
}

/// Compares two hosts' tables, VIP by VIP (matched by endpoint).
pub fn compare(a: &Tables, b: &Tables) -> Comparison {
    let mut endpoints: Vec<&str> = a.vips.iter().map(|v| v.endpoint.as_str()).collect();
    for vip in &b.vips {
        if !endpoints.contains(&vip.endpoint.as_str()) {
            endpoints.push(&vip.endpoint);
        }
    }
    let find = |tables: &'_ Tables, endpoint: &str| {
        tables.vips.iter().find(|v| v.endpoint == endpoint).cloned()
    };
    let vips = endpoints
        .into_iter()
        .map(|endpoint| compare_vip(endpoint, [find(a, endpoint), find(b, endpoint)]))
        .collect();
    Comparison {
        sources: [a.source.clone(), b.source.clone()],
        same_seed: a.seed_fingerprint.is_some() && a.seed_fingerprint == b.seed_fingerprint,
        vips,
    }
}

fn compare_vip(endpoint: &str, sides: [Option<VipTableDump>; 2]) -> VipComparison {
    let empty = VipTableDump::new("", endpoint.to_string(), Vec::new(), Vec::new());
    let [a, b] = [&sides[0], &sides[1]].map(|side| side.as_ref().unwrap_or(&empty));
    let longest = a.slots.len().max(b.slots.len());
    let mut differing_slots = 0;
    let mut first_differences = Vec::new();
    for slot in 0..longest {
        let (left, right) = (a.identity(slot), b.identity(slot));
        if left != right || a.slots.len() != b.slots.len() {
            differing_slots += 1;
            if first_differences.len() < SHOWN_SLOTS {
                first_differences.push((slot, left, right));
            }
        }
    }
    let (left, right) = (a.shares(), b.shares());
    let mut shares: Vec<(SocketAddr, [u32; 2])> = left
        .keys()
        .chain(right.keys())
        .map(|identity| {
            let count = |side: &BTreeMap<SocketAddr, u32>| side.get(identity).copied().unwrap_or(0);
            (*identity, [count(&left), count(&right)])
        })
        .filter(|(_, [l, r])| l != r)
        .collect();
    shares.sort();
    shares.dedup();
    let identical = sides.iter().all(Option::is_some) && differing_slots == 0;
    let sizes = [a.slots.len(), b.slots.len()];
    VipComparison {
        endpoint: endpoint.to_string(),
        names: sides.map(|side| side.map(|v| v.name)),
        identical,
        sizes,
        differing_slots,
        first_differences,
        shares,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, last], 80))
    }

    fn tables(source: &str, vips: Vec<VipTableDump>) -> Tables {
        Tables {
            source: source.into(),
            group: Some("edge".into()),
            seed_fingerprint: Some("0123456789ab".into()),
            vips,
        }
    }

    #[test]
    fn the_digest_sees_identities_not_positions() {
        // One table, its backends listed in two orders.
        let one = digest(&[addr(1), addr(2)], &[0, 1, 1, 0, 1]);
        let other = digest(&[addr(2), addr(1)], &[1, 0, 0, 1, 0]);
        assert_eq!(one, other);
        assert!(one < 1 << DIGEST_BITS);
        // One slot changed.
        assert_ne!(one, digest(&[addr(1), addr(2)], &[0, 1, 1, 1, 1]));
        // Another port.
        let moved = SocketAddr::from(([198, 18, 0, 1], 81));
        assert_ne!(one, digest(&[moved, addr(2)], &[0, 1, 1, 0, 1]));
    }

    #[test]
    fn the_seed_fingerprint_tells_seeds_apart() {
        let a = seed_fingerprint(&FlowSeed([1, 2]));
        assert_eq!(a, seed_fingerprint(&FlowSeed([1, 2])));
        assert_ne!(a, seed_fingerprint(&FlowSeed([1, 3])));
        assert_eq!(a.len(), 12);
    }

    #[test]
    fn a_comparison_names_the_slots_and_shares_that_differ() {
        let web = |slots: Vec<u32>| {
            VipTableDump::new(
                "web",
                "198.18.100.1:80/tcp".into(),
                vec![addr(1), addr(2)],
                slots,
            )
        };
        let dns = VipTableDump::new(
            "dns",
            "198.18.100.2:53/udp".into(),
            vec![addr(3)],
            vec![0; 7],
        );
        let a = tables("a", vec![web(vec![0, 1, 0, 1, 0, 1, 0]), dns.clone()]);
        let same = compare(
            &a,
            &tables("b", vec![dns.clone(), web(vec![0, 1, 0, 1, 0, 1, 0])]),
        );
        assert!(same.identical(), "{same:?}");

        let b = tables("b", vec![web(vec![0, 1, 1, 1, 0, 1, 1])]);
        let differ = compare(&a, &b);
        assert!(!differ.identical());
        let vip = &differ.vips[0];
        assert_eq!(vip.differing_slots, 2);
        assert_eq!(
            vip.first_differences,
            vec![
                (2, Some(addr(1)), Some(addr(2))),
                (6, Some(addr(1)), Some(addr(2)))
            ]
        );
        assert_eq!(vip.shares, vec![(addr(1), [4, 2]), (addr(2), [3, 5])]);
        // The VIP only one side has.
        assert_eq!(differ.vips[1].names, [Some("dns".into()), None]);
        assert!(!differ.vips[1].identical);

        let mut reseeded = tables("c", a.vips.clone());
        reseeded.seed_fingerprint = Some("ba9876543210".into());
        let other_seed = compare(&a, &reseeded);
        assert!(other_seed.vips.iter().all(|v| v.identical));
        assert!(!other_seed.identical());
    }
}
