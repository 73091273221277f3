//! The imbalance detector: a sliding window of new-flow counts, each
//! backend's observed share of its VIP's new flows over that window, and
//! the judgement of whether that share has stayed too far above the share
//! its table promises for too long. Pure: it is fed counters and times.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::View;
use crate::{config::Imbalance, dataplane::counters::Counters};

/// How far above its expected count a backend's count must be, in standard
/// deviations of a fair draw, before it can count as skewed: with a few
/// flows, or many backends, chance alone puts some backend over the factor.
pub const SIGNIFICANCE: f64 = 4.0;

/// At most this many samples span the window (older detail is coalesced).
const SAMPLES_PER_WINDOW: u32 = 30;

/// New-flow counters at one time, by backend id and by VIP id.
#[derive(Debug)]
struct Sample {
    at: Instant,
    backends: Vec<u64>,
    vips: Vec<u64>,
}

impl Sample {
    fn backend(&self, id: u32) -> u64 {
        self.backends.get(id as usize).copied().unwrap_or(0)
    }

    fn vip(&self, id: u32) -> u64 {
        self.vips.get(id as usize).copied().unwrap_or(0)
    }
}

/// What the window says of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Judgement {
    /// Its share of the VIP's new flows over the window (0 with none).
    pub observed_share: f64,
    /// Observed ÷ expected share (0 when either is 0).
    pub ratio: f64,
    /// How long it has been skewed, if it is now.
    pub skewed_for: Option<Duration>,
    /// Skewed for at least `for_s`: the detector's flag.
    pub imbalanced: bool,
}

/// What the window says of one VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VipJudgement {
    /// New flows per second over the window.
    pub flow_rate: f64,
    /// New flows in the window.
    pub new_flows: u64,
    /// The window's length so far (shorter right after a change).
    pub span: Duration,
    /// The largest ratio of its backends (0 without new flows).
    pub imbalance_ratio: f64,
}

/// A backend whose flag went up or down at the last observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// VIP id.
    pub vip_id: u32,
    /// Backend id.
    pub backend_id: u32,
    /// Raised (true) or cleared.
    pub raised: bool,
    /// The judgement that raised or cleared it.
    pub judgement: Judgement,
    /// The VIP's judgement.
    pub vip: VipJudgement,
}

/// The detector's state.
#[derive(Debug)]
pub struct Window {
    settings: Imbalance,
    samples: VecDeque<Sample>,
    /// Per VIP id: samples before this time do not count (its table changed).
    epochs: HashMap<u32, Instant>,
    /// Per (VIP id, backend id): when its current skew began.
    skewed_since: HashMap<(u32, u32), Instant>,
    backends: HashMap<(u32, u32), Judgement>,
    vips: HashMap<u32, VipJudgement>,
}

impl Window {
    /// An empty window.
    pub fn new(settings: Imbalance) -> Self {
        Self {
            settings,
            samples: VecDeque::new(),
            epochs: HashMap::new(),
            skewed_since: HashMap::new(),
            backends: HashMap::new(),
            vips: HashMap::new(),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &Imbalance {
        &self.settings
    }

    fn length(&self) -> Duration {
        Duration::from_secs(self.settings.window_s)
    }

    /// A new view took over at `at`: VIPs in `changed` start their window
    /// afresh (the flows before were dealt by another table; a flag they
    /// held clears at the next observation, unless the skew goes on for
    /// `for_s` again), and the settings are the new ones.
    pub fn restart(&mut self, settings: Imbalance, changed: &[u32], at: Instant) {
        self.settings = settings;
        for &vip_id in changed {
            self.epochs.insert(vip_id, at);
            self.skewed_since.retain(|(v, _), _| *v != vip_id);
        }
    }

    /// Adds the counters read at `at` and judges every backend of `view`;
    /// returns the flags that went up or down.
    pub fn observe(&mut self, at: Instant, view: &View, counters: &Counters) -> Vec<Transition> {
        let sample = Sample {
            at,
            backends: counters.backends.iter().map(|c| c.new_flows).collect(),
            vips: counters.vips.iter().map(|c| c.new_flows).collect(),
        };
        let step = self.length() / SAMPLES_PER_WINDOW;
        let len = self.samples.len();
        if len >= 2 && at.duration_since(self.samples[len - 2].at) < step {
            self.samples[len - 1] = sample;
        } else {
            self.samples.push_back(sample);
        }
        // Keep one sample at or before the window's start as its baseline.
        let start = at.checked_sub(self.length()).unwrap_or(at);
        while self.samples.len() > 2 && self.samples[1].at <= start {
            self.samples.pop_front();
        }
        let mut transitions = Vec::new();
        let mut backends = HashMap::new();
        let mut vips = HashMap::new();
        for vip in &view.vips {
            let (vip_judgement, judged) = self.judge(at, start, vip);
            for (backend, judgement) in view_backends(vip).zip(judged) {
                let key = (vip.vip_id, backend);
                let was = self.backends.get(&key).is_some_and(|j| j.imbalanced);
                if was != judgement.imbalanced {
                    transitions.push(Transition {
                        vip_id: vip.vip_id,
                        backend_id: backend,
                        raised: judgement.imbalanced,
                        judgement,
                        vip: vip_judgement,
                    });
                }
                backends.insert(key, judgement);
            }
            vips.insert(vip.vip_id, vip_judgement);
        }
        self.skewed_since
            .retain(|key, _| backends.contains_key(key));
        self.backends = backends;
        self.vips = vips;
        transitions
    }

    /// Judges one VIP's backends over the window that starts at `start`
    /// (or at the VIP's epoch, if later).
    fn judge(
        &mut self,
        at: Instant,
        start: Instant,
        vip: &super::VipView,
    ) -> (VipJudgement, Vec<Judgement>) {
        let since = self
            .epochs
            .get(&vip.vip_id)
            .map_or(start, |e| (*e).max(start));
        let (Some(first), Some(last)) = (
            self.samples.iter().find(|s| s.at >= since),
            self.samples.back(),
        ) else {
            return (
                VipJudgement::default(),
                vec![Judgement::default(); vip.backends.len()],
            );
        };
        let new_flows = last.vip(vip.vip_id).saturating_sub(first.vip(vip.vip_id));
        let span = last.at.duration_since(first.at);
        let flow_rate = if span.is_zero() {
            0.0
        } else {
            new_flows as f64 / span.as_secs_f64()
        };
        let busy = new_flows > 0 && flow_rate >= self.settings.min_flow_rate;
        let mut ratio_max = 0.0f64;
        let judged = vip
            .backends
            .iter()
            .map(|backend| {
                let flows = last
                    .backend(backend.backend_id)
                    .saturating_sub(first.backend(backend.backend_id));
                let expected = backend.expected_share;
                let observed_share = if new_flows == 0 {
                    0.0
                } else {
                    flows as f64 / new_flows as f64
                };
                let ratio = if expected > 0.0 {
                    observed_share / expected
                } else {
                    0.0
                };
                if new_flows > 0 {
                    ratio_max = ratio_max.max(ratio);
                }
                let n = new_flows as f64;
                let spread = (n * expected * (1.0 - expected)).sqrt();
                let skewed = busy
                    && expected > 0.0
                    && ratio >= self.settings.factor
                    && flows as f64 - n * expected >= SIGNIFICANCE * spread;
                let key = (vip.vip_id, backend.backend_id);
                let skewed_for = if skewed {
                    Some(at.duration_since(*self.skewed_since.entry(key).or_insert(at)))
                } else {
                    self.skewed_since.remove(&key);
                    None
                };
                Judgement {
                    observed_share,
                    ratio,
                    skewed_for,
                    imbalanced: skewed_for
                        .is_some_and(|d| d >= Duration::from_secs(self.settings.for_s)),
                }
            })
            .collect();
        let judgement = VipJudgement {
            flow_rate,
            new_flows,
            span,
            imbalance_ratio: ratio_max,
        };
        (judgement, judged)
    }

    /// The last judgement of a backend.
    pub fn backend(&self, vip_id: u32, backend_id: u32) -> Judgement {
        self.backends
            .get(&(vip_id, backend_id))
            .copied()
            .unwrap_or_default()
    }

    /// The last judgement of a VIP.
    pub fn vip(&self, vip_id: u32) -> VipJudgement {
        self.vips.get(&vip_id).copied().unwrap_or_default()
    }
}

fn view_backends(vip: &super::VipView) -> impl Iterator<Item = u32> + '_ {
    vip.backends.iter().map(|b| b.backend_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{BackendView, VipView};
    use lb_common::maps::TrafficCounters;

    fn view(shares: &[f64]) -> View {
        View {
            generation: 1,
            counted: (shares.len() as u32 + 1, 1),
            rules: Vec::new(),
            vips: vec![VipView {
                name: "web".into(),
                endpoint: "198.18.100.1:80/tcp".into(),
                vip_id: 0,
                last_change: None,
                table_digest: String::new(),
                quic: None,
                backends: shares
                    .iter()
                    .enumerate()
                    .map(|(i, &share)| BackendView {
                        name: format!("b{i}"),
                        address: format!("198.18.0.{}:80", i + 10),
                        backend_id: i as u32 + 1,
                        weight: 1,
                        expected_share: share,
                        held_out: false,
                        socket: format!("198.18.0.{}:80", i + 10).parse().unwrap(),
                        down: false,
                        server_id: None,
                    })
                    .collect(),
            }],
        }
    }

    fn counters(flows: &[u64]) -> Counters {
        let mut backends = vec![TrafficCounters::default()];
        backends.extend(flows.iter().map(|&new_flows| TrafficCounters {
            new_flows,
            ..TrafficCounters::default()
        }));
        Counters {
            backends,
            vips: vec![TrafficCounters {
                new_flows: flows.iter().sum(),
                ..TrafficCounters::default()
            }],
            ..Counters::default()
        }
    }

    fn settings() -> Imbalance {
        Imbalance {
            factor: 1.5,
            window_s: 10,
            for_s: 3,
            min_flow_rate: 5.0,
        }
    }

    /// Feeds `per_second` new flows per backend for `seconds`, from `t0`.
    fn feed(
        window: &mut Window,
        view: &View,
        t0: Instant,
        totals: &mut [u64],
        per_second: &[u64],
        seconds: u64,
    ) -> Vec<Transition> {
        let mut all = Vec::new();
        for s in 1..=seconds {
            for (total, add) in totals.iter_mut().zip(per_second) {
                *total += add;
            }
            all.extend(window.observe(t0 + Duration::from_secs(s), view, &counters(totals)));
        }
        all
    }

    #[test]
    fn even_traffic_is_never_flagged() {
        let view = view(&[0.5, 0.5]);
        let mut window = Window::new(settings());
        let mut totals = vec![0, 0];
        let t0 = Instant::now();
        window.observe(t0, &view, &counters(&totals));
        let flagged = feed(&mut window, &view, t0, &mut totals, &[50, 50], 30);
        assert!(flagged.is_empty(), "{flagged:?}");
        let j = window.backend(0, 1);
        assert!((j.observed_share - 0.5).abs() < 1e-9, "{j:?}");
        assert!((window.vip(0).imbalance_ratio - 1.0).abs() < 1e-9);
    }

    #[test]
    fn lasting_skew_is_flagged_after_for_s_and_cleared_when_it_ends() {
        let view = view(&[0.5, 0.5]);
        let mut window = Window::new(settings());
        let mut totals = vec![0, 0];
        let t0 = Instant::now();
        window.observe(t0, &view, &counters(&totals));
        // Skewed for 2 s: not yet flagged (for_s = 3).
        assert!(feed(&mut window, &view, t0, &mut totals, &[95, 5], 2).is_empty());
        let raised = feed(
            &mut window,
            &view,
            t0 + Duration::from_secs(2),
            &mut totals,
            &[95, 5],
            2,
        );
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert!(raised[0].raised && raised[0].backend_id == 1);
        assert!(window.vip(0).imbalance_ratio > 1.8);
        // Even again: the window forgets the skew and the flag clears.
        let cleared = feed(
            &mut window,
            &view,
            t0 + Duration::from_secs(4),
            &mut totals,
            &[50, 50],
            30,
        );
        assert!(
            cleared.iter().any(|t| !t.raised && t.backend_id == 1),
            "{cleared:?}"
        );
        assert!(!window.backend(0, 1).imbalanced);
    }

    #[test]
    fn a_trickle_or_a_chance_excess_is_not_flagged() {
        // Below min_flow_rate: 3 flows/s, all to one backend.
        let view2 = view(&[0.5, 0.5]);
        let mut window = Window::new(settings());
        let mut totals = vec![0, 0];
        let t0 = Instant::now();
        window.observe(t0, &view2, &counters(&totals));
        assert!(feed(&mut window, &view2, t0, &mut totals, &[3, 0], 20).is_empty());
        // 100 backends at 1% each, 10 flows/s dealt round-robin, and one
        // backend drawing 3 where 1 was expected in a window of 100 flows:
        // three times its share, but well within chance.
        let shares = vec![0.01; 100];
        let wide = view(&shares);
        let mut window = Window::new(settings());
        let mut totals = vec![0; 100];
        window.observe(t0, &wide, &counters(&totals));
        for second in 1..=40u64 {
            for i in 0..10 {
                totals[((second * 10 + i) % 100) as usize] += 1;
            }
            if second % 5 == 0 {
                totals[0] += 1;
            }
            let at = t0 + Duration::from_secs(second);
            let flagged = window.observe(at, &wide, &counters(&totals));
            assert!(flagged.is_empty(), "second {second}: {flagged:?}");
        }
        assert!(window.backend(0, 1).ratio >= 1.5, "the excess is there");
    }

    #[test]
    fn a_changed_vip_starts_its_window_afresh() {
        let view = view(&[0.5, 0.5]);
        let mut window = Window::new(settings());
        let mut totals = vec![0, 0];
        let t0 = Instant::now();
        window.observe(t0, &view, &counters(&totals));
        feed(&mut window, &view, t0, &mut totals, &[95, 5], 5);
        assert!(window.backend(0, 1).imbalanced);
        window.restart(settings(), &[0], t0 + Duration::from_secs(5));
        let after = feed(
            &mut window,
            &view,
            t0 + Duration::from_secs(5),
            &mut totals,
            &[50, 50],
            2,
        );
        assert!(
            after.len() == 1 && !after[0].raised && after[0].backend_id == 1,
            "{after:?}"
        );
        assert!((window.backend(0, 1).observed_share - 0.5).abs() < 1e-9);
    }
}
