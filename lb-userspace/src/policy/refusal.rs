//! What a change of a VIP's source rules or limits would refuse, judged
//! on the clients the data plane saw: the sources of its active flows and
//! of the flows its clients opened in the last window (proven flows only,
//! so a spoofed flood's SYNs do not count as clients). Rules are judged
//! exactly, source by source; a tighter cap by the rate the window saw.
//! Pure: configs and sources in, counts out.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::sources::{Admitted, Matcher};
use crate::config::{Prefix, VipConfig, masked};

/// What the data plane saw of one VIP's clients.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    /// The sources of its active flows, one per flow.
    pub active: Vec<IpAddr>,
    /// The sources of the proven flows recorded in the last `window_s`
    /// seconds, one per flow.
    pub recent: Vec<IpAddr>,
    /// The window, in seconds.
    pub window_s: u64,
}

/// What the data plane saw, by VIP endpoint (`address:port/protocol`).
pub type Clients = HashMap<String, Seen>;

/// What a change would refuse of one VIP's clients.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// Active flows whose source the new rules refuse (the old admitted
    /// it): they are cut the moment the change is live.
    pub active_flows: u64,
    /// Active flows seen.
    pub active_total: u64,
    /// Of the flows opened in the window, those the new rules and limits
    /// would have refused.
    pub new_flows: u64,
    /// Flows opened in the window.
    pub new_total: u64,
    /// Of `new_flows`, those the rules refuse (the rest, the limits).
    pub by_rules: u64,
    /// The window, in seconds.
    pub window_s: u64,
}

impl Refusal {
    /// The larger of the shares refused: of the active flows, and of the
    /// window's new flows (0 when nothing was seen).
    pub fn share(&self) -> f64 {
        let share = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        share(self.active_flows, self.active_total).max(share(self.new_flows, self.new_total))
    }
}

/// Whether `rules` admit `source` (with none, everything is).
fn admitted(rules: Option<&Matcher>, source: IpAddr) -> bool {
    rules.is_none_or(|rules| matches!(rules.admits(source), Admitted::Yes(_)))
}

/// How many of `count` flows a cap of `per_s` lets through in `window_s`
/// seconds: its rate over the window and a burst of one second's worth.
fn over(count: u64, per_s: Option<u32>, window_s: u64) -> u64 {
    per_s.map_or(0, |per_s| {
        count.saturating_sub(u64::from(per_s) * (window_s + 1))
    })
}

/// What moving `old`'s rules and limits (none for a new VIP) to `new`'s
/// would refuse of the clients `seen`; `None` when neither changes.
pub fn refusal(old: Option<&VipConfig>, new: &VipConfig, seen: &Seen) -> Option<Refusal> {
    let unchanged = old.is_some_and(|o| o.sources == new.sources && o.limits == new.limits);
    if unchanged || (old.is_none() && new.sources.is_empty() && new.limits.is_empty()) {
        return None;
    }
    let (before, after) = (old.map(|o| o.sources.matcher()), new.sources.matcher());
    let (before, after) = (before.as_ref(), Some(&after));
    let cut = |source: &IpAddr| admitted(before, *source) && !admitted(after, *source);
    let active_flows = seen.active.iter().filter(|s| cut(s)).count() as u64;
    let by_rules = seen.recent.iter().filter(|s| cut(s)).count() as u64;
    let mut limited = 0;
    let limits = &new.limits;
    if old.is_none_or(|o| o.limits != *limits) {
        let kept: Vec<IpAddr> = seen
            .recent
            .iter()
            .copied()
            .filter(|s| admitted(after, *s))
            .collect();
        let mut prefixes: HashMap<Prefix, u64> = HashMap::new();
        for source in &kept {
            let len = if source.is_ipv4() {
                limits.source_prefix_v4
            } else {
                limits.source_prefix_v6
            };
            let prefix = Prefix {
                address: masked(*source, len),
                len,
            };
            *prefixes.entry(prefix).or_default() += 1;
        }
        let by_sources: u64 = prefixes
            .values()
            .map(|&n| over(n, limits.source_new_flows_per_s, seen.window_s))
            .sum();
        let left = kept.len() as u64 - by_sources;
        limited = by_sources + over(left, limits.new_flows_per_s, seen.window_s);
    }
    Some(Refusal {
        active_flows,
        active_total: seen.active.len() as u64,
        new_flows: by_rules + limited,
        new_total: seen.recent.len() as u64,
        by_rules,
        window_s: seen.window_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn vip(extra: &str) -> VipConfig {
        let text = format!(
            "[[vip]]\naddress = \"198.18.0.10\"\nport = 80\nprotocol = \"tcp\"\n{extra}\n\
             backend = [{{ address = \"198.18.1.1\" }}]\n"
        );
        Config::parse(&text).unwrap().vips.remove(0)
    }

    fn seen(active: &[&str], recent: &[&str]) -> Seen {
        let parse = |list: &[&str]| list.iter().map(|a| a.parse().unwrap()).collect();
        Seen {
            active: parse(active),
            recent: parse(recent),
            window_s: 10,
        }
    }

    #[test]
    fn a_deny_rule_cuts_the_flows_of_its_sources_only() {
        let old = vip("");
        let new = vip(r#"deny_sources = ["198.18.5.0/24"]"#);
        let traffic = seen(
            &["198.18.5.1", "198.18.5.2", "198.18.6.1", "198.18.7.1"],
            &["198.18.5.9", "198.18.8.1"],
        );
        let refused = refusal(Some(&old), &new, &traffic).unwrap();
        assert_eq!((refused.active_flows, refused.active_total), (2, 4));
        assert_eq!(
            (refused.new_flows, refused.new_total, refused.by_rules),
            (1, 2, 1)
        );
        assert!((refused.share() - 0.5).abs() < 1e-9);
        assert_eq!(refusal(Some(&new), &new, &traffic), None, "nothing changes");
        // Undoing it refuses nobody.
        assert_eq!(refusal(Some(&new), &old, &traffic).unwrap().share(), 0.0);
    }

    #[test]
    fn an_allow_list_that_admits_none_of_the_clients_refuses_them_all() {
        let new = vip(r#"allow_sources = ["192.0.2.0/24"]"#);
        let traffic = seen(&["198.18.5.1"], &["198.18.5.9", "198.18.8.1"]);
        let refused = refusal(Some(&vip("")), &new, &traffic).unwrap();
        assert_eq!(refused.share(), 1.0);
    }

    #[test]
    fn a_tighter_cap_refuses_what_the_window_saw_beyond_it() {
        // 10 s window: 300 flows from one /24, 20 from another.
        let mut recent = vec!["198.18.5.1"; 300];
        recent.extend(vec!["198.18.6.1"; 20]);
        let traffic = seen(&[], &recent);
        let capped = vip("limits = { source_new_flows_per_s = 10 }");
        let refused = refusal(Some(&vip("")), &capped, &traffic).unwrap();
        // 110 of the /24's 300 pass (10 a second and a burst of 10).
        assert_eq!((refused.new_flows, refused.by_rules), (190, 0));
        // 30 a second over 10 s, and a burst of 30: all 320 pass.
        let vip_cap = vip("limits = { new_flows_per_s = 30 }");
        let refused = refusal(Some(&vip("")), &vip_cap, &traffic).unwrap();
        assert_eq!(refused.new_flows, 0);
        let vip_cap = vip("limits = { new_flows_per_s = 20 }");
        assert_eq!(
            refusal(Some(&vip("")), &vip_cap, &traffic)
                .unwrap()
                .new_flows,
            100
        );
    }
}
