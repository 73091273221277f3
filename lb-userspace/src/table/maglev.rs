//! Weighted Maglev (NSDI 2016, section 3.4) with exact quotas. Each backend
//! walks its own permutation of the slots, derived from its identity, and
//! claims free slots in weighted turns until it holds exactly its quota.
//! Unlike Katran's default, shares follow weights at any weight scale (1:10
//! gets 1:10 of the slots), and the result does not depend on input order.

use crate::table::{Table, TableBuilder, TableError, TableSize, Walker, WeightedBackend};

/// The Maglev table builder.
#[derive(Clone, Copy, Debug, Default)]
pub struct Maglev;

impl TableBuilder for Maglev {
    fn build(&self, backends: &[WeightedBackend], size: TableSize) -> Result<Table, TableError> {
        let (mut walkers, mut table) = Walker::start(backends, size)?;
        let quota: Vec<u64> = walkers.iter().map(|w| u64::from(w.left)).collect();
        let turn_cost = quota.iter().copied().max().unwrap_or(1);
        // Everyone claims in the first round, as in plain Maglev; with equal
        // weights this is exactly Maglev capped at the quotas, and a change of
        // quotas (a backend leaving) only shortens or lengthens the last
        // round instead of shifting every backend's first claim.
        let mut credit = vec![turn_cost - 1; walkers.len()];
        let mut filled = 0u32;
        // Every round each backend earns `quota` credit and claims one slot
        // per `turn_cost` credit: after `turn_cost` rounds each has claimed
        // exactly its quota, interleaved in proportion to the weights.
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
        Ok(table)
    }
}
