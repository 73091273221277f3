//! The VIP index the XDP program probes: an open-addressed array built here
//! in one piece, so that the kernel gets a whole new index in one atomic
//! update and each probe is an inlined array access instead of a hash-map
//! lookup. Pure: key -> slot layout, with linear probing from the home slot
//! `flow_hash::vip_home_slot` computes (the kernel uses the same function).

use lb_common::{
    flow_hash::vip_home_slot,
    maps::{VIP_INDEX_MAX_PROBES, VIP_INDEX_SLOTS, VIP_SLOT_USED, VipKey, VipSlot},
};

/// Why an index could not be laid out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VipIndexError {
    /// The same address, port and protocol twice.
    #[error("duplicate VIP {0:?}")]
    Duplicate(VipKey),
    /// No free slot within the probe bound (or the index is full).
    #[error("no slot within {VIP_INDEX_MAX_PROBES} probes for VIP {0:?}")]
    Full(VipKey),
}

/// Lays out VIP slots (key, VIP id, table id and flags; `VIP_SLOT_USED`
/// is set here) into `VIP_INDEX_SLOTS` slots.
pub fn build(entries: &[VipSlot]) -> Result<Vec<VipSlot>, VipIndexError> {
    let mut slots = vec![VipSlot::default(); VIP_INDEX_SLOTS as usize];
    for entry in entries {
        let key = entry.key;
        let home = vip_home_slot(&key);
        let mut placed = false;
        for probe in 0..VIP_INDEX_MAX_PROBES {
            let slot = &mut slots[((home + probe) & (VIP_INDEX_SLOTS - 1)) as usize];
            if slot.flags & VIP_SLOT_USED == 0 {
                *slot = VipSlot {
                    flags: entry.flags | VIP_SLOT_USED,
                    ..*entry
                };
                placed = true;
                break;
            }
            if slot.key == key {
                return Err(VipIndexError::Duplicate(key));
            }
        }
        if !placed {
            return Err(VipIndexError::Full(key));
        }
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use lb_common::maps::MAX_VIPS;

    use super::*;
    use crate::dataplane::state::vip_key;

    /// Finds `key` the way the XDP program does.
    fn find(slots: &[VipSlot], key: &VipKey) -> Option<(u32, u32)> {
        let home = vip_home_slot(key);
        (0..VIP_INDEX_MAX_PROBES)
            .map(|probe| &slots[((home + probe) & (VIP_INDEX_SLOTS - 1)) as usize])
            .take_while(|slot| slot.flags & VIP_SLOT_USED != 0)
            .find(|slot| slot.key.same(key))
            .map(|slot| (slot.vip_id, slot.table_id))
    }

    fn key(n: u32, port: u16) -> VipKey {
        let [_, a, b, c] = n.to_be_bytes();
        vip_key([198, 18 + (a & 1), b, c].into(), port, 6)
    }

    /// A slot for `key` with VIP id `id` (its table id, too).
    fn entry(key: VipKey, id: u32) -> VipSlot {
        VipSlot {
            key,
            vip_id: id,
            flags: 0,
            table_id: id + MAX_VIPS,
            ..VipSlot::default()
        }
    }

    #[test]
    fn every_vip_is_found_and_others_are_not() {
        let entries: Vec<_> = (0..MAX_VIPS).map(|n| entry(key(n, 80), n)).collect();
        let slots = build(&entries).unwrap();
        for e in &entries {
            assert_eq!(find(&slots, &e.key), Some((e.vip_id, e.table_id)));
        }
        for n in 0..5000 {
            assert_eq!(find(&slots, &key(n, 81)), None);
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let entries = [entry(key(1, 80), 0), entry(key(1, 80), 1)];
        assert_eq!(build(&entries), Err(VipIndexError::Duplicate(key(1, 80))));
    }

    #[test]
    fn port_zero_is_its_own_key() {
        let slots = build(&[entry(key(1, 0), 7)]).unwrap();
        assert_eq!(find(&slots, &key(1, 0)), Some((7, 7 + MAX_VIPS)));
        assert_eq!(find(&slots, &key(1, 80)), None);
    }
}
