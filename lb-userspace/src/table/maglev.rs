//! Weighted Maglev (NSDI 2016, section 3.4) with exact quotas. Each backend
//! walks its own permutation of the slots, derived from its identity, and
//! claims free slots in weighted turns until it holds exactly its quota.
//! Unlike Katran's default, shares follow weights at any weight scale (1:10
//! gets 1:10 of the slots), and the result does not depend on input order.

use crate::table::{Table, TableBuilder, TableError, TableSize, WeightedBackend, quotas};

const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;
const EMPTY: u32 = u32::MAX;

/// The Maglev table builder.
#[derive(Clone, Copy, Debug, Default)]
pub struct Maglev;

/// One backend's walk through its permutation.
struct Walker {
    index: u32,
    position: u64,
    skip: u64,
    quota: u32,
    claimed: u32,
    credit: u64,
}

impl TableBuilder for Maglev {
    fn build(&self, backends: &[WeightedBackend], size: TableSize) -> Result<Table, TableError> {
        let quota = quotas(backends, size)?;
        let m = u64::from(size.get());
        let mut order: Vec<usize> = (0..backends.len()).filter(|&i| quota[i] > 0).collect();
        order.sort_by_key(|&i| backends[i].identity);
        if order
            .windows(2)
            .any(|w| backends[w[0]].identity == backends[w[1]].identity)
        {
            return Err(TableError::DuplicateBackend);
        }
        let mut walkers: Vec<Walker> = order
            .iter()
            .map(|&i| {
                let identity = backends[i].identity;
                Walker {
                    index: i as u32,
                    position: identity.hash(OFFSET_SEED) % m,
                    skip: identity.hash(SKIP_SEED) % (m - 1) + 1,
                    quota: quota[i],
                    claimed: 0,
                    credit: 0,
                }
            })
            .collect();
        let turn_cost = u64::from(walkers.iter().map(|w| w.quota).max().unwrap_or(1));
        // Everyone claims in the first round, as in plain Maglev; with equal
        // weights this is exactly Maglev capped at the quotas, and a change of
        // quotas (a backend leaving) only shortens or lengthens the last
        // round instead of shifting every backend's first claim.
        for walker in &mut walkers {
            walker.credit = turn_cost - 1;
        }
        let mut table = vec![EMPTY; size.get() as usize];
        let mut filled = 0u32;
        // Every round each backend earns `quota` credit and claims one slot
        // per `turn_cost` credit: after `turn_cost` rounds each has claimed
        // exactly its quota, interleaved in proportion to the weights.
        while filled < size.get() {
            for walker in &mut walkers {
                walker.credit += u64::from(walker.quota);
                while walker.credit >= turn_cost && walker.claimed < walker.quota {
                    walker.credit -= turn_cost;
                    loop {
                        let slot = &mut table[walker.position as usize];
                        // position and skip are below m, so one subtraction
                        // replaces a modulo (the hot loop of the build).
                        walker.position += walker.skip;
                        if walker.position >= m {
                            walker.position -= m;
                        }
                        if *slot == EMPTY {
                            *slot = walker.index;
                            break;
                        }
                    }
                    walker.claimed += 1;
                    filled += 1;
                }
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::table::{BackendIdentity, DEFAULT_SIZE};

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
    fn one_to_ten_weights_get_one_to_ten_slots() {
        let backends = [backend(1, 1), backend(2, 10)];
        let table = Maglev.build(&backends, DEFAULT_SIZE).unwrap();
        let counts = shares(&table, 2);
        assert_eq!(counts, vec![5958, 59579]);
    }

    #[test]
    fn weight_zero_gets_no_slot() {
        let backends = [backend(1, 1), backend(2, 0), backend(3, 1)];
        let table = Maglev.build(&backends, DEFAULT_SIZE).unwrap();
        assert_eq!(shares(&table, 3)[1], 0);
    }

    #[test]
    fn duplicate_identities_are_refused() {
        let backends = [backend(1, 1), backend(1, 2)];
        assert_eq!(
            Maglev.build(&backends, DEFAULT_SIZE),
            Err(TableError::DuplicateBackend)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn equal_weights_are_balanced(
            ids in prop::collection::btree_set(0u32..100_000, 1..=100),
        ) {
            let backends: Vec<_> = ids.iter().map(|&n| backend(n, 100)).collect();
            let table = Maglev.build(&backends, DEFAULT_SIZE).unwrap();
            let counts = shares(&table, backends.len());
            let mean = 65537.0 / backends.len() as f64;
            let max = f64::from(*counts.iter().max().unwrap());
            prop_assert!(max / mean <= 1.01, "max/mean {}", max / mean);
        }

        #[test]
        fn weighted_shares_follow_weights(
            weighted in prop::collection::btree_map(0u32..100_000, 0u32..1000, 1..=60),
        ) {
            let backends: Vec<_> = weighted.iter().map(|(&n, &w)| backend(n, w)).collect();
            let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
            prop_assume!(total > 0);
            let table = Maglev.build(&backends, DEFAULT_SIZE).unwrap();
            for (b, count) in backends.iter().zip(shares(&table, backends.len())) {
                let want = b.weight as f64 / total as f64 * 100.0;
                let got = f64::from(count) / 65537.0 * 100.0;
                prop_assert!((want - got).abs() <= 0.2, "weight share {want:.3}% got {got:.3}%");
            }
        }

        /// Minimal disruption: when one of N equal backends leaves, the
        /// share of slots that change owner stays within 2x the ideal 1/N.
        #[test]
        fn one_backend_leaving_moves_little(
            ids in prop::collection::btree_set(0u32..100_000, 5..=100),
            leaving in any::<prop::sample::Index>(),
        ) {
            let full: Vec<_> = ids.iter().map(|&n| backend(n, 100)).collect();
            let gone = leaving.index(full.len());
            let mut rest = full.clone();
            rest.remove(gone);
            let before = Maglev.build(&full, DEFAULT_SIZE).unwrap();
            let after = Maglev.build(&rest, DEFAULT_SIZE).unwrap();
            let moved = before
                .iter()
                .zip(&after)
                .filter(|&(&b, &a)| full[b as usize].identity != rest[a as usize].identity)
                .count() as f64
                / 65537.0;
            let ideal = 1.0 / full.len() as f64;
            prop_assert!(moved <= 2.0 * ideal, "moved {moved:.4}, ideal {ideal:.4}");
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
            let by_identity = |list: &[WeightedBackend]| -> Vec<BackendIdentity> {
                Maglev.build(list, size).unwrap().iter().map(|&i| list[i as usize].identity).collect()
            };
            prop_assert_eq!(by_identity(&backends), by_identity(&shuffled));
        }
    }
}
