//! The controller's side of outlier detection: which of the outliers the
//! detector found are ejected, for how long, and when they come back.
//! What it decides goes through the gate like any change, by the door
//! `outlier`.
//!
//! An ejection only ever takes a backend out of the table for new flows:
//! its slot stays active, so its established flows stay on it (a drain,
//! not a health failure). It never takes more than `max_ejection_percent`
//! of a VIP's weight out, never puts a VIP into panic (counting the
//! backends health checks took down), and a VIP that health failures put
//! into panic later gets its ejected backends back at once (fail open).
//! An ejection lasts `base_ejection_s` times the backend's ejections in a
//! row (capped at `max_ejection_s`), then the backend comes back and is
//! judged again on its new flows.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use crate::{
    config::{Config, VipConfig},
    daemon::desk::TableChange,
    monitor::outlier::Found,
    policy::health::{Down, judge},
};

/// One ejected backend.
#[derive(Clone, Debug, PartialEq)]
struct Ejection {
    /// When it comes back.
    until: Instant,
    /// How long it is out.
    length: Duration,
}

/// The controller's outlier state.
#[derive(Clone, Debug, Default)]
pub struct OutlierControl {
    /// The backends out of the tables now.
    ejected: BTreeMap<Down, Ejection>,
    /// Per backend: its ejections in a row, and when it last came back.
    record: HashMap<Down, (u32, Option<Instant>)>,
    /// The detector's intervals acted on.
    acted_on: u64,
    /// Outliers left in, and why, as last logged (each reason once).
    left_in: BTreeMap<Down, String>,
}

/// Why an outlier of `vip` stays in, if it must.
fn must_stay(
    config: &Config,
    vip: &VipConfig,
    backend: &Down,
    (dead, ejected): (&BTreeSet<Down>, &BTreeSet<Down>),
) -> Option<String> {
    let settings = &config.outlier;
    if !vip.eject_outliers.unwrap_or(settings.eject) {
        return Some("ejection is off for its VIP".into());
    }
    if dead.contains(backend) {
        return Some("its health checks fail already".into());
    }
    let endpoint = vip.endpoint();
    let weight_of = |out: &dyn Fn(&Down) -> bool| -> u64 {
        vip.backends
            .iter()
            .filter(|b| out(&(endpoint.clone(), vip.backend_addr(b))))
            .map(|b| u64::from(b.weight))
            .sum()
    };
    let total = weight_of(&|_| true);
    let out = weight_of(&|d| d == backend || ejected.contains(d));
    if out * 100 > u64::from(settings.max_ejection_percent) * total {
        return Some(format!(
            "ejecting it would take {:.0}% of its VIP's weight out, above max_ejection_percent \
             ({}%)",
            out as f64 * 100.0 / total.max(1) as f64,
            settings.max_ejection_percent
        ));
    }
    let mut without: BTreeSet<Down> = dead.union(ejected).cloned().collect();
    without.insert(backend.clone());
    let verdict = judge(config, &without)
        .into_iter()
        .find(|v| v.endpoint == endpoint);
    if verdict.is_some_and(|v| v.panic) {
        return Some(
            "ejecting it would put its VIP into panic (too few healthy backends left)".into(),
        );
    }
    None
}

impl OutlierControl {
    /// Outlier control that starts with the backends the installed state
    /// already leaves out as outliers (`ejected`, from its record): each
    /// stays out for `base_ejection_s` from now, then is judged again.
    pub fn start(config: &Config, ejected: &[Down], now: Instant) -> Self {
        let length = Duration::from_secs(config.outlier.base_ejection_s);
        Self {
            ejected: ejected
                .iter()
                .map(|d| {
                    let until = now + length;
                    (d.clone(), Ejection { until, length })
                })
                .collect(),
            record: ejected.iter().map(|d| (d.clone(), (1, None))).collect(),
            ..Self::default()
        }
    }

    /// The backends ejected now.
    pub fn ejected(&self) -> Vec<Down> {
        self.ejected.keys().cloned().collect()
    }

    /// What the tables should leave out now, given the detector's findings
    /// (`judged` intervals so far, the last one's outliers `found`) and
    /// the backends health checks take down (`dead`), for `config` (the
    /// operator's config in force). Returns the change to install when
    /// the ejected set changes.
    pub fn reconcile(
        &mut self,
        config: &Config,
        dead: &BTreeSet<Down>,
        (judged, found): (u64, &[Found]),
        now: Instant,
    ) -> Option<TableChange> {
        let before = self.ejected.clone();
        let mut details: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        let settings = &config.outlier;
        // Back: its time is over, its VIP or itself is gone, or its VIP
        // is in panic (fail open).
        let in_config = |(vip, backend): &Down| {
            config.vips.iter().any(|v| {
                v.endpoint() == *vip && v.backends.iter().any(|b| v.backend_addr(b) == *backend)
            })
        };
        let out: BTreeSet<Down> = dead
            .union(&self.ejected.keys().cloned().collect())
            .cloned()
            .collect();
        let panicking: BTreeSet<String> = judge(config, &out)
            .into_iter()
            .filter(|v| v.panic)
            .map(|v| v.endpoint)
            .collect();
        let mut back = Vec::new();
        for (down, ejection) in &self.ejected {
            let why = if !in_config(down) {
                None
            } else if panicking.contains(&down.0) {
                Some("its VIP is in panic: every backend is kept".to_string())
            } else if ejection.until <= now {
                Some(format!("after {} s", ejection.length.as_secs()))
            } else {
                continue;
            };
            back.push(down.clone());
            if let Some(why) = why {
                details
                    .entry(down.0.clone())
                    .or_default()
                    .1
                    .push(format!("{} ({why})", down.1));
            }
        }
        for down in back {
            self.ejected.remove(&down);
            if let Some(record) = self.record.get_mut(&down) {
                record.1 = Some(now);
            }
        }
        // Out: the outliers of an interval not acted on yet.
        if judged > self.acted_on {
            self.acted_on = judged;
            let mut left_in = BTreeMap::new();
            for finding in found {
                let down = (finding.vip.clone(), finding.backend);
                if self.ejected.contains_key(&down) {
                    continue;
                }
                let Some(vip) = config.vips.iter().find(|v| v.endpoint() == finding.vip) else {
                    continue;
                };
                let ejected: BTreeSet<Down> = self.ejected.keys().cloned().collect();
                if let Some(why) = must_stay(config, vip, &down, (dead, &ejected)) {
                    if self.left_in.get(&down) != Some(&why) {
                        crate::note!(
                            "outlier: VIP {} backend {} stays in the table: {why}",
                            down.0,
                            down.1
                        );
                    }
                    left_in.insert(down, why);
                    continue;
                }
                let (times, returned) = self.record.entry(down.clone()).or_insert((0, None));
                // A backend back and clean for a whole maximum ejection
                // starts its count afresh.
                let max = Duration::from_secs(settings.max_ejection_s);
                if returned.is_some_and(|at| now.duration_since(at) >= max) {
                    *times = 0;
                }
                *times += 1;
                let length = Duration::from_secs(settings.base_ejection_s)
                    .saturating_mul(*times)
                    .min(max);
                details.entry(down.0.clone()).or_default().0.push(format!(
                    "{} ({}; ejection {}, for {} s)",
                    down.1,
                    finding.evidence,
                    times,
                    length.as_secs()
                ));
                self.ejected.insert(
                    down,
                    Ejection {
                        until: now + length,
                        length,
                    },
                );
            }
            self.left_in = left_in;
        }
        if self.ejected == before {
            return None;
        }
        let label = |endpoint: &str| {
            config
                .vips
                .iter()
                .find(|v| v.endpoint() == endpoint)
                .map_or_else(|| endpoint.to_string(), VipConfig::label)
        };
        let list = |items: &[String]| {
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(", ")
            }
        };
        let vips: Vec<String> = details.keys().cloned().collect();
        let details = details
            .iter()
            .map(|(endpoint, (out, back))| {
                format!(
                    "{} {endpoint}: eject {}; back {}",
                    label(endpoint),
                    list(out),
                    list(back)
                )
            })
            .collect();
        Some(TableChange { details, vips })
    }

    /// Forgets a change the gate did not install: the tables still leave
    /// out what they did `before` (the intervals acted on stay acted on).
    pub fn undo(&mut self, before: OutlierControl) {
        let acted_on = self.acted_on;
        *self = Self { acted_on, ..before };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP VIP with backends of `weights`, and `extra` config lines.
    fn config(weights: &[u32], extra: &str) -> Config {
        let backends: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{{ address = \"198.18.1.{}\", weight = {w} }}", i + 1))
            .collect();
        let text = format!(
            "{extra}\n[[vip]]\nname = \"web\"\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \
             \"tcp\"\nbackend = [{}]\n",
            backends.join(", ")
        );
        Config::parse(&text).expect("test config")
    }

    const VIP: &str = "198.18.0.100:80/tcp";

    fn down(n: u8) -> Down {
        (VIP.into(), format!("198.18.1.{n}:80").parse().unwrap())
    }

    fn found(n: u8) -> Found {
        Found {
            vip: VIP.into(),
            backend: down(n).1,
            evidence: "handshakes 0/200".into(),
        }
    }

    #[test]
    fn an_outlier_is_ejected_for_a_time_that_grows_with_repeats() {
        let config = config(&[1; 8], "");
        let mut control = OutlierControl::default();
        let t0 = Instant::now();
        let none = BTreeSet::new();
        let change = control
            .reconcile(&config, &none, (1, &[found(3)]), t0)
            .expect("ejected");
        assert_eq!(control.ejected(), vec![down(3)]);
        assert_eq!(change.vips, vec![VIP.to_string()]);
        assert!(
            change.details[0]
                .contains("eject 198.18.1.3:80 (handshakes 0/200; ejection 1, for 30 s)"),
            "{:?}",
            change.details
        );
        // The same interval again changes nothing; nor does time short of 30 s.
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            control.reconcile(&config, &none, (1, &[found(3)]), at(29)),
            None
        );
        let back = control
            .reconcile(&config, &none, (1, &[]), at(30))
            .expect("back");
        assert!(
            back.details[0].ends_with("back 198.18.1.3:80 (after 30 s)"),
            "{:?}",
            back.details
        );
        assert!(control.ejected().is_empty());
        // Found again: out for twice as long.
        let again = control
            .reconcile(&config, &none, (2, &[found(3)]), at(40))
            .unwrap();
        assert!(
            again.details[0].contains("ejection 2, for 60 s"),
            "{:?}",
            again.details
        );
        assert_eq!(control.reconcile(&config, &none, (2, &[]), at(99)), None);
        assert!(
            control
                .reconcile(&config, &none, (2, &[]), at(100))
                .is_some()
        );
    }

    #[test]
    fn ejection_stops_at_its_share_of_weight_and_short_of_panic() {
        let none = BTreeSet::new();
        let t0 = Instant::now();
        // Four equal backends: 25% is one of them.
        let four = config(&[1; 4], "");
        let mut control = OutlierControl::default();
        control.reconcile(&four, &none, (1, &[found(1), found(2)]), t0);
        assert_eq!(control.ejected(), vec![down(1)], "one of four, not two");
        // Three equal backends: one is 33%, above 25%.
        let three = config(&[1; 3], "");
        let mut control = OutlierControl::default();
        assert_eq!(control.reconcile(&three, &none, (1, &[found(1)]), t0), None);
        // Where the limit allows it, panic still does not: with one of four
        // dead and min_backends 3, ejecting another leaves two.
        let lax = config(
            &[1; 4],
            "[outlier]\nmax_ejection_percent = 100\n[guards]\nmin_backends = 3",
        );
        let dead: BTreeSet<Down> = [down(4)].into();
        let mut control = OutlierControl::default();
        assert_eq!(control.reconcile(&lax, &dead, (1, &[found(1)]), t0), None);
        // Off for the VIP, or everywhere: nothing.
        let off = config(&[1; 8], "[outlier]\neject = false");
        let mut control = OutlierControl::default();
        assert_eq!(control.reconcile(&off, &none, (1, &[found(1)]), t0), None);
    }

    #[test]
    fn a_vip_in_panic_gets_its_ejected_backends_back() {
        let config = config(&[1; 8], "[guards]\nmin_backends = 5");
        let t0 = Instant::now();
        let mut control = OutlierControl::default();
        control.reconcile(&config, &BTreeSet::new(), (1, &[found(1)]), t0);
        assert_eq!(control.ejected(), vec![down(1)]);
        // Three more fail their checks: with the ejected one, four of
        // eight are left, below min_backends 5.
        let dead: BTreeSet<Down> = [down(2), down(3), down(4)].into();
        let back = control
            .reconcile(&config, &dead, (1, &[]), t0 + Duration::from_secs(1))
            .expect("back");
        assert!(
            back.details[0].contains("its VIP is in panic"),
            "{:?}",
            back.details
        );
        assert!(control.ejected().is_empty());
    }

    #[test]
    fn a_restart_keeps_the_recorded_ejections_for_a_base_time() {
        let config = config(&[1; 8], "");
        let t0 = Instant::now();
        let mut control = OutlierControl::start(&config, &[down(2)], t0);
        assert_eq!(control.ejected(), vec![down(2)]);
        let none = BTreeSet::new();
        assert_eq!(control.reconcile(&config, &none, (0, &[]), t0), None);
        assert!(
            control
                .reconcile(&config, &none, (0, &[]), t0 + Duration::from_secs(30))
                .is_some()
        );
    }
}
