//! A VIP's lookup table as the rest of the controller sees it: which
//! backend holds each slot, and how many slots each backend holds. The one
//! model of a VIP's table: built once by validation, judged by the plan,
//! and installed.

use std::net::SocketAddr;

use crate::table::{
    BackendIdentity, Table, TableError, TableSize, WeightedBackend, algorithm::Algorithm,
};

/// The lookup table a VIP would get, with each backend's slot count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VipTable {
    /// Backend identities, in config order.
    pub identities: Vec<BackendIdentity>,
    /// Slots per backend, in config order.
    pub slots: Vec<u32>,
    /// Slot -> backend position.
    pub table: Table,
}

impl VipTable {
    /// Builds the table of `size` slots that `algorithm` gives the
    /// backends (address and weight, in config order).
    pub fn build(
        algorithm: Algorithm,
        backends: impl IntoIterator<Item = (SocketAddr, u32)>,
        size: TableSize,
    ) -> Result<Self, TableError> {
        let weighted: Vec<WeightedBackend> = backends
            .into_iter()
            .map(|(address, weight)| WeightedBackend {
                identity: BackendIdentity::new(address),
                weight,
            })
            .collect();
        let table = algorithm.builder().build(&weighted, size)?;
        let mut slots = vec![0u32; weighted.len()];
        for &position in &table {
            slots[position as usize] += 1;
        }
        Ok(Self {
            identities: weighted.iter().map(|b| b.identity).collect(),
            slots,
            table,
        })
    }

    /// Backend `i`'s share of the table (0..=1).
    pub fn share(&self, i: usize) -> f64 {
        f64::from(self.slots[i]) / self.table.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, last], 80))
    }

    #[test]
    fn slots_follow_weights_in_config_order_and_sum_to_the_size() {
        let size = TableSize::new(251).expect("allowed");
        for algorithm in Algorithm::ALL {
            let table =
                VipTable::build(algorithm, [(addr(1), 1), (addr(2), 0), (addr(3), 3)], size)
                    .expect("builds");
            assert_eq!(table.identities[1], BackendIdentity::new(addr(2)));
            assert_eq!(table.slots.iter().sum::<u32>(), 251);
            assert_eq!(
                table.slots[1], 0,
                "{algorithm:?}: a weight of 0 holds no slot"
            );
            assert!(
                (table.share(2) - 0.75).abs() < 0.01,
                "{algorithm:?}: {:?}",
                table.slots
            );
            for (position, &slots) in table.slots.iter().enumerate() {
                let held = table
                    .table
                    .iter()
                    .filter(|&&p| p as usize == position)
                    .count();
                assert_eq!(
                    held, slots as usize,
                    "{algorithm:?}: slot counts match the table"
                );
            }
        }
    }

    #[test]
    fn a_table_without_capacity_is_an_error() {
        let size = TableSize::new(251).expect("allowed");
        assert_eq!(
            VipTable::build(Algorithm::Maglev, [(addr(1), 0)], size),
            Err(TableError::NoCapacity)
        );
    }
}
