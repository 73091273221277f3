//! Slow start: a backend that joins its VIP's table (added, back from
//! down, drain or ejection) takes a tenth of its weight at first, and one
//! more tenth every `slow_start_s / 10` seconds until it takes all of it,
//! so that a cold cache or a server still starting is not handed its whole
//! share of new flows at once. Each step is a change through the gate by
//! the door `slow-start`; how far each ramp has come is in `status`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    daemon::desk::{Ramped, TableChange},
    policy::health::Down,
};

/// The steps of a ramp: it starts at the first, and is over after the
/// last.
pub const STEPS: u32 = 10;

/// One backend's ramp.
#[derive(Clone, Debug, PartialEq)]
struct Ramp {
    started: Instant,
    length: Duration,
    /// The step installed last (1 to `STEPS`).
    step: u32,
}

impl Ramp {
    /// The step it should be at, at `now`; past `STEPS` when it is over.
    fn due(&self, now: Instant) -> u32 {
        let each = self.length / STEPS;
        if each.is_zero() {
            return STEPS + 1;
        }
        let done = now.duration_since(self.started).as_nanos() / each.as_nanos();
        u32::try_from(done).unwrap_or(u32::MAX).saturating_add(1)
    }
}

/// The controller's slow-start state.
#[derive(Clone, Debug, Default)]
pub struct RampControl {
    ramps: BTreeMap<Down, Ramp>,
}

/// The backends of `config` that are in a table: a positive weight, not
/// down nor ejected (`out`).
pub fn serving(config: &Config, out: &BTreeSet<Down>) -> BTreeSet<Down> {
    config
        .vips
        .iter()
        .flat_map(|vip| {
            let endpoint = vip.endpoint();
            vip.backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(move |b| (endpoint.clone(), vip.backend_addr(b)))
        })
        .filter(|d| !out.contains(d))
        .collect()
}

impl RampControl {
    /// Starts the ramps of the backends of `config` that join a table
    /// (in `serving` now, not in `before`), in VIPs with a `slow_start_s`
    /// that served before (a new VIP, or one that served nobody, takes its
    /// backends at once: there are no peers to spare). Forgets the ramps
    /// of backends no longer serving.
    pub fn start(
        &mut self,
        config: &Config,
        (before, serving): (&BTreeSet<Down>, &BTreeSet<Down>),
        now: Instant,
    ) {
        self.ramps.retain(|d, _| serving.contains(d));
        for vip in config.vips.iter().filter(|v| v.slow_start_s > 0) {
            let endpoint = vip.endpoint();
            if !before.iter().any(|(e, _)| *e == endpoint) {
                continue;
            }
            for joining in serving
                .iter()
                .filter(|d| d.0 == endpoint && !before.contains(*d))
            {
                self.ramps.insert(
                    joining.clone(),
                    Ramp {
                        started: now,
                        length: Duration::from_secs(vip.slow_start_s),
                        step: 1,
                    },
                );
            }
        }
    }

    /// The ramps the installed state holds (`ramped`, from its record, as
    /// a restarted daemon finds them), each at its step, going on from
    /// `now` as if it had started that many steps ago.
    pub fn resume(config: &Config, ramped: &[Ramped], now: Instant) -> Self {
        let ramps = ramped
            .iter()
            .filter_map(|((vip, backend), part)| {
                let slow = config
                    .vips
                    .iter()
                    .find(|v| v.endpoint() == *vip)?
                    .slow_start_s;
                let length = Duration::from_secs(slow);
                let step = ((part * f64::from(STEPS)).round() as u32).clamp(1, STEPS);
                let started = now.checked_sub(length / STEPS * (step - 1))?;
                let ramp = Ramp {
                    started,
                    length,
                    step,
                };
                Some(((vip.clone(), *backend), ramp))
            })
            .collect();
        Self { ramps }
    }

    /// The ramping backends, with the fraction of their weight each takes.
    pub fn ramped(&self) -> Vec<Ramped> {
        self.ramps
            .iter()
            .map(|(d, r)| (d.clone(), f64::from(r.step) / f64::from(STEPS)))
            .collect()
    }

    /// Moves every ramp to the step due at `now` (and ends those that are
    /// over); returns the change to install when any moved.
    pub fn advance(&mut self, now: Instant) -> Option<TableChange> {
        let mut details: BTreeMap<String, Vec<String>> = BTreeMap::new();
        self.ramps.retain(|(vip, backend), ramp| {
            let due = ramp.due(now);
            if due == ramp.step {
                return true;
            }
            let line = if due > STEPS {
                format!(
                    "{backend} at its whole weight after {} s",
                    ramp.length.as_secs()
                )
            } else {
                format!("{backend} at {}% of its weight", due * 100 / STEPS)
            };
            details.entry(vip.clone()).or_default().push(line);
            ramp.step = due;
            due <= STEPS
        });
        (!details.is_empty()).then(|| TableChange {
            vips: details.keys().cloned().collect(),
            details: details
                .into_iter()
                .map(|(vip, lines)| format!("{vip}: {}", lines.join(", ")))
                .collect(),
        })
    }

    /// Forgets ramps started for a change the gate did not install.
    pub fn undo(&mut self, before: RampControl) {
        *self = before;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: &str = "198.18.0.100:80/tcp";

    fn config(slow_start_s: u64) -> Config {
        Config::parse(&format!(
            "[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n\
             slow_start_s = {slow_start_s}\nbackend = [{{ address = \"198.18.1.1\" }}, \
             {{ address = \"198.18.1.2\" }}, {{ address = \"198.18.1.3\" }}]\n"
        ))
        .expect("test config")
    }

    fn down(n: u8) -> Down {
        (VIP.into(), format!("198.18.1.{n}:80").parse().unwrap())
    }

    #[test]
    fn a_joining_backend_ramps_in_tenths_over_slow_start_s() {
        let config = config(20);
        let t0 = Instant::now();
        let before: BTreeSet<Down> = [down(1), down(2)].into();
        let serving = serving(&config, &BTreeSet::new());
        let mut ramps = RampControl::default();
        ramps.start(&config, (&before, &serving), t0);
        assert_eq!(ramps.ramped(), vec![(down(3), 0.1)]);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(ramps.advance(at(1999)), None, "a step every 2 s");
        let step = ramps.advance(at(2000)).expect("a step");
        assert_eq!(step.vips, vec![VIP.to_string()]);
        assert_eq!(
            step.details,
            vec![format!("{VIP}: 198.18.1.3:80 at 20% of its weight")]
        );
        assert_eq!(ramps.ramped(), vec![(down(3), 0.2)]);
        // A late tick jumps to the step due, not one step at a time.
        ramps.advance(at(9000));
        assert_eq!(ramps.ramped(), vec![(down(3), 0.5)]);
        let done = ramps.advance(at(20_000)).expect("the end");
        assert_eq!(
            done.details,
            vec![format!(
                "{VIP}: 198.18.1.3:80 at its whole weight after 20 s"
            )]
        );
        assert!(ramps.ramped().is_empty());
        assert_eq!(ramps.advance(at(30_000)), None);
    }

    #[test]
    fn no_ramp_without_slow_start_for_a_new_vip_or_for_a_backend_gone_again() {
        let t0 = Instant::now();
        let all = serving(&config(20), &BTreeSet::new());
        let rows = [
            ("slow start off", config(0), [down(1), down(2)].into()),
            (
                "a VIP that served nobody before",
                config(20),
                BTreeSet::new(),
            ),
        ];
        for (what, config, before) in rows {
            let mut ramps = RampControl::default();
            ramps.start(&config, (&before, &all), t0);
            assert!(ramps.ramped().is_empty(), "{what}");
        }
        let mut ramps = RampControl::default();
        let before: BTreeSet<Down> = [down(1), down(2)].into();
        ramps.start(&config(20), (&before, &all), t0);
        // It goes down again: its ramp is forgotten, and starts afresh
        // when it comes back.
        let without: BTreeSet<Down> = before.clone();
        ramps.start(&config(20), (&all, &without), t0);
        assert!(ramps.ramped().is_empty());
    }

    #[test]
    fn a_restarted_daemon_resumes_a_ramp_at_its_step() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let mut ramps = RampControl::resume(&config(20), &[(down(3), 0.4)], t0);
        assert_eq!(ramps.ramped(), vec![(down(3), 0.4)]);
        assert_eq!(ramps.advance(t0 + Duration::from_millis(1999)), None);
        ramps.advance(t0 + Duration::from_secs(2));
        assert_eq!(ramps.ramped(), vec![(down(3), 0.5)]);
        // Slow start is off now: the ramp ends at the next look.
        let mut off = RampControl::resume(&config(0), &[(down(3), 0.4)], t0);
        assert!(off.advance(t0).is_some());
        assert!(off.ramped().is_empty());
    }
}
