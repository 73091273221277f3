//! The lookup-table interface: what a backend is to a table builder (an
//! identity and a weight), which table sizes are allowed, and the one trait
//! every table algorithm implements. Maglev is the first implementation.

pub mod maglev;

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
}
