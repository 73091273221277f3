//! The VIPs' admission as the kernel holds it, bank by bank: each VIP's
//! `Admission` record (which rules apply, its limits as rates) and its
//! source rules in the two tries, keyed by the
//! VIP's table id so that an apply writes the bank not in use and the
//! commit makes it live with the tables. Only what differs from what the
//! bank held is written. A deny rule keeps its drop counter's slot while
//! either bank holds it, so its count runs on across applies.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use aya::maps::{
    Array,
    lpm_trie::{Key, LpmTrie},
};
use lb_common::maps::{
    ADMIT_ALLOW_LIST, ADMIT_FLOW_LIMIT, ADMIT_PACKET_LIMIT, ADMIT_SOURCE_LIMIT, ADMIT_SOURCES,
    Admission, MAX_VIPS, Rate, SOURCE_ALLOW, SOURCE_DENY, SOURCE_LIST_BITS, SOURCE_RULE_SLOTS,
    SourceRule, SourceV4, SourceV6, TABLE_BANKS, names,
};

use super::{
    Dataplane, Result, map_err,
    state::{DesiredState, VipState},
    table_id,
};
use crate::config::Prefix;

/// One VIP's rule: its id and the prefix.
type RuleKey = (u32, Prefix);

/// What one bank holds.
#[derive(Clone, Debug, Default)]
struct Bank {
    /// Each rule's value.
    rules: HashMap<RuleKey, SourceRule>,
    /// The VIPs whose `Admission` has flags, with it.
    records: HashMap<u32, Admission>,
}

/// Both banks as the kernel holds them, and the deny rules' counter slots.
#[derive(Clone, Debug)]
pub struct Admissions {
    banks: [Bank; TABLE_BANKS as usize],
    /// Slots no deny rule of either bank holds (never 0), smallest last.
    free: Vec<u32>,
}

impl Admissions {
    /// The deny rules of `bank`, with their counter slots.
    fn deny_rules(&self, bank: u32) -> impl Iterator<Item = DenyRule> + '_ {
        self.banks[bank as usize]
            .rules
            .iter()
            .filter(|(_, rule)| rule.action == SOURCE_DENY)
            .map(|(&(vip_id, prefix), rule)| DenyRule {
                vip_id,
                prefix,
                slot: rule.slot,
            })
    }

    fn with_banks(banks: [Bank; TABLE_BANKS as usize]) -> Self {
        let used: HashSet<u32> = banks
            .iter()
            .flat_map(|b| b.rules.values().map(|r| r.slot))
            .collect();
        let free = (1..=SOURCE_RULE_SLOTS)
            .rev()
            .filter(|slot| !used.contains(slot))
            .collect();
        Self { banks, free }
    }
}

/// `prefix` in list `list` as the IPv4 trie's key.
fn key_v4(list: u32, prefix: &Prefix) -> Option<Key<SourceV4>> {
    let IpAddr::V4(addr) = prefix.address else {
        return None;
    };
    let data = SourceV4 {
        list: list.to_be_bytes(),
        addr: addr.octets(),
    };
    Some(Key::new(SOURCE_LIST_BITS + u32::from(prefix.len), data))
}

/// The same for IPv6.
fn key_v6(list: u32, prefix: &Prefix) -> Option<Key<SourceV6>> {
    let IpAddr::V6(addr) = prefix.address else {
        return None;
    };
    let data = SourceV6 {
        list: list.to_be_bytes(),
        addr: addr.octets(),
    };
    Some(Key::new(SOURCE_LIST_BITS + u32::from(prefix.len), data))
}

/// A trie key's data: its list's bytes and its address.
trait SourceKey {
    fn parts(&self) -> ([u8; 4], IpAddr);
}

impl SourceKey for SourceV4 {
    fn parts(&self) -> ([u8; 4], IpAddr) {
        (self.list, IpAddr::from(self.addr))
    }
}

impl SourceKey for SourceV6 {
    fn parts(&self) -> ([u8; 4], IpAddr) {
        (self.list, IpAddr::from(self.addr))
    }
}

/// A trie key's list and prefix, back from its bytes.
fn rule_of(prefix_len: u32, list: [u8; 4], address: IpAddr) -> (u32, Prefix) {
    let len = prefix_len.saturating_sub(SOURCE_LIST_BITS) as u8;
    (u32::from_be_bytes(list), Prefix { address, len })
}

/// A rate of `per_s` a second, with a burst of one second's worth.
fn rate(per_s: Option<u32>) -> Rate {
    per_s.map_or_else(Rate::default, |per_s| {
        let interval_ns = 1_000_000_000u64.div_ceil(u64::from(per_s.max(1)));
        Rate {
            interval_ns,
            burst_ns: interval_ns * u64::from(per_s.saturating_sub(1)),
        }
    })
}

/// What the data plane checks for `vip`: its rules and limits.
fn admission_of(vip: &VipState) -> Admission {
    let (sources, limits) = (&vip.sources, &vip.limits);
    let bits = [
        (!sources.is_empty(), ADMIT_SOURCES),
        (!sources.allow.is_empty(), ADMIT_ALLOW_LIST),
        (limits.new_flows_per_s.is_some(), ADMIT_FLOW_LIMIT),
        (limits.packets_per_s.is_some(), ADMIT_PACKET_LIMIT),
        (limits.source_new_flows_per_s.is_some(), ADMIT_SOURCE_LIMIT),
    ];
    Admission {
        flags: bits
            .into_iter()
            .filter(|(on, _)| *on)
            .fold(0, |flags, (_, bit)| flags | bit),
        source_len_v4: limits.source_prefix_v4,
        source_len_v6: limits.source_prefix_v6,
        reserved: [0; 2],
        new_flows: rate(limits.new_flows_per_s),
        packets: rate(limits.packets_per_s),
        source_new_flows: rate(limits.source_new_flows_per_s),
    }
}

impl Dataplane {
    /// Both banks' admission as the kernel holds it: read once, from the
    /// tries and the records (an adopted instance's as a fresh one's).
    fn admissions(&mut self) -> Result<Admissions> {
        if let Some(held) = self.admissions.take() {
            return Ok(held);
        }
        let mut banks: [Bank; TABLE_BANKS as usize] = Default::default();
        let mut rules = self.read_trie::<SourceV4>(names::SOURCES_V4)?;
        rules.extend(self.read_trie::<SourceV6>(names::SOURCES_V6)?);
        for (list, prefix, rule) in rules {
            let (bank, vip_id) = (list / MAX_VIPS, list % MAX_VIPS);
            if let Some(bank) = banks.get_mut(bank as usize) {
                bank.rules.insert((vip_id, prefix), rule);
            }
        }
        let records: Array<_, Admission> =
            Array::try_from(self.map(names::ADMISSION)?).map_err(map_err(names::ADMISSION))?;
        for (bank_index, bank) in (0..).zip(banks.iter_mut()) {
            for vip_id in 0..MAX_VIPS {
                let record = records
                    .get(&table_id(bank_index, vip_id), 0)
                    .map_err(map_err(names::ADMISSION))?;
                if record.flags != 0 {
                    bank.records.insert(vip_id, record);
                }
            }
        }
        Ok(Admissions::with_banks(banks))
    }

    /// Writes `state`'s admission into `bank` (not in use): removes the
    /// rules and records it held that `state` does not have, adds what it
    /// lacks. Deny rules keep their counter slot while either bank holds
    /// them; a slot taken afresh starts at zero.
    pub(super) fn stage_admission(&mut self, bank: u32, state: &DesiredState) -> Result<()> {
        let mut held = self.admissions()?;
        let result = self.write_bank(&mut held, bank, state);
        self.admissions = Some(held);
        result
    }

    fn write_bank(&mut self, held: &mut Admissions, bank: u32, state: &DesiredState) -> Result<()> {
        let mut wanted: HashMap<RuleKey, u32> = HashMap::new();
        let mut records = HashMap::new();
        for vip in &state.vips {
            for prefix in &vip.sources.allow {
                wanted.insert((vip.vip_id, *prefix), SOURCE_ALLOW);
            }
            for prefix in &vip.sources.deny {
                wanted.insert((vip.vip_id, *prefix), SOURCE_DENY);
            }
            let record = admission_of(vip);
            if record.flags != 0 {
                records.insert(vip.vip_id, record);
            }
        }
        // Slots the other bank's deny rules hold stay theirs.
        let other = (bank + 1) % TABLE_BANKS;
        let other_slots: HashMap<RuleKey, u32> = held
            .deny_rules(other)
            .map(|rule| ((rule.vip_id, rule.prefix), rule.slot))
            .collect();
        let kept_slots: HashSet<u32> = other_slots.values().copied().collect();
        let mine = std::mem::take(&mut held.banks[bank as usize]);
        let gone: Vec<(RuleKey, SourceRule)> = mine
            .rules
            .iter()
            .filter(|(key, rule)| wanted.get(key) != Some(&rule.action))
            .map(|(k, r)| (*k, *r))
            .collect();
        for ((vip_id, prefix), rule) in &gone {
            self.write_rule(table_id(bank, *vip_id), prefix, None)?;
            if rule.action == SOURCE_DENY && !kept_slots.contains(&rule.slot) {
                held.free.push(rule.slot);
            }
        }
        let mut rules = HashMap::with_capacity(wanted.len());
        for (key, action) in wanted {
            if let Some(rule) = mine.rules.get(&key).filter(|r| r.action == action) {
                rules.insert(key, *rule);
                continue;
            }
            let slot = match (action, other_slots.get(&key)) {
                (SOURCE_ALLOW, _) => 0,
                (_, Some(slot)) => *slot,
                _ => {
                    let slot = held.free.pop().ok_or(super::DataplaneError::Missing(
                        "a free source-rule counter slot",
                    ))?;
                    self.zero_counters::<u64>(names::RULE_STATS, slot)?;
                    slot
                }
            };
            let rule = SourceRule { slot, action };
            self.write_rule(table_id(bank, key.0), &key.1, Some(rule))?;
            rules.insert(key, rule);
        }
        let vips: HashSet<u32> = mine.records.keys().chain(records.keys()).copied().collect();
        let mut array: Array<_, Admission> =
            Array::try_from(self.map_mut(names::ADMISSION)?).map_err(map_err(names::ADMISSION))?;
        for vip_id in vips {
            let want = records.get(&vip_id).copied().unwrap_or_default();
            if mine.records.get(&vip_id).copied().unwrap_or_default() != want {
                array
                    .set(table_id(bank, vip_id), want, 0)
                    .map_err(map_err(names::ADMISSION))?;
            }
        }
        held.banks[bank as usize] = Bank { rules, records };
        Ok(())
    }

    /// Inserts `rule` for `prefix` in list `list` (`Some`), or removes
    /// the prefix (`None`).
    fn write_rule(&mut self, list: u32, prefix: &Prefix, rule: Option<SourceRule>) -> Result<()> {
        match (key_v4(list, prefix), key_v6(list, prefix)) {
            (Some(key), _) => self.edit(names::SOURCES_V4, &key, rule),
            (_, Some(key)) => self.edit(names::SOURCES_V6, &key, rule),
            _ => Ok(()),
        }
    }

    fn edit<K: aya::Pod>(
        &mut self,
        name: &'static str,
        key: &Key<K>,
        rule: Option<SourceRule>,
    ) -> Result<()> {
        let mut trie: LpmTrie<_, K, SourceRule> =
            LpmTrie::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        match rule {
            Some(rule) => trie.insert(key, rule, 0),
            None => trie.remove(key),
        }
        .map_err(map_err(name))
    }

    /// Every rule of trie `name`: its list, prefix and value.
    fn read_trie<K: aya::Pod + SourceKey>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(u32, Prefix, SourceRule)>> {
        let trie: LpmTrie<_, K, SourceRule> =
            LpmTrie::try_from(self.map(name)?).map_err(map_err(name))?;
        trie.iter()
            .map(|entry| {
                let (key, rule) = entry.map_err(map_err(name))?;
                let (list, address) = key.data().parts();
                let (list, prefix) = rule_of(key.prefix_len(), list, address);
                Ok((list, prefix, rule))
            })
            .collect()
    }
}

/// A deny rule in force and the slot of its drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyRule {
    /// Its VIP's id.
    pub vip_id: u32,
    /// The prefix it denies.
    pub prefix: Prefix,
    /// Its counter's slot in `RULE_STATS`.
    pub slot: u32,
}

impl Dataplane {
    /// The deny rules in force, with their counters' slots.
    pub fn deny_rules(&mut self) -> Result<Vec<DenyRule>> {
        let held = self.admissions()?;
        let rules = held.deny_rules(self.bank).collect();
        self.admissions = Some(held);
        Ok(rules)
    }

    /// Packets each deny rule in force dropped, summed over CPUs (the
    /// counter reader's batch read): the VIP's id, the prefix and the
    /// count.
    pub fn rule_drops(&mut self) -> Result<Vec<(u32, Prefix, u64)>> {
        let rules = self.deny_rules()?;
        let slots = rules.iter().map(|rule| rule.slot + 1).max().unwrap_or(0);
        let counters = self
            .counter_reader()?
            .read((0, 0, slots))
            .map_err(|source| super::DataplaneError::Io {
                what: "reading the deny rules' counters".into(),
                source,
            })?;
        Ok(rules
            .into_iter()
            .map(|rule| {
                let count = counters.rules.get(rule.slot as usize).copied();
                (rule.vip_id, rule.prefix, count.unwrap_or(0))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_their_list_and_prefix() {
        let prefix: Prefix = "198.18.5.0/24".parse().unwrap();
        let key = key_v4(1030, &prefix).unwrap();
        let (list, address) = key.data().parts();
        assert_eq!(key.prefix_len(), 56);
        assert_eq!(rule_of(key.prefix_len(), list, address), (1030, prefix));
        let prefix: Prefix = "2001:2::/48".parse().unwrap();
        assert!(key_v4(3, &prefix).is_none());
        let key = key_v6(3, &prefix).unwrap();
        let (list, address) = key.data().parts();
        assert_eq!(key.prefix_len(), 80);
        assert_eq!(rule_of(key.prefix_len(), list, address), (3, prefix));
    }
}
