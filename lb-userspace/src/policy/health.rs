//! What health checks may do to a VIP: take its dead backends out of the
//! table, unless that would leave it in panic. A VIP is in panic when its
//! healthy backends (weight above 0, not down) would be fewer than its
//! `min_backends`, or hold less than `panic_threshold` of its weight; then
//! it keeps every backend (fail open) rather than pile the pool onto the
//! survivors. The concentration guard's `max_backend_share` is not reused
//! here: a pool configured at that limit would panic on any one failure.

use std::{collections::BTreeSet, net::SocketAddr};

use serde::Serialize;

use crate::config::Config;

/// A backend the checker found dead: its VIP's endpoint and its identity.
pub type Down = (String, SocketAddr);

/// One VIP's health, as the policy judges it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VipHealth {
    /// `address:port/protocol`.
    pub endpoint: String,
    /// Its backends with a positive weight.
    pub backends: usize,
    /// Of those, the ones not down.
    pub healthy: usize,
    /// The VIP's total configured weight.
    pub weight: u64,
    /// The healthy backends' weight.
    pub healthy_weight: u64,
    /// The fewest healthy backends before panic (`min_backends` in force).
    pub min_backends: u32,
    /// The smallest healthy share of the weight before panic.
    pub panic_threshold: f64,
    /// In panic: every backend kept.
    pub panic: bool,
    /// How many more of its healthy backends could fail, heaviest first
    /// (the worst case), before it panics; 0 in panic.
    pub failures_to_panic: usize,
    /// The dead backends the table leaves out (in panic, only drained
    /// ones).
    pub taken_down: Vec<SocketAddr>,
    /// While its backends are not all judged by this daemon's checks yet
    /// (its table waits), why; the controller sets it.
    pub settling: Option<String>,
}

/// Judges every VIP of `config` (the operator's config in force) given the
/// backends found `down`; the backends to take out are in `taken_down`.
pub fn judge(config: &Config, down: &BTreeSet<Down>) -> Vec<VipHealth> {
    config
        .vips
        .iter()
        .map(|vip| {
            let endpoint = vip.endpoint();
            let guards = vip.guards.apply(&config.guards);
            let settings = vip.health(&config.health_check);
            let serving: Vec<(SocketAddr, u64, bool)> = vip
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| {
                    let addr = vip.backend_addr(b);
                    let dead = down.contains(&(endpoint.clone(), addr));
                    (addr, u64::from(b.weight), dead)
                })
                .collect();
            // A drained backend that is dead holds no slot either way; it is
            // taken out all the same, so that undraining it does not put a
            // dead backend in the table before its checks pass.
            let idle_dead = vip
                .backends
                .iter()
                .filter(|b| b.weight == 0)
                .filter_map(|b| {
                    let addr = vip.backend_addr(b);
                    down.contains(&(endpoint.clone(), addr)).then_some(addr)
                });
            let weight: u64 = serving.iter().map(|(_, w, _)| w).sum();
            let mut healthy: Vec<u64> = serving
                .iter()
                .filter(|(_, _, dead)| !dead)
                .map(|(_, w, _)| *w)
                .collect();
            let healthy_weight: u64 = healthy.iter().sum();
            let survives = |count: usize, left: u64| {
                count >= guards.min_backends as usize
                    && left as f64 >= settings.panic_threshold * weight as f64
            };
            let panic = !serving.is_empty() && !survives(healthy.len(), healthy_weight);
            // The heaviest healthy backends fail first: the margin is the
            // worst case.
            healthy.sort_unstable_by(|a, b| b.cmp(a));
            let mut left = healthy_weight;
            let mut failures_to_panic = 0;
            for (lost, w) in healthy.iter().enumerate() {
                left -= w;
                if !survives(healthy.len() - lost - 1, left) {
                    break;
                }
                failures_to_panic += 1;
            }
            VipHealth {
                backends: serving.len(),
                healthy: healthy.len(),
                weight,
                healthy_weight,
                min_backends: guards.min_backends,
                panic_threshold: settings.panic_threshold,
                panic,
                failures_to_panic: if panic { 0 } else { failures_to_panic },
                taken_down: serving
                    .iter()
                    .filter(|(_, _, dead)| *dead && !panic)
                    .map(|(addr, _, _)| *addr)
                    .chain(idle_dead)
                    .collect(),
                settling: None,
                endpoint,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(weights: &[u32], extra: &str) -> Config {
        let mut text = format!(
            "{extra}\n[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\n"
        );
        for (i, w) in weights.iter().enumerate() {
            text += &format!(
                "[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = {w}\nmac = \"02:00:00:00:00:01\"\n",
                i + 11
            );
        }
        Config::parse(&text).unwrap()
    }

    fn down(indexes: &[usize]) -> BTreeSet<Down> {
        indexes
            .iter()
            .map(|i| {
                let addr = format!("198.18.0.{}:80", i + 11).parse().unwrap();
                ("198.18.100.1:80/tcp".to_string(), addr)
            })
            .collect()
    }

    #[test]
    fn one_dead_of_three_is_taken_out_and_the_margin_shrinks() {
        let c = config(&[1, 1, 1], "");
        let all = judge(&c, &down(&[]));
        assert_eq!(all[0].failures_to_panic, 1, "{all:?}");
        let one = &judge(&c, &down(&[1]))[0];
        assert!(!one.panic);
        assert_eq!(one.taken_down, vec!["198.18.0.12:80".parse().unwrap()]);
        assert_eq!(one.failures_to_panic, 0, "a second failure would panic");
    }

    #[test]
    fn two_dead_of_three_is_panic_and_nothing_is_taken_out() {
        let c = config(&[1, 1, 1], "");
        let two = &judge(&c, &down(&[0, 1]))[0];
        assert!(two.panic, "{two:?}");
        assert!(two.taken_down.is_empty());
        assert_eq!((two.healthy, two.backends), (1, 3));
    }

    #[test]
    fn capacity_below_the_threshold_panics_even_with_enough_backends() {
        // 4 backends, the heavy one dead: 3 of 6 weight left is 50%: fine;
        // with a 0.6 threshold it is panic.
        let c = config(&[3, 1, 1, 1], "");
        assert!(!judge(&c, &down(&[0]))[0].panic);
        let strict = config(&[3, 1, 1, 1], "[health_check]\npanic_threshold = 0.6");
        assert!(judge(&strict, &down(&[0]))[0].panic);
    }

    #[test]
    fn drained_backends_count_for_nothing() {
        let c = config(&[1, 1, 0], "");
        let one = &judge(&c, &down(&[0]))[0];
        assert!(one.panic, "1 healthy of 2 serving is below min_backends 2");
        assert_eq!(one.backends, 2);
        assert!(one.taken_down.is_empty());
        // A dead drained backend is out, in panic or not, and the rest are
        // judged without it.
        let idle = &judge(&c, &down(&[2]))[0];
        assert!(!idle.panic);
        assert_eq!(idle.taken_down, vec!["198.18.0.13:80".parse().unwrap()]);
        let both = &judge(&c, &down(&[0, 2]))[0];
        assert!(both.panic);
        assert_eq!(both.taken_down, vec!["198.18.0.13:80".parse().unwrap()]);
    }
}
