//! The lookup-table interface: what a backend is to a table builder (an
//! identity and a weight), which table sizes are allowed, and the one trait
//! every table algorithm implements, and what the algorithms share (exact
//! quotas, the order backends claim in, each backend's permutation of the
//! slots). Maglev and the stable table implement it; `algorithm` names
//! them for the config.

pub mod algorithm;
pub mod maglev;
pub mod stable;
pub mod vip;

pub use vip::VipTable;

use std::net::{IpAddr, SocketAddr};

/// Table sizes the data plane accepts: primes, so that Maglev's skip is
/// coprime with the size. 65537 is the default.
pub const ALLOWED_SIZES: [u32; 12] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65537, 131_071, 262_139, 524_287,
];

/// The default table size.
pub const DEFAULT_SIZE: TableSize = TableSize(65537);

/// A table size from `ALLOWED_SIZES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize(u32);

impl TableSize {
    /// Accepts `size` if it is one of `ALLOWED_SIZES`.
    pub fn new(size: u32) -> Result<Self, TableError> {
        if ALLOWED_SIZES.contains(&size) {
            Ok(Self(size))
        } else {
            Err(TableError::SizeNotAllowed(size))
        }
    }

    /// The number of slots.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// What makes a backend the same backend on every host and in every config
/// order: its address and port, as bytes (IPv4 mapped into IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendIdentity([u8; 18]);

impl BackendIdentity {
    /// The identity of the backend at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut bytes = [0u8; 18];
        bytes[..16].copy_from_slice(&ip.octets());
        bytes[16..].copy_from_slice(&addr.port().to_be_bytes());
        Self(bytes)
    }

    /// A 64-bit hash of the identity, distinct per `seed`. Fixed forever:
    /// tables on every host and every version must agree.
    pub fn hash(&self, seed: u64) -> u64 {
        use lb_common::flow_hash::mix64;
        let word = |range: std::ops::Range<usize>| {
            self.0[range]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        };
        let h = mix64(seed ^ word(0..8));
        let h = mix64(h ^ word(8..16));
        mix64(h ^ word(16..18))
    }
}

/// One input of a table build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightedBackend {
    /// Who the backend is.
    pub identity: BackendIdentity,
    /// Relative share of new flows; 0 = draining (no slots).
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Not one of the allowed primes.
    #[error("table size {0} is not one of the allowed primes {ALLOWED_SIZES:?}")]
    SizeNotAllowed(u32),
    /// No backend has a positive weight.
    #[error("no backend has a positive weight")]
    NoCapacity,
    /// Two backends share an identity.
    #[error("two backends have the same address and port")]
    DuplicateBackend,
    /// More weighted backends than slots.
    #[error("{backends} backends do not fit in a table of {size} slots")]
    TooManyBackends {
        /// Backends with a positive weight.
        backends: usize,
        /// The table size.
        size: u32,
    },
}

/// A lookup table: slot -> index into the builder's input slice.
pub type Table = Vec<u32>;

/// An algorithm that fills a lookup table.
///
/// Contract: the result is a pure function of the set of (identity, weight)
/// pairs and the size. Input order must not matter, each backend's share of
/// slots follows its weight, and weight-0 backends get none.
pub trait TableBuilder {
    /// Builds the table; entries index into `backends`.
    fn build(&self, backends: &[WeightedBackend], size: TableSize) -> Result<Table, TableError>;
}

/// Exact slot quotas: each backend's share of `size` slots by the largest
/// remainder method, ties broken by identity, summing to exactly `size`.
/// Returned in the order of `backends`.
pub fn quotas(backends: &[WeightedBackend], size: TableSize) -> Result<Vec<u32>, TableError> {
    let total: u128 = backends.iter().map(|b| u128::from(b.weight)).sum();
    if total == 0 {
        return Err(TableError::NoCapacity);
    }
    let slots = u128::from(size.get());
    let positive = backends.iter().filter(|b| b.weight > 0).count();
    if positive > size.get() as usize {
        return Err(TableError::TooManyBackends {
            backends: positive,
            size: size.get(),
        });
    }
    let mut quotas: Vec<u32> = backends
        .iter()
        .map(|b| (u128::from(b.weight) * slots / total) as u32)
        .collect();
    let assigned: u32 = quotas.iter().sum();
    let mut by_remainder: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    by_remainder.sort_by_key(|&i| {
        let remainder = u128::from(backends[i].weight) * slots % total;
        (std::cmp::Reverse(remainder), backends[i].identity)
    });
    for &i in by_remainder.iter().take((size.get() - assigned) as usize) {
        quotas[i] += 1;
    }
    Ok(quotas)
}

/// The backends that get slots (a positive quota), in identity order: the
/// order algorithms break ties in, so input order never matters. Refuses
/// two backends with one identity.
fn claimants(backends: &[WeightedBackend], quota: &[u32]) -> Result<Vec<usize>, TableError> {
    let mut order: Vec<usize> = (0..backends.len()).filter(|&i| quota[i] > 0).collect();
    order.sort_by_key(|&i| backends[i].identity);
    if order
        .windows(2)
        .any(|w| backends[w[0]].identity == backends[w[1]].identity)
    {
        return Err(TableError::DuplicateBackend);
    }
    Ok(order)
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;

/// A backend's permutation of `m` slots (`m` prime), as Maglev defines it:
/// its first slot and its step, from its identity. Fixed forever: tables
/// on every host and every version must agree.
fn permutation(identity: &BackendIdentity, m: u64) -> (u64, u64) {
    (
        identity.hash(OFFSET_SEED) % m,
        identity.hash(SKIP_SEED) % (m - 1) + 1,
    )
}

/// A slot no backend has claimed yet.
const EMPTY: u32 = u32::MAX;

/// One backend's walk through its permutation of the slots: how Maglev and
/// the stable table claim them.
struct Walker {
    /// The backend's index in the builder's input.
    index: u32,
    position: u64,
    skip: u64,
    /// Slots still to claim.
    left: u32,
}

impl Walker {
    /// A walker per backend that gets slots, in identity order, and an
    /// empty table of `size` slots.
    fn start(
        backends: &[WeightedBackend],
        size: TableSize,
    ) -> Result<(Vec<Walker>, Table), TableError> {
        let quota = quotas(backends, size)?;
        let m = u64::from(size.get());
        let walkers = claimants(backends, &quota)?
            .into_iter()
            .map(|i| {
                let (position, skip) = permutation(&backends[i].identity, m);
                Walker {
                    index: i as u32,
                    position,
                    skip,
                    left: quota[i],
                }
            })
            .collect();
        Ok((walkers, vec![EMPTY; size.get() as usize]))
    }

    /// Looks at the next slot of the permutation and claims it if it is
    /// free; true if it did.
    fn step(&mut self, table: &mut [u32]) -> bool {
        let slot = &mut table[self.position as usize];
        let free = *slot == EMPTY;
        if free {
            *slot = self.index;
            self.left -= 1;
        }
        self.advance(table.len() as u64);
        free
    }

    /// Moves on to the next slot of the permutation of `m` slots.
    fn advance(&mut self, m: u64) {
        // position and skip are below the table size: one subtraction
        // replaces a modulo (the hot loop of every build).
        self.position += self.skip;
        if self.position >= m {
            self.position -= m;
        }
    }
}

/// The share of slots whose backend (by identity) differs between two
/// tables, each with the backends it indexes.
pub fn moved(before: (&[WeightedBackend], &[u32]), after: (&[WeightedBackend], &[u32])) -> f64 {
    let changed = before
        .1
        .iter()
        .zip(after.1)
        .filter(|&(&b, &a)| before.0[b as usize].identity != after.0[a as usize].identity)
        .count();
    changed as f64 / before.1.len().max(1) as f64
}

/// Backends of `weights` (at most 250), one per weight, at distinct
/// addresses: the input of the builders' equivalence tests.
#[cfg(test)]
fn pool(weights: &[u32]) -> Vec<WeightedBackend> {
    (1u8..)
        .zip(weights)
        .map(|(last, weight)| WeightedBackend {
            identity: BackendIdentity::new(SocketAddr::from(([198, 18, 2, last], 80))),
            weight: *weight,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(last: u8, weight: u32) -> WeightedBackend {
        WeightedBackend {
            identity: BackendIdentity::new(SocketAddr::from(([198, 18, 1, last], 80))),
            weight,
        }
    }

    #[test]
    fn only_listed_primes_are_sizes() {
        assert_eq!(TableSize::new(65537).map(TableSize::get), Ok(65537));
        assert_eq!(
            TableSize::new(65536),
            Err(TableError::SizeNotAllowed(65536))
        );
    }

    #[test]
    fn quotas_sum_to_size_and_follow_weights() {
        let backends = [backend(1, 1), backend(2, 10), backend(3, 0)];
        let q = quotas(&backends, DEFAULT_SIZE).unwrap();
        assert_eq!(q.iter().sum::<u32>(), 65537);
        assert_eq!(q[2], 0);
        assert_eq!(q[0], 5958, "1/11 of 65537 = 5957.9");
        assert_eq!(q[1], 59579);
    }

    #[test]
    fn quotas_refuse_zero_capacity() {
        assert_eq!(
            quotas(&[backend(1, 0)], DEFAULT_SIZE),
            Err(TableError::NoCapacity)
        );
        assert_eq!(quotas(&[], DEFAULT_SIZE), Err(TableError::NoCapacity));
    }

    #[test]
    fn identities_distinguish_port_and_family() {
        let a = BackendIdentity::new("198.18.1.1:80".parse().unwrap());
        let b = BackendIdentity::new("198.18.1.1:81".parse().unwrap());
        let c = BackendIdentity::new("[2001:2::1]:80".parse().unwrap());
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a.hash(1), b.hash(1));
        assert_ne!(a.hash(1), a.hash(2));
    }

    /// Properties every algorithm keeps, checked for each of them, and
    /// the disruption bound each must stay within (multiples of the ideal
    /// when one of at most 100 equal backends leaves).
    mod every_builder {
        use proptest::prelude::*;

        use super::*;
        use crate::table::{algorithm::Algorithm, stable::Stable};

        /// Each algorithm's name, builder and disruption bound.
        fn builders() -> impl Iterator<Item = (&'static str, &'static dyn TableBuilder, f64)> {
            Algorithm::ALL.into_iter().map(|a| {
                // Maglev's bound: about 1 in 300 random pools of 5 to 100
                // moves more than twice the ideal (2.17x at worst seen).
                let bound = match a {
                    Algorithm::Maglev => 2.5,
                    Algorithm::Stable => 1.5,
                };
                (a.name(), a.builder(), bound)
            })
        }

        fn backend(n: u32, weight: u32) -> WeightedBackend {
            let [_, b, c, d] = n.to_be_bytes();
            WeightedBackend {
                identity: BackendIdentity::new(SocketAddr::from(([198, 18 + (b & 1), c, d], 8080))),
                weight,
            }
        }

        fn shares(table: &Table, n: usize) -> Vec<u32> {
            let mut counts = vec![0u32; n];
            for &i in table {
                counts[i as usize] += 1;
            }
            counts
        }

        #[test]
        fn weights_give_exact_quotas_and_zero_gets_nothing() {
            let backends = [backend(1, 1), backend(2, 10), backend(3, 0)];
            for (name, builder, _) in builders() {
                let table = builder.build(&backends, DEFAULT_SIZE).unwrap();
                assert_eq!(shares(&table, 3), vec![5958, 59579, 0], "{name}");
            }
        }

        #[test]
        fn duplicate_identities_are_refused() {
            let backends = [backend(1, 1), backend(1, 2)];
            for (name, builder, _) in builders() {
                assert_eq!(
                    builder.build(&backends, DEFAULT_SIZE),
                    Err(TableError::DuplicateBackend),
                    "{name}"
                );
            }
        }

        /// The stable table by its definition: every (backend, slot) pair
        /// in one order, by cost (`j / weight` for a backend's `j`-th slot),
        /// then identity; a pair is kept when the slot is free and the
        /// backend under quota. Slow, and obviously right.
        fn stable_by_definition(backends: &[WeightedBackend], size: TableSize) -> Table {
            let quota = quotas(backends, size).unwrap();
            let m = u64::from(size.get());
            let order = claimants(backends, &quota).unwrap();
            let mut pairs: Vec<(u64, u64, usize, u64)> = Vec::new();
            for (rank, &i) in order.iter().enumerate() {
                let (offset, skip) = permutation(&backends[i].identity, m);
                for j in 1..=m {
                    let slot = (offset + (j - 1) * skip) % m;
                    pairs.push((j, u64::from(backends[i].weight), rank, slot));
                }
            }
            pairs.sort_by(|a, b| {
                (u128::from(a.0) * u128::from(b.1))
                    .cmp(&(u128::from(b.0) * u128::from(a.1)))
                    .then(a.2.cmp(&b.2))
            });
            let mut left: Vec<u32> = order.iter().map(|&i| quota[i]).collect();
            let mut table = vec![u32::MAX; m as usize];
            for (_, _, rank, slot) in pairs {
                if table[slot as usize] == u32::MAX && left[rank] > 0 {
                    table[slot as usize] = order[rank] as u32;
                    left[rank] -= 1;
                }
            }
            table
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            #[test]
            fn equal_weights_are_balanced(
                ids in prop::collection::btree_set(0u32..100_000, 1..=100),
            ) {
                let backends: Vec<_> = ids.iter().map(|&n| backend(n, 100)).collect();
                for (name, builder, _) in builders() {
                    let table = builder.build(&backends, DEFAULT_SIZE).unwrap();
                    let counts = shares(&table, backends.len());
                    let mean = 65537.0 / backends.len() as f64;
                    let max = f64::from(*counts.iter().max().unwrap());
                    prop_assert!(max / mean <= 1.01, "{name}: max/mean {}", max / mean);
                }
            }

            #[test]
            fn shares_are_the_exact_quotas(
                weighted in prop::collection::btree_map(0u32..100_000, 0u32..1000, 1..=60),
            ) {
                let backends: Vec<_> = weighted.iter().map(|(&n, &w)| backend(n, w)).collect();
                prop_assume!(backends.iter().any(|b| b.weight > 0));
                let quota = quotas(&backends, DEFAULT_SIZE).unwrap();
                for (name, builder, _) in builders() {
                    let table = builder.build(&backends, DEFAULT_SIZE).unwrap();
                    prop_assert_eq!(shares(&table, backends.len()), quota.clone(), "{}", name);
                }
            }

            /// When one of N equal backends leaves, the share of slots
            /// that change owner stays within the builder's bound of the
            /// ideal 1/N.
            #[test]
            fn one_backend_leaving_moves_little(
                ids in prop::collection::btree_set(0u32..100_000, 5..=100),
                leaving in any::<prop::sample::Index>(),
            ) {
                let full: Vec<_> = ids.iter().map(|&n| backend(n, 100)).collect();
                let mut rest = full.clone();
                rest.remove(leaving.index(full.len()));
                let ideal = 1.0 / full.len() as f64;
                for (name, builder, bound) in builders() {
                    let before = builder.build(&full, DEFAULT_SIZE).unwrap();
                    let after = builder.build(&rest, DEFAULT_SIZE).unwrap();
                    let moved = moved((&full, &before), (&rest, &after));
                    prop_assert!(moved <= bound * ideal, "{name}: moved {moved:.4}, ideal {ideal:.4}");
                }
            }

            #[test]
            fn input_order_does_not_change_the_table(
                weighted in prop::collection::btree_map(0u32..100_000, 0u32..50, 1..=40),
                seed in any::<u64>(),
            ) {
                let backends: Vec<_> = weighted.iter().map(|(&n, &w)| backend(n, w)).collect();
                prop_assume!(backends.iter().any(|b| b.weight > 0));
                let mut shuffled = backends.clone();
                let mut state = seed | 1;
                for i in (1..shuffled.len()).rev() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    shuffled.swap(i, (state % (i as u64 + 1)) as usize);
                }
                let size = TableSize::new(4093).unwrap();
                for (name, builder, _) in builders() {
                    let by_identity = |list: &[WeightedBackend]| -> Vec<BackendIdentity> {
                        builder.build(list, size).unwrap().iter().map(|&i| list[i as usize].identity).collect()
                    };
                    prop_assert_eq!(by_identity(&backends), by_identity(&shuffled), "{}", name);
                }
            }

            /// The fast stable table (weights step in groups, tied costs
            /// merged by identity) equals its definition, with weights
            /// whose costs tie across groups (1, 2, 3, 4, 6).
            #[test]
            fn the_stable_table_is_its_definition(
                weighted in prop::collection::btree_map(0u32..100_000, prop::sample::select(vec![0u32, 1, 2, 3, 4, 6]), 1..=12),
            ) {
                let backends: Vec<_> = weighted.iter().map(|(&n, &w)| backend(n, w)).collect();
                prop_assume!(backends.iter().any(|b| b.weight > 0));
                let size = TableSize::new(509).unwrap();
                prop_assert_eq!(Stable.build(&backends, size).unwrap(), stable_by_definition(&backends, size));
            }
        }
    }
}
