//! The controller's side of health checks: which backends the checker
//! found dead, which of them the panic policy lets the tables leave out,
//! and how often a VIP's table may change for health (damping). What it
//! decides goes through the gate like any change, by the door `health`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    health::{Checker, Health, Key, Target, Transition},
    monitor::Changes,
    policy::health::{Down, VipHealth, judge},
};

/// The window damping counts table changes in.
const DAMPING_WINDOW: Duration = Duration::from_secs(60);

/// What a reconciliation asks the gate to install.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthChange {
    /// For the journal: per VIP, what changed and why.
    pub details: Vec<String>,
    /// The endpoints of the VIPs whose tables change.
    pub vips: Vec<String>,
}

/// The controller's health state.
pub struct HealthControl {
    checker: Arc<Checker>,
    /// Per checked backend, its `rise` (kept from the last targets).
    rises: HashMap<Key, u32>,
    /// Per VIP endpoint: the dead backends its installed table leaves out.
    applied: BTreeMap<String, Vec<SocketAddr>>,
    /// Per VIP endpoint: when its health-driven changes were applied.
    recent: HashMap<String, VecDeque<Instant>>,
    /// Per VIP endpoint: a change is waiting for the damping budget.
    waiting: BTreeSet<String>,
    changes: BTreeMap<String, Changes>,
    verdicts: Vec<VipHealth>,
}

/// Every backend of `config` to check.
pub fn targets(config: &Config) -> Vec<Target> {
    config
        .vips
        .iter()
        .flat_map(|vip| {
            let endpoint = vip.endpoint();
            vip.backends.iter().map(move |backend| Target {
                key: Key {
                    vip: endpoint.clone(),
                    backend: vip.backend_addr(backend),
                },
                check: vip.check_of(backend, &config.health_check),
            })
        })
        .collect()
}

/// `down`, grouped by VIP endpoint.
fn grouped(down: &[Down]) -> BTreeMap<String, Vec<SocketAddr>> {
    let mut by_vip: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    for (vip, backend) in down {
        by_vip.entry(vip.clone()).or_default().push(*backend);
    }
    by_vip
}

/// Each target's `rise`: the passing checks a backend the tables leave out
/// needs before it comes back.
fn rises(targets: &[Target]) -> HashMap<Key, u32> {
    targets
        .iter()
        .map(|t| (t.key.clone(), t.check.settings.rise))
        .collect()
}

impl HealthControl {
    /// Starts checking every backend of `config`; transitions go to
    /// `notify`. `down` is what the installed state already leaves out.
    pub fn start(
        config: &Config,
        down: &[Down],
        notify: impl Fn(Transition) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let targets = targets(config);
        let rises = rises(&targets);
        let checker = Arc::new(Checker::start(targets, notify)?);
        Ok(Self {
            checker,
            rises,
            applied: grouped(down),
            recent: HashMap::new(),
            waiting: BTreeSet::new(),
            changes: BTreeMap::new(),
            verdicts: judge(config, &BTreeSet::new()),
        })
    }

    /// The checker, for the monitor.
    pub fn checker(&self) -> Arc<Checker> {
        self.checker.clone()
    }

    /// The backends the installed state leaves out.
    pub fn down(&self) -> Vec<Down> {
        self.applied
            .iter()
            .flat_map(|(vip, backends)| backends.iter().map(move |b| (vip.clone(), *b)))
            .collect()
    }

    /// Checks what `config` (the config in force) has.
    pub fn retarget(&mut self, config: &Config) {
        let targets = targets(config);
        self.rises = rises(&targets);
        self.checker.retarget(targets);
    }

    /// The panic policy's last verdicts, per VIP.
    pub fn verdicts(&self) -> &[VipHealth] {
        &self.verdicts
    }

    /// Health-driven changes per VIP endpoint.
    pub fn changes(&self) -> &BTreeMap<String, Changes> {
        &self.changes
    }

    /// The backends the checker finds dead: failing checks, or out of the
    /// tables and not yet past `rise` checks (after a restart the checker
    /// starts every backend up).
    pub fn dead(&self) -> BTreeSet<Down> {
        self.dead_in(&self.checker.states())
    }

    fn dead_in(&self, states: &HashMap<Key, Health>) -> BTreeSet<Down> {
        states
            .iter()
            .filter(|(key, h)| {
                let out = self
                    .applied
                    .get(&key.vip)
                    .is_some_and(|b| b.contains(&key.backend));
                !h.up || (out && h.successes < self.rises.get(*key).copied().unwrap_or(1))
            })
            .map(|(k, _)| (k.vip.clone(), k.backend))
            .collect()
    }

    /// Judges `config` against the checker's findings. Returns the change
    /// to install when a VIP's dead backends differ from what its table
    /// leaves out and its damping budget allows it; a VIP whose budget is
    /// spent waits (and is counted) until a later call.
    pub fn reconcile(&mut self, config: &Config) -> Option<HealthChange> {
        let states = self.checker.states();
        let dead = self.dead_in(&states);
        let verdicts = judge(config, &dead);
        let now = Instant::now();
        let mut details = Vec::new();
        let mut vips = Vec::new();
        for (verdict, vip) in verdicts.iter().zip(&config.vips) {
            let was_panic = self
                .verdicts
                .iter()
                .find(|v| v.endpoint == verdict.endpoint)
                .is_some_and(|v| v.panic);
            if verdict.panic != was_panic {
                if verdict.panic {
                    crate::note!(
                        "WARNING panic: VIP {} ({}): only {} of {} backends are healthy \
                         ({} of weight {}); keeping all of them in the table (fail open) \
                         rather than concentrating it on the survivors",
                        vip.label(),
                        verdict.endpoint,
                        verdict.healthy,
                        verdict.backends,
                        verdict.healthy_weight,
                        verdict.weight
                    );
                } else {
                    crate::note!(
                        "panic over: VIP {} ({}): {} of {} backends healthy",
                        vip.label(),
                        verdict.endpoint,
                        verdict.healthy,
                        verdict.backends
                    );
                }
            }
            let mut wanted = verdict.taken_down.clone();
            wanted.sort();
            let have = self
                .applied
                .get(&verdict.endpoint)
                .cloned()
                .unwrap_or_default();
            if wanted == have {
                self.waiting.remove(&verdict.endpoint);
                continue;
            }
            let budget = vip.health(&config.health_check).max_changes_per_minute as usize;
            let recent = self.recent.entry(verdict.endpoint.clone()).or_default();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= DAMPING_WINDOW)
            {
                recent.pop_front();
            }
            let counts = self.changes.entry(verdict.endpoint.clone()).or_default();
            if recent.len() >= budget {
                if self.waiting.insert(verdict.endpoint.clone()) {
                    counts.damped += 1;
                    crate::note!(
                        "health: VIP {}: {} table changes in the last minute, the most \
                         max_changes_per_minute allows; the next waits",
                        vip.label(),
                        recent.len()
                    );
                }
                continue;
            }
            recent.push_back(now);
            counts.applied += 1;
            self.waiting.remove(&verdict.endpoint);
            let describe = |addr: &SocketAddr| {
                let reason = states
                    .get(&Key {
                        vip: verdict.endpoint.clone(),
                        backend: *addr,
                    })
                    .and_then(|h| h.last_error.clone())
                    .unwrap_or_else(|| "checks fail".into());
                format!("{addr} ({reason})")
            };
            let out: Vec<String> = wanted
                .iter()
                .filter(|a| !have.contains(a))
                .map(describe)
                .collect();
            let back: Vec<String> = have
                .iter()
                .filter(|a| !wanted.contains(a))
                .map(SocketAddr::to_string)
                .collect();
            details.push(format!(
                "{} {}: down {}; back {}",
                vip.label(),
                verdict.endpoint,
                if out.is_empty() {
                    "-".into()
                } else {
                    out.join(", ")
                },
                if back.is_empty() {
                    "-".into()
                } else {
                    back.join(", ")
                },
            ));
            vips.push(verdict.endpoint.clone());
            if wanted.is_empty() {
                self.applied.remove(&verdict.endpoint);
            } else {
                self.applied.insert(verdict.endpoint.clone(), wanted);
            }
        }
        self.verdicts = verdicts;
        (!vips.is_empty()).then_some(HealthChange { details, vips })
    }

    /// Forgets a change the gate did not install: the tables still leave
    /// out what they did before.
    pub fn undo(&mut self, before: &[Down]) {
        self.applied = grouped(before);
    }
}
