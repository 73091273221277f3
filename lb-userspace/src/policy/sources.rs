//! The checks on a VIP's source rules: every prefix of the VIP's family,
//! none twice, none both allowed and denied, and rules that admit some
//! source: a deny list that covers every address, or an allow list whose
//! every prefix longer deny rules cover, would take the VIP dark. Also
//! what the rules decide for one source, as the data plane decides it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::maps::MAX_SOURCE_RULES;

use crate::{
    config::{Config, Prefix, SourceRules, VipConfig, masked},
    problem::Problem,
};

/// The verdict of a VIP's rules on one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Admitted: by the allow rule named, or by no rule at all.
    Yes(Option<Prefix>),
    /// Dropped by the deny rule named.
    Denied(Prefix),
    /// Dropped: there are allow rules and none covers it.
    NotAllowed,
}

/// A VIP's rules indexed for many lookups: per family, each prefix length
/// the rules use, longest first, with its prefixes and whether each
/// denies. A lookup probes one set per length, not every rule, so judging
/// a connection table's sources against thousands of rules stays linear.
pub struct Matcher {
    /// IPv4's lengths, then IPv6's.
    lengths: [Vec<(u8, HashMap<IpAddr, bool>)>; 2],
    /// Whether there are allow rules.
    allow_list: bool,
}

impl Matcher {
    /// What the rules decide for `source`: the longest covering prefix
    /// decides (a deny rule drops, an allow rule admits); with allow
    /// rules, a source none covers is dropped.
    pub fn admits(&self, source: IpAddr) -> Admitted {
        for (len, prefixes) in &self.lengths[usize::from(source.is_ipv6())] {
            let address = masked(source, *len);
            if let Some(&deny) = prefixes.get(&address) {
                let prefix = Prefix { address, len: *len };
                return if deny {
                    Admitted::Denied(prefix)
                } else {
                    Admitted::Yes(Some(prefix))
                };
            }
        }
        if self.allow_list {
            Admitted::NotAllowed
        } else {
            Admitted::Yes(None)
        }
    }
}

impl SourceRules {
    /// The rules indexed for lookups. Where a prefix is both allowed and
    /// denied (which validation refuses), the allow rule wins.
    pub fn matcher(&self) -> Matcher {
        let mut lengths: [BTreeMap<u8, HashMap<IpAddr, bool>>; 2] = Default::default();
        for (list, deny) in [(&self.deny, true), (&self.allow, false)] {
            for prefix in list {
                lengths[usize::from(prefix.address.is_ipv6())]
                    .entry(prefix.len)
                    .or_default()
                    .insert(prefix.address, deny);
            }
        }
        Matcher {
            lengths: lengths.map(|by_len| by_len.into_iter().rev().collect()),
            allow_list: !self.allow.is_empty(),
        }
    }

    /// What the rules decide for `source` (see `Matcher::admits`).
    pub fn admits(&self, source: IpAddr) -> Admitted {
        self.matcher().admits(source)
    }

    /// Whether some source is admitted: with allow rules, some allow
    /// prefix has an address no longer deny prefix covers; without, the
    /// deny rules leave some address of `family_width` bits uncovered.
    pub fn admits_any(&self, family_width: u8) -> bool {
        if self.allow.is_empty() {
            let everything = Prefix {
                address: if family_width == 32 {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u8; 16])
                },
                len: 0,
            };
            let denied: Vec<Prefix> = self
                .deny
                .iter()
                .filter(|d| d.width() == family_width)
                .copied()
                .collect();
            return !covers(&denied, &everything);
        }
        self.allow.iter().any(|allow| {
            let inner: Vec<Prefix> = self
                .deny
                .iter()
                .filter(|d| d.len > allow.len && allow.contains(d.address))
                .copied()
                .collect();
            !covers(&inner, allow)
        })
    }
}

impl Prefix {
    /// Bits of its family's addresses: 32 or 128.
    pub fn width(&self) -> u8 {
        if self.address.is_ipv4() { 32 } else { 128 }
    }

    /// Whether `address` is in it.
    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv4() == self.address.is_ipv4() && masked(address, self.len) == self.address
    }

    /// Its first and last address as numbers of its family's width.
    fn range(&self) -> (u128, u128) {
        let first = match self.address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let host_bits = u32::from(self.width() - self.len);
        let span = 1u128.checked_shl(host_bits).map_or(u128::MAX, |s| s - 1);
        (first, first.saturating_add(span))
    }
}

/// Whether `prefixes` (all inside `outer`) cover every address of it.
fn covers(prefixes: &[Prefix], outer: &Prefix) -> bool {
    let mut ranges: Vec<(u128, u128)> = prefixes.iter().map(Prefix::range).collect();
    ranges.sort_unstable();
    let (first, last) = outer.range();
    let mut next = first;
    for (start, end) in ranges {
        if start > next {
            return false;
        }
        if end >= last {
            return true;
        }
        next = next.max(end + 1);
    }
    false
}

/// Checks one VIP's source rules.
pub fn check(vip: &VipConfig, location: &str, problems: &mut Vec<Problem>) {
    let rules = &vip.sources;
    let width = if vip.address.is_ipv4() { 32 } else { 128 };
    let mut seen = HashSet::new();
    let lists = [
        ("allow_sources", &rules.allow),
        ("deny_sources", &rules.deny),
    ];
    for (field, list) in lists {
        for prefix in list.iter() {
            let text = prefix.to_string();
            if prefix.width() != width {
                problems.push(Problem::error(
                    "sources",
                    location,
                    field,
                    text.clone(),
                    format!(
                        "the VIP is {}: only its family's sources reach it",
                        vip.address
                    ),
                ));
            }
            if !seen.insert(*prefix) {
                let why = if field == "deny_sources" && rules.allow.contains(prefix) {
                    "is both allowed and denied: say which"
                } else {
                    "is listed twice"
                };
                problems.push(Problem::error("sources", location, field, text, why));
            }
        }
    }
    let (field, list) = if rules.allow.is_empty() {
        ("deny_sources", &rules.deny)
    } else {
        ("allow_sources", &rules.allow)
    };
    if !list.is_empty() && !rules.admits_any(width) {
        let why = if rules.allow.is_empty() {
            "the deny rules cover every source: the VIP would take no traffic at all"
        } else {
            "longer deny rules cover every allowed prefix: the VIP would take no traffic at all"
        };
        problems.push(Problem::error(
            "sources-admit-none",
            location,
            field,
            format!("{} rules", list.len()),
            why,
        ));
    }
}

/// Checks that the rules of all VIPs fit the data plane.
pub fn check_total(config: &Config, problems: &mut Vec<Problem>) {
    let total: usize = config.vips.iter().map(|v| v.sources.len()).sum();
    if total > MAX_SOURCE_RULES as usize {
        problems.push(Problem::error(
            "sources",
            "config",
            "allow_sources",
            total.to_string(),
            format!(
                "more source rules over all VIPs than the data plane holds \
                 ({MAX_SOURCE_RULES})"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    fn rules(allow: &[&str], deny: &[&str]) -> SourceRules {
        SourceRules {
            allow: allow.iter().map(|t| p(t)).collect(),
            deny: deny.iter().map(|t| p(t)).collect(),
        }
    }

    #[test]
    fn the_longest_prefix_decides() {
        let r = rules(&["198.18.0.0/15", "198.18.5.128/25"], &["198.18.5.0/24"]);
        let at = |a: &str| r.admits(a.parse().unwrap());
        assert_eq!(at("198.18.1.1"), Admitted::Yes(Some(p("198.18.0.0/15"))));
        assert_eq!(at("198.18.5.1"), Admitted::Denied(p("198.18.5.0/24")));
        assert_eq!(
            at("198.18.5.200"),
            Admitted::Yes(Some(p("198.18.5.128/25")))
        );
        assert_eq!(at("192.0.2.1"), Admitted::NotAllowed);
        let deny_only = rules(&[], &["2001:2::/48"]);
        assert_eq!(
            deny_only.admits("2001:2::9".parse().unwrap()),
            Admitted::Denied(p("2001:2::/48"))
        );
        assert_eq!(
            deny_only.admits("2001:3::9".parse().unwrap()),
            Admitted::Yes(None)
        );
    }

    #[test]
    fn validation_refuses_rules_that_cannot_mean_what_they_say() {
        let vip = |rules: &str| {
            format!(
                "[[vip]]\naddress = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\n{rules}\n\
                 backend = [{{ address = \"198.18.1.1\" }}, {{ address = \"198.18.1.2\" }}]\n"
            )
        };
        let cases = [
            (r#"deny_sources = ["2001:2::/48"]"#, "sources", "family"),
            (
                r#"deny_sources = ["198.18.5.0/24", "198.18.5.0/24"]"#,
                "sources",
                "twice",
            ),
            (
                r#"allow_sources = ["198.18.5.0/24"]
deny_sources = ["198.18.5.0/24"]"#,
                "sources",
                "both allowed and denied",
            ),
            (
                r#"deny_sources = ["0.0.0.0/0"]"#,
                "sources-admit-none",
                "every source",
            ),
            (
                r#"allow_sources = ["198.18.5.0/24"]
deny_sources = ["198.18.5.0/25", "198.18.5.128/25"]"#,
                "sources-admit-none",
                "every allowed prefix",
            ),
            (
                r#"deny_sources = ["198.18.5.1/24"]"#,
                "invalid-value",
                "host bits set: a prefix is written with its first address (198.18.5.0/24)",
            ),
        ];
        for (rules, code, words) in cases {
            let validation = crate::policy::validate::validate(&vip(rules));
            let found = validation
                .problems
                .iter()
                .any(|p| p.is_error() && p.code == code && p.to_string().contains(words));
            assert!(found, "{rules}: {:?}", validation.problems);
        }
        let fine = vip(r#"allow_sources = ["0.0.0.0/0", "198.18.5.7/32"]
deny_sources = ["198.18.5.0/24"]"#);
        assert!(
            crate::policy::validate::validate(&fine).valid().is_ok(),
            "deny rules with an exception inside an open VIP"
        );
    }

    #[test]
    fn rules_that_admit_nobody_are_found() {
        assert!(!rules(&[], &["0.0.0.0/0"]).admits_any(32));
        assert!(!rules(&[], &["0.0.0.0/1", "128.0.0.0/1"]).admits_any(32));
        assert!(rules(&[], &["0.0.0.0/1", "128.0.0.0/2"]).admits_any(32));
        assert!(rules(&[], &["198.18.0.0/15"]).admits_any(32));
        assert!(rules(&["0.0.0.0/0"], &["0.0.0.0/1"]).admits_any(32));
        assert!(!rules(&["0.0.0.0/0"], &["0.0.0.0/1", "128.0.0.0/1"]).admits_any(32));
        // Two /25s cover the /24 allowed; a /23 elsewhere does not help.
        assert!(
            !rules(
                &["198.18.5.0/24"],
                &["198.18.5.0/25", "198.18.5.128/25", "198.18.8.0/23"]
            )
            .admits_any(32)
        );
        // An allow rule inside the denied space admits again.
        assert!(
            rules(
                &["198.18.5.0/24", "198.18.5.7/32"],
                &["198.18.5.0/25", "198.18.5.128/25"]
            )
            .admits_any(32)
        );
        assert!(!rules(&[], &["::/0"]).admits_any(128));
        assert!(rules(&["2001:2::/48"], &["2001:2::/49"]).admits_any(128));
    }
}
