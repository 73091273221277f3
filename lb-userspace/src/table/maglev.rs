//! Weighted Maglev (NSDI 2016, section 3.4) with exact quotas. Each backend
//! walks its own permutation of the slots, derived from its identity, and
//! claims free slots in weighted turns until it holds exactly its quota.
//! Unlike Katran's default, shares follow weights at any weight scale (1:10
//! gets 1:10 of the slots), and the result does not depend on input order.

use crate::table::{Table, TableBuilder, TableError, TableSize, Walker, WeightedBackend};

/// The Maglev table builder.
#[derive(Clone, Copy, Debug, Default)]
pub struct Maglev;

/// The round in which a backend of `quota` slots, in rounds of
/// `turn_cost`, claims its `k`-th slot (both from 1).
///
/// Every round each backend earns `quota` credit and claims one slot per
/// `turn_cost` credit, starting from `turn_cost - 1` so that everyone
/// claims in the first round, as in plain Maglev: after round `r` it has
/// claimed `(turn_cost - 1 + r * quota) / turn_cost` slots. With equal
/// weights this is exactly Maglev capped at the quotas, and a change of
/// quotas (a backend leaving) only shortens or lengthens the last round
/// instead of shifting every backend's first claim.
fn round_of(k: u64, quota: u64, turn_cost: u64) -> u64 {
    ((k - 1) * turn_cost + 1).div_ceil(quota)
}

impl TableBuilder for Maglev {
    fn build(&self, backends: &[WeightedBackend], size: TableSize) -> Result<Table, TableError> {
        let (mut walkers, mut table) = Walker::start(backends, size)?;
        let quota: Vec<u64> = walkers.iter().map(|w| u64::from(w.left)).collect();
        let turn_cost = quota.iter().copied().max().unwrap_or(1);
        // Claims go round by round, and in a round in walker order (a
        // walker's claims of one round together). Each walker waits in
        // the list of the round of its next claim, so a round visits only
        // the walkers that claim in it: a heavy backend makes `turn_cost`
        // rounds, in most of which it alone claims.
        let mut due: Vec<Vec<usize>> = vec![Vec::new(); turn_cost as usize + 1];
        for (i, q) in quota.iter().enumerate().filter(|(_, q)| **q > 0) {
            due[round_of(1, *q, turn_cost) as usize].push(i);
        }
        for round in 1..due.len() {
            let mut claimants = std::mem::take(&mut due[round]);
            // Walkers arrive from earlier rounds in any order.
            claimants.sort_unstable();
            for i in claimants {
                let walker = &mut walkers[i];
                loop {
                    while !walker.step(&mut table) {}
                    if walker.left == 0 {
                        break;
                    }
                    let k = quota[i] - u64::from(walker.left) + 1;
                    let next = round_of(k, quota[i], turn_cost) as usize;
                    if next > round {
                        due[next].push(i);
                        break;
                    }
                }
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::table::pool;

    /// The build as rounds over every walker: what `build` must equal.
    fn by_rounds(backends: &[WeightedBackend], size: TableSize) -> Table {
        let (mut walkers, mut table) = Walker::start(backends, size).unwrap();
        let quota: Vec<u64> = walkers.iter().map(|w| u64::from(w.left)).collect();
        let turn_cost = quota.iter().copied().max().unwrap_or(1);
        let mut credit = vec![turn_cost - 1; walkers.len()];
        let mut filled = 0u32;
        while filled < size.get() {
            for ((walker, credit), quota) in walkers.iter_mut().zip(&mut credit).zip(&quota) {
                *credit += quota;
                while *credit >= turn_cost && walker.left > 0 {
                    *credit -= turn_cost;
                    while !walker.step(&mut table) {}
                    filled += 1;
                }
            }
        }
        table
    }

    proptest! {
        #[test]
        fn claims_in_the_order_of_rounds(
            weights in prop::collection::vec(0u32..20, 1..40),
            size in prop::sample::select(vec![251u32, 1021, 4093]),
        ) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let backends = pool(&weights);
            let size = TableSize::new(size).unwrap();
            match Maglev.build(&backends, size) {
                Ok(table) => prop_assert_eq!(table, by_rounds(&backends, size)),
                Err(_) => prop_assert!(Walker::start(&backends, size).is_err()),
            }
        }
    }
}
