//! Watched changes: for `watch_s` seconds after an operator's change goes
//! live, the signals of the VIPs it changed are compared with what they
//! were just before it: a backend that became an outlier, fails its health
//! checks or is flagged imbalanced, or a VIP whose clients complete
//! markedly fewer handshakes. A change that made them worse is rolled
//! back to the config before it (the daemon does that through the gate);
//! one that did not is kept when the watch ends. Pure: it is fed signals
//! and times.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{config::Config, monitor::Signals, policy::health::Down};

/// An operator's change that went live, for a watch to start from.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The generation it went live as.
    pub generation: u64,
    /// Which door it came by.
    pub source: String,
    /// The config text before it.
    pub previous: String,
    /// The endpoints of the VIPs it changed.
    pub vips: BTreeSet<String>,
}

/// A change under watch.
#[derive(Clone, Debug)]
pub struct Watch {
    /// The generation the change went live as.
    pub generation: u64,
    /// Which door it came by.
    pub source: String,
    /// The config text before it: what a rollback installs.
    pub previous: String,
    /// The endpoints of the VIPs it changed.
    pub vips: BTreeSet<String>,
    started: Instant,
    until: Instant,
    before: Signals,
    down_before: BTreeSet<Down>,
}

/// What a watch says at one look.
#[derive(Clone, Debug, PartialEq)]
pub enum Look {
    /// Nothing worse yet; it goes on.
    Watching,
    /// The watch is over and nothing got worse.
    Kept,
    /// Worse, in these ways: roll back.
    Worse(Vec<String>),
}

/// How a watch ended, or that it goes on: what `status` and `apply
/// --watch` show.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchReport {
    /// The generation of the change watched.
    pub generation: u64,
    /// The door it came by.
    pub source: String,
    /// The VIPs it changed.
    pub vips: Vec<String>,
    /// `watching`, `kept`, `rolled back`, `rollback refused` (the guards
    /// in force refused it, or it failed), or `superseded` (another change
    /// came).
    pub state: String,
    /// Seconds the watch has left, while it goes on.
    #[serde(default)]
    pub left_s: Option<u64>,
    /// What got worse, when something did; why a rollback was refused.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// The generation the rollback went live as.
    #[serde(default)]
    pub rolled_back_as: Option<u64>,
}

impl Watch {
    /// Watches the change `applied` for `length` from `now`; `before` and
    /// `down_before` are what the monitor and the health checks saw just
    /// before it.
    pub fn new(
        applied: Applied,
        (before, down_before): (Signals, BTreeSet<Down>),
        (now, length): (Instant, Duration),
    ) -> Self {
        let Applied {
            generation,
            source,
            previous,
            vips,
        } = applied;
        Self {
            generation,
            source,
            previous,
            vips,
            started: now,
            until: now + length,
            before,
            down_before,
        }
    }

    /// Its report while it goes on, at `now`.
    pub fn report(&self, now: Instant) -> WatchReport {
        WatchReport {
            generation: self.generation,
            source: self.source.clone(),
            vips: self.vips.iter().cloned().collect(),
            state: "watching".into(),
            left_s: Some(self.until.saturating_duration_since(now).as_secs()),
            ..WatchReport::default()
        }
    }

    /// Compares `signals` and the backends health checks find `down` at
    /// `now` with what they were before the change, for the watched VIPs
    /// of `config` (the config in force) whose `rollback` is on.
    pub fn look(
        &self,
        config: &Config,
        (signals, down): (&Signals, &BTreeSet<Down>),
        now: Instant,
    ) -> Look {
        let settings = &config.rollout;
        let judged: BTreeSet<&String> = self
            .vips
            .iter()
            .filter(|endpoint| {
                config
                    .vips
                    .iter()
                    .find(|v| v.endpoint() == **endpoint)
                    .is_none_or(|v| v.rollback.unwrap_or(settings.rollback))
            })
            .collect();
        let watched = |d: &Down| judged.contains(&d.0);
        let mut worse = Vec::new();
        for (backend, evidence) in &signals.outliers {
            if watched(backend) && !self.before.outliers.contains_key(backend) {
                worse.push(format!(
                    "{} of {} became an outlier: {evidence}",
                    backend.1, backend.0
                ));
            }
        }
        for backend in down.difference(&self.down_before).filter(|d| watched(d)) {
            worse.push(format!(
                "{} of {} fails its health checks",
                backend.1, backend.0
            ));
        }
        for backend in signals
            .imbalanced
            .difference(&self.before.imbalanced)
            .filter(|d| watched(d))
        {
            worse.push(format!(
                "{} of {} is flagged imbalanced",
                backend.1, backend.0
            ));
        }
        for endpoint in &judged {
            if let Some(line) = self.success_drop(endpoint, signals, settings) {
                worse.push(line);
            }
        }
        match (worse.is_empty(), now >= self.until) {
            (false, _) => Look::Worse(worse),
            (true, true) => Look::Kept,
            (true, false) => Look::Watching,
        }
    }

    /// How far `endpoint`'s handshake success fell since the change, when
    /// it fell more than `max_success_drop` on at least `min_syns`
    /// attempts: its success since the change against its success in the
    /// outlier detector's last interval before it.
    fn success_drop(
        &self,
        endpoint: &str,
        signals: &Signals,
        settings: &crate::config::Rollout,
    ) -> Option<String> {
        let rate = |(syns, completed): (u64, u64)| {
            (syns > 0).then(|| completed.min(syns) as f64 / syns as f64)
        };
        let before = rate(*self.before.last_interval.get(endpoint)?)?;
        let (syns_then, done_then) = *self.before.handshakes.get(endpoint)?;
        let (syns_now, done_now) = *signals.handshakes.get(endpoint)?;
        let since = (
            syns_now.saturating_sub(syns_then),
            done_now.saturating_sub(done_then),
        );
        if since.0 < settings.min_syns {
            return None;
        }
        let after = rate(since)?;
        (before - after > settings.max_success_drop).then(|| {
            format!(
                "{endpoint} completes {:.1}% of its handshakes since the change ({} of {}), \
                 against {:.1}% before (more than {:.0} points worse)",
                after * 100.0,
                since.1.min(since.0),
                since.0,
                before * 100.0,
                settings.max_success_drop * 100.0
            )
        })
    }

    /// How long it is watched in all.
    pub fn length(&self) -> Duration {
        self.until.saturating_duration_since(self.started)
    }

    /// How long it has been watched, at `now`.
    pub fn watched_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

/// The signals of `signals` for the VIPs in `vips` only (what a watch
/// keeps as its baseline).
pub fn only(signals: Signals, vips: &BTreeSet<String>) -> Signals {
    let keep = |endpoint: &String| vips.contains(endpoint);
    Signals {
        outliers: signals
            .outliers
            .into_iter()
            .filter(|(d, _)| keep(&d.0))
            .collect(),
        imbalanced: signals
            .imbalanced
            .into_iter()
            .filter(|d| keep(&d.0))
            .collect(),
        handshakes: filter_map(signals.handshakes, keep),
        last_interval: filter_map(signals.last_interval, keep),
    }
}

fn filter_map<V>(map: BTreeMap<String, V>, keep: impl Fn(&String) -> bool) -> BTreeMap<String, V> {
    map.into_iter().filter(|(k, _)| keep(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: &str = "198.18.0.100:80/tcp";

    fn config(extra: &str, vip_extra: &str) -> Config {
        Config::parse(&format!(
            "{extra}\n[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n\
             {vip_extra}\nbackend = [{{ address = \"198.18.1.1\" }}, {{ address = \
             \"198.18.1.2\" }}, {{ address = \"198.18.1.4\" }}]\n"
        ))
        .expect("test config")
    }

    fn backend(n: u8) -> Down {
        (VIP.into(), format!("198.18.1.{n}:80").parse().unwrap())
    }

    /// The signals of a VIP whose clients attempted `syns` handshakes and
    /// completed `completed` so far, and 100 of 100 in the last interval.
    fn signals(syns: u64, completed: u64) -> Signals {
        Signals {
            handshakes: [(VIP.to_string(), (syns, completed))].into(),
            last_interval: [(VIP.to_string(), (100, 100))].into(),
            ..Signals::default()
        }
    }

    fn watch(t0: Instant) -> Watch {
        Watch::new(
            Applied {
                generation: 7,
                source: "api apply".into(),
                previous: "previous".into(),
                vips: [VIP.to_string()].into(),
            },
            (signals(1000, 1000), BTreeSet::new()),
            (t0, Duration::from_secs(30)),
        )
    }

    #[test]
    fn a_change_that_makes_nothing_worse_is_kept_when_the_watch_ends() {
        let t0 = Instant::now();
        let config = config("", "");
        let watch = watch(t0);
        let fine = signals(1200, 1199);
        let none = BTreeSet::new();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(watch.look(&config, (&fine, &none), at(10)), Look::Watching);
        assert_eq!(watch.look(&config, (&fine, &none), at(30)), Look::Kept);
    }

    #[test]
    fn each_signal_that_gets_worse_is_evidence() {
        let t0 = Instant::now();
        let config = config("", "");
        let watch = watch(t0);
        let at = t0 + Duration::from_secs(10);
        let mut outlier = signals(1200, 1190);
        outlier
            .outliers
            .insert(backend(4), "handshakes 0/40".into());
        let imbalanced = Signals {
            imbalanced: [backend(1)].into(),
            ..signals(1200, 1200)
        };
        let down: BTreeSet<Down> = [backend(2)].into();
        let none = BTreeSet::new();
        let rows: [(&str, &Signals, &BTreeSet<Down>, &str); 4] = [
            (
                "a backend became an outlier",
                &outlier,
                &none,
                "198.18.1.4:80 of 198.18.0.100:80/tcp became an outlier: handshakes 0/40",
            ),
            (
                "a backend fails its checks",
                &signals(1200, 1200),
                &down,
                "198.18.1.2:80 of 198.18.0.100:80/tcp fails its health checks",
            ),
            (
                "a backend is flagged imbalanced",
                &imbalanced,
                &none,
                "198.18.1.1:80 of 198.18.0.100:80/tcp is flagged imbalanced",
            ),
            (
                "the VIP completes fewer handshakes",
                &signals(1200, 1150),
                &none,
                "198.18.0.100:80/tcp completes 75.0% of its handshakes since the change (150 of \
                 200), against 100.0% before (more than 10 points worse)",
            ),
        ];
        for (what, now, down, evidence) in rows {
            assert_eq!(
                watch.look(&config, (now, down), at),
                Look::Worse(vec![evidence.to_string()]),
                "{what}"
            );
        }
    }

    #[test]
    fn small_samples_small_drops_and_old_outliers_are_not_worse() {
        let t0 = Instant::now();
        let config = config("", "");
        let mut watch = watch(t0);
        watch
            .before
            .outliers
            .insert(backend(4), "it was one before".into());
        let at = t0 + Duration::from_secs(10);
        let none = BTreeSet::new();
        let mut still = signals(1200, 1195);
        still.outliers.insert(backend(4), "handshakes 0/40".into());
        let rows = [
            ("an outlier from before the change", still),
            (
                "40 attempts, all failed: below min_syns",
                signals(1040, 1000),
            ),
            ("a drop of 5 points", signals(1200, 1190)),
        ];
        for (what, now) in rows {
            assert_eq!(
                watch.look(&config, (&now, &none), at),
                Look::Watching,
                "{what}"
            );
        }
    }

    #[test]
    fn a_vip_whose_rollback_is_off_is_not_judged() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_secs(10);
        let none = BTreeSet::new();
        for config in [
            config("", "rollback = false"),
            config("[rollout]\nrollback = false", ""),
        ] {
            let look = watch(t0).look(&config, (&signals(1200, 1000), &none), at);
            assert_eq!(look, Look::Watching);
        }
    }
}
