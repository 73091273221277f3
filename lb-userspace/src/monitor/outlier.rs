//! The outlier detector: each TCP backend's handshake success (handshakes
//! its clients completed per attempt) over each interval, judged against
//! the median of its peers' in the same VIP, so that one backend whose
//! service does not answer stands out and a VIP-wide failure (or a flood
//! of SYNs that never complete) makes nobody an outlier. Pure: it is fed
//! counters and times, and says what it found; ejecting is the daemon's.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use lb_common::maps::TrafficCounters;

use super::{View, VipView, window::SIGNIFICANCE};
use crate::{config::Outlier, dataplane::counters::Counters};

/// One backend's handshakes over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Handshakes {
    /// Attempts: flows recorded from their SYN.
    pub syns: u64,
    /// Completed, less those the client reset early.
    pub completed: u64,
    /// SYNs sent again, unanswered.
    pub retries: u64,
    /// Handshaken flows the client reset early.
    pub early_resets: u64,
}

impl Handshakes {
    /// Completed per attempt (at most 1), if it attempted any.
    pub fn success(&self) -> Option<f64> {
        (self.syns > 0).then(|| self.completed.min(self.syns) as f64 / self.syns as f64)
    }

    fn between(first: &TrafficCounters, last: &TrafficCounters) -> Self {
        let early_resets = last.early_resets.saturating_sub(first.early_resets);
        Self {
            syns: last.syns.saturating_sub(first.syns),
            completed: last
                .handshakes
                .saturating_sub(first.handshakes)
                .saturating_sub(early_resets),
            retries: last.syn_retries.saturating_sub(first.syn_retries),
            early_resets,
        }
    }
}

/// What the last interval says of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Finding {
    /// Its handshakes over the interval.
    pub handshakes: Handshakes,
    /// The median success of its judged peers, when it was judged.
    pub peers: Option<f64>,
    /// Judged an outlier.
    pub outlier: bool,
}

/// Why a VIP's backends were not judged in the last interval.
#[derive(Clone, Debug, PartialEq)]
pub enum VipVerdict {
    /// Judged: its backends' findings say who is an outlier.
    Judged {
        /// The median success of its judged backends.
        median: f64,
    },
    /// Not a TCP VIP: no handshakes to judge.
    NotTcp,
    /// Too few attempts: fewer than `min_backends` backends made
    /// `min_syns` attempts each.
    TooFew {
        /// Backends with enough attempts.
        judged: usize,
    },
    /// The median success is below `min_median`: the VIP as a whole
    /// fails (or is flooded), which no ejection would mend.
    Failing {
        /// The median success of its judged backends.
        median: f64,
    },
}

impl std::fmt::Display for VipVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VipVerdict::Judged { median } => {
                write!(f, "judged: median handshake success {:.1}%", median * 100.0)
            }
            VipVerdict::NotTcp => write!(f, "not judged: not TCP"),
            VipVerdict::TooFew { judged } => write!(
                f,
                "not judged: {judged} backends made enough handshake attempts"
            ),
            VipVerdict::Failing { median } => write!(
                f,
                "nobody judged an outlier: median handshake success {:.1}% is below min_median \
                 (the whole VIP fails, or is flooded)",
                median * 100.0
            ),
        }
    }
}

/// One outlier of the last interval, with its evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// Its VIP's endpoint.
    pub vip: String,
    /// Its identity (as health checks name it).
    pub backend: std::net::SocketAddr,
    /// The evidence, for the log and the journal.
    pub evidence: String,
}

/// The detector's state.
#[derive(Debug)]
pub struct Detector {
    settings: Outlier,
    /// The counters at the start of the interval under way.
    baseline: Option<(Instant, Counters)>,
    /// The intervals judged so far.
    judged: u64,
    backends: HashMap<(u32, u32), Finding>,
    vips: HashMap<u32, VipVerdict>,
    found: Vec<Found>,
}

/// The median of `values` (not empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

impl Detector {
    /// A detector with nothing seen yet.
    pub fn new(settings: Outlier) -> Self {
        Self {
            settings,
            baseline: None,
            judged: 0,
            backends: HashMap::new(),
            vips: HashMap::new(),
            found: Vec::new(),
        }
    }

    /// Takes new settings; an interval under way goes on.
    pub fn configure(&mut self, settings: Outlier) {
        self.settings = settings;
    }

    /// Adds the counters read at `at`. When an interval is over, judges
    /// every backend of `view` over it and returns true.
    pub fn observe(&mut self, at: Instant, view: &View, counters: &Counters) -> bool {
        let interval = Duration::from_secs(self.settings.interval_s);
        let Some((start, first)) = &self.baseline else {
            self.baseline = Some((at, counters.clone()));
            return false;
        };
        if at.duration_since(*start) < interval {
            return false;
        }
        let span = at.duration_since(*start);
        let mut backends = HashMap::new();
        let mut vips = HashMap::new();
        let mut found = Vec::new();
        for vip in &view.vips {
            let (verdict, findings) = self.judge(vip, first, counters);
            for (backend, finding) in vip.backends.iter().zip(findings) {
                if finding.outlier {
                    found.push(Found {
                        vip: vip.endpoint.clone(),
                        backend: backend.socket,
                        evidence: evidence(&finding, span),
                    });
                }
                backends.insert((vip.vip_id, backend.backend_id), finding);
            }
            vips.insert(vip.vip_id, verdict);
        }
        self.backends = backends;
        self.vips = vips;
        self.found = found;
        self.judged += 1;
        self.baseline = Some((at, counters.clone()));
        true
    }

    /// Judges one VIP's backends over an interval from `first` to `last`.
    fn judge(
        &self,
        vip: &VipView,
        first: &Counters,
        last: &Counters,
    ) -> (VipVerdict, Vec<Finding>) {
        let mut findings: Vec<Finding> = vip
            .backends
            .iter()
            .map(|b| Finding {
                handshakes: Handshakes::between(
                    &first.backend(b.backend_id),
                    &last.backend(b.backend_id),
                ),
                ..Finding::default()
            })
            .collect();
        if !vip.endpoint.ends_with("/tcp") {
            return (VipVerdict::NotTcp, findings);
        }
        // Judged: in the table, with enough attempts of its own.
        let judged: Vec<usize> = vip
            .backends
            .iter()
            .zip(&findings)
            .enumerate()
            .filter(|(_, (b, f))| {
                b.expected_share > 0.0 && f.handshakes.syns >= self.settings.min_syns
            })
            .map(|(i, _)| i)
            .collect();
        if judged.len() < self.settings.min_backends as usize {
            return (
                VipVerdict::TooFew {
                    judged: judged.len(),
                },
                findings,
            );
        }
        let rates: Vec<f64> = findings
            .iter()
            .map(|f| f.handshakes.success().unwrap_or(0.0))
            .collect();
        let success = |i: usize| rates[i];
        let all = median(&mut judged.iter().map(|&i| success(i)).collect::<Vec<_>>());
        if all < self.settings.min_median {
            return (VipVerdict::Failing { median: all }, findings);
        }
        for &i in &judged {
            let mut others: Vec<f64> = judged
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| success(j))
                .collect();
            let peers = median(&mut others);
            let shakes = findings[i].handshakes;
            let (n, got) = (shakes.syns as f64, shakes.completed.min(shakes.syns) as f64);
            // Far below its peers, and beyond what chance would make of
            // its own attempts at its peers' success.
            let spread = (n * peers * (1.0 - peers)).sqrt();
            let outlier = success(i) <= self.settings.success_factor * peers
                && n * peers - got >= SIGNIFICANCE * spread;
            findings[i].peers = Some(peers);
            findings[i].outlier = outlier;
        }
        (VipVerdict::Judged { median: all }, findings)
    }

    /// The intervals judged so far: a new one means new findings.
    pub fn judged(&self) -> u64 {
        self.judged
    }

    /// The outliers of the last interval judged.
    pub fn found(&self) -> &[Found] {
        &self.found
    }

    /// The last finding of a backend.
    pub fn backend(&self, vip_id: u32, backend_id: u32) -> Finding {
        self.backends
            .get(&(vip_id, backend_id))
            .copied()
            .unwrap_or_default()
    }

    /// The last verdict on a VIP, once an interval was judged.
    pub fn vip(&self, vip_id: u32) -> Option<&VipVerdict> {
        self.vips.get(&vip_id)
    }
}

/// `handshakes 3/1210 = 0.2% vs 98.1% for its peers over 10 s; 2411 SYN
/// retries, 0 early resets`.
fn evidence(finding: &Finding, span: Duration) -> String {
    let h = &finding.handshakes;
    format!(
        "handshakes {}/{} = {:.1}% against {:.1}% for its peers over {} s; {} SYN retries, {} \
         early resets",
        h.completed.min(h.syns),
        h.syns,
        h.success().unwrap_or(0.0) * 100.0,
        finding.peers.unwrap_or(0.0) * 100.0,
        span.as_secs(),
        h.retries,
        h.early_resets
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::BackendView;

    const T0: u64 = 1000;

    /// A view of one VIP with `n` backends of equal share.
    fn view(endpoint: &str, n: u32) -> View {
        View {
            generation: 1,
            vips: vec![VipView {
                name: "web".into(),
                endpoint: endpoint.into(),
                vip_id: 1,
                backends: (1..=n)
                    .map(|id| BackendView {
                        name: format!("b{id}"),
                        address: format!("198.18.1.{id}:80"),
                        backend_id: id,
                        weight: 1,
                        expected_share: 1.0 / f64::from(n),
                        held_out: false,
                        socket: format!("198.18.1.{id}:80").parse().unwrap(),
                        down: false,
                        server_id: None,
                    })
                    .collect(),
                last_change: None,
                table_digest: String::new(),
                quic: None,
            }],
            counted: (n + 1, 2),
            rules: Vec::new(),
        }
    }

    /// Counters where backend `i + 1` attempted `syns[i]` handshakes and
    /// completed `completed[i]`.
    fn counters(syns: &[u64], completed: &[u64]) -> Counters {
        let mut backends = vec![TrafficCounters::default()];
        backends.extend(syns.iter().zip(completed).map(|(&s, &c)| TrafficCounters {
            syns: s,
            handshakes: c,
            syn_retries: (s - c) * 3,
            ..TrafficCounters::default()
        }));
        Counters {
            backends,
            ..Counters::default()
        }
    }

    /// The findings of one interval, from zero counters to `last`.
    fn judge(view: &View, last: &Counters) -> Detector {
        let mut detector = Detector::new(Outlier::default());
        let at = |s: u64| Instant::now() + Duration::from_secs(s);
        assert!(!detector.observe(at(T0), view, &Counters::default()));
        assert!(
            !detector.observe(at(T0 + 5), view, last),
            "not before the interval is over"
        );
        assert!(detector.observe(at(T0 + 10), view, last));
        detector
    }

    fn outliers(detector: &Detector, n: u32) -> Vec<u32> {
        (1..=n)
            .filter(|&id| detector.backend(1, id).outlier)
            .collect()
    }

    #[test]
    fn one_backend_that_completes_no_handshake_stands_out() {
        let view = view("198.18.0.100:80/tcp", 4);
        let detector = judge(&view, &counters(&[250, 240, 260, 250], &[248, 239, 258, 0]));
        assert_eq!(outliers(&detector, 4), vec![4]);
        assert!(matches!(detector.vip(1), Some(VipVerdict::Judged { median }) if *median > 0.9));
        let found = detector.found();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].backend, "198.18.1.4:80".parse().unwrap());
        assert!(
            found[0]
                .evidence
                .starts_with("handshakes 0/250 = 0.0% against 99.2%"),
            "{}",
            found[0].evidence
        );
        assert!(
            found[0].evidence.contains("750 SYN retries"),
            "{}",
            found[0].evidence
        );
    }

    #[test]
    fn mild_or_insignificant_shortfalls_are_not_outliers() {
        let rows: [(&str, [u64; 4], [u64; 4]); 3] = [
            (
                "a backend at 60% of its peers",
                [200; 4],
                [200, 200, 200, 120],
            ),
            ("all healthy", [200; 4], [199, 198, 200, 197]),
            // 100 attempts is the minimum: 3 of them at 0% is 3, not 100.
            (
                "too few attempts to judge it",
                [200, 200, 200, 99],
                [200, 200, 200, 0],
            ),
        ];
        for (what, syns, completed) in rows {
            let view = view("198.18.0.100:80/tcp", 4);
            let detector = judge(&view, &counters(&syns, &completed));
            assert_eq!(outliers(&detector, 4), Vec::<u32>::new(), "{what}");
        }
    }

    #[test]
    fn a_vip_wide_failure_or_too_few_peers_ejects_nobody() {
        let view4 = view("198.18.0.100:80/tcp", 4);
        let failing = judge(&view4, &counters(&[300; 4], &[90, 80, 100, 0]));
        assert_eq!(outliers(&failing, 4), Vec::<u32>::new());
        assert!(matches!(failing.vip(1), Some(VipVerdict::Failing { .. })));

        let view2 = view("198.18.0.100:80/tcp", 2);
        let two = judge(&view2, &counters(&[300, 300], &[300, 0]));
        assert_eq!(outliers(&two, 2), Vec::<u32>::new());
        assert_eq!(two.vip(1), Some(&VipVerdict::TooFew { judged: 2 }));
    }

    #[test]
    fn udp_vips_are_not_judged() {
        let view = view("198.18.0.100:53/udp", 4);
        let detector = judge(&view, &counters(&[300; 4], &[300, 300, 300, 0]));
        assert_eq!(detector.vip(1), Some(&VipVerdict::NotTcp));
        assert_eq!(outliers(&detector, 4), Vec::<u32>::new());
    }

    #[test]
    fn each_interval_is_judged_on_its_own_counts() {
        let view = view("198.18.0.100:80/tcp", 3);
        let mut detector = Detector::new(Outlier::default());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let bad = counters(&[200, 200, 200], &[200, 200, 0]);
        detector.observe(at(0), &view, &Counters::default());
        detector.observe(at(10), &view, &bad);
        assert_eq!(outliers(&detector, 3), vec![3]);
        assert_eq!(detector.judged(), 1);
        // The next interval: it completes everything it is sent.
        let good = counters(&[400, 400, 400], &[400, 400, 200]);
        detector.observe(at(20), &view, &good);
        assert_eq!(detector.judged(), 2);
        assert_eq!(outliers(&detector, 3), Vec::<u32>::new());
        assert_eq!(
            detector.backend(1, 3).handshakes.success(),
            Some(1.0),
            "the interval's own attempts and completions"
        );
    }
}
