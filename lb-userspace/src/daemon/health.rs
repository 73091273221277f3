//! The controller's side of health checks: which backends the checker
//! found dead, which of them the panic policy lets the tables leave out,
//! and how often a VIP's table may change for health (damping). What it
//! decides goes through the gate like any change, by the door `health`.
//!
//! A table changes only on evidence. A VIP's table is left alone until
//! every one of its backends has been judged by checks of this daemon's
//! own (`max(rise, fall)` of them), so a restart never acts on a guess;
//! the failing backends a previous daemon recorded start down, so a
//! restart in the middle of a panic stays in panic. And a backend leaves
//! a table only after `fall` failed checks made since its VIP's evidence
//! last started afresh: when the VIP went into panic, and when a time in
//! which every one of its backends failed at once (the host's own view,
//! such as a cut link) ended. Failures from before then say nothing
//! about the backend itself. Nor does a backend leave while no other
//! backend of its VIP has passed a check begun after it began failing:
//! at the start of a cut link every backend fails, the first to reach
//! `fall` no sooner than the rest, which follow it into panic within an
//! interval. When a time in which all failed ends, the VIP settles again,
//! as after a start.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::runtime::Handle;

use crate::{
    config::{CheckKind, Config},
    daemon::{desk::TableChange, records::RecordDir},
    health::{Checker, Health, Key, Target, Transition},
    monitor::Changes,
    policy::health::{Down, VipHealth, judge},
};

/// The window damping counts table changes in.
const DAMPING_WINDOW: Duration = Duration::from_secs(60);

/// How one backend is judged, from its check's settings.
#[derive(Clone, Copy, Debug)]
struct Judging {
    rise: u32,
    fall: u32,
    /// Whether it is checked at all (kind `none` is never judged).
    checked: bool,
}

impl Judging {
    /// Checks this daemon must make of it before its state counts.
    fn judged_after(&self) -> u64 {
        u64::from(self.rise.max(self.fall).max(1))
    }
}

/// The controller's health state.
pub struct HealthControl {
    checker: Arc<Checker>,
    /// Per checked backend, how it is judged (kept from the last targets).
    judging: HashMap<Key, Judging>,
    /// Per backend, its check count when its VIP's evidence last started
    /// afresh (absent: when checking began).
    evidence: HashMap<Key, u64>,
    /// Per backend, its check count when its judgement last started
    /// afresh (absent: when checking began): at the end of a time its
    /// VIP was dark.
    judged_from: HashMap<Key, u64>,
    /// The VIPs every one of whose checked backends failed its last check.
    dark: BTreeSet<String>,
    /// Where the failing backends are recorded for the next daemon, and
    /// what was recorded last.
    record: (RecordDir, BTreeSet<Down>),
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

/// How each target is judged.
fn judging(targets: &[Target]) -> HashMap<Key, Judging> {
    targets
        .iter()
        .map(|t| {
            let settings = &t.check.settings;
            let judging = Judging {
                rise: settings.rise,
                fall: settings.fall,
                checked: settings.kind != CheckKind::None,
            };
            (t.key.clone(), judging)
        })
        .collect()
}

impl HealthControl {
    /// Starts checking every backend of `config`; transitions go to
    /// `notify`. `down` is what the installed state already leaves out;
    /// the backends a previous daemon recorded in `records` as failing
    /// start down.
    pub fn start(
        config: &Config,
        down: &[Down],
        records: &RecordDir,
        (notify, runtime): (impl Fn(Transition) + Send + Sync + 'static, &Handle),
    ) -> anyhow::Result<Self> {
        let targets = targets(config);
        let judging = judging(&targets);
        let recorded: BTreeSet<Down> = match records.read_health() {
            Ok(failing) => failing.into_iter().collect(),
            Err(e) => {
                crate::note!("health: {e:#}; every backend starts up");
                BTreeSet::new()
            }
        };
        let recalled = recorded
            .iter()
            .map(|(vip, backend)| Key {
                vip: vip.clone(),
                backend: *backend,
            })
            .collect();
        let checker = Arc::new(Checker::start(targets, &recalled, notify, runtime));
        let mut control = Self {
            checker,
            judging,
            evidence: HashMap::new(),
            judged_from: HashMap::new(),
            dark: BTreeSet::new(),
            record: (records.clone(), recorded),
            applied: grouped(down),
            recent: HashMap::new(),
            waiting: BTreeSet::new(),
            changes: BTreeMap::new(),
            verdicts: Vec::new(),
        };
        let states = control.checker.states();
        control.verdicts = judge(config, &control.dead_in(&states));
        let unsettled = control.unsettled_in(&states);
        for verdict in &mut control.verdicts {
            verdict.settling = unsettled.get(&verdict.endpoint).cloned();
        }
        for verdict in control.verdicts.iter().filter(|v| v.panic) {
            crate::note!(
                "WARNING panic: VIP {}: {} of {} backends were failing when the last daemon \
                 stopped; keeping all of them in the table until every one is checked again",
                verdict.endpoint,
                verdict.backends - verdict.healthy,
                verdict.backends
            );
        }
        Ok(control)
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
        self.judging = judging(&targets);
        self.checker.retarget(targets);
    }

    /// Per VIP endpoint whose backends are not all judged yet by this
    /// daemon's checks (since start, since their check changed, or since
    /// a time in which all of them failed at once ended), why it waits.
    /// Its table does not change for health meanwhile, and it is not
    /// announced anew.
    pub fn unsettled(&mut self) -> BTreeMap<String, String> {
        let states = self.checker.states();
        self.follow_dark(&states);
        self.unsettled_in(&states)
    }

    /// The VIPs every one of whose checked backends fails (as of the last
    /// `unsettled` or `reconcile`): the backends' fault, or this host's
    /// own view, such as a cut link.
    pub fn dark(&self) -> &BTreeSet<String> {
        &self.dark
    }

    fn unsettled_in(&self, states: &HashMap<Key, Health>) -> BTreeMap<String, String> {
        // Per VIP: backends judged, backends checked, whether it recovers
        // from a dark time.
        let mut counts: BTreeMap<String, (usize, usize, bool)> = BTreeMap::new();
        for (key, judging) in self.judging.iter().filter(|(_, j)| j.checked) {
            let base = self.judged_from.get(key).copied().unwrap_or(0);
            let judged = states.get(key).is_some_and(|h| {
                // A check restarted since (a changed check) counts from 0.
                let since = h.checks.checked_sub(base).unwrap_or(h.checks);
                since >= judging.judged_after()
            });
            let (done, all, recovers) = counts.entry(key.vip.clone()).or_default();
            *done += usize::from(judged);
            *all += 1;
            *recovers |= base > 0;
        }
        counts
            .into_iter()
            .filter(|(_, (done, all, _))| done < all)
            .map(|(vip, (done, all, recovers))| {
                let since = if recovers {
                    "every check of it failed at once"
                } else {
                    "the daemon started"
                };
                let why = format!(
                    "waiting for its health checks: {done} of {all} backends judged since {since}"
                );
                (vip, why)
            })
            .collect()
    }

    /// Whether `key`'s failing is evidence enough to take it out: `fall`
    /// failed checks since its VIP's evidence last started afresh.
    fn proven_dead(&self, key: &Key, health: &Health) -> bool {
        let fall = self.judging.get(key).map_or(1, |j| j.fall.max(1));
        let base = self.evidence.get(key).copied().unwrap_or(0);
        // A check restarted since (a changed check) counts from 0 again.
        let since = health.checks.checked_sub(base).unwrap_or(health.checks);
        !health.up && u64::from(health.failures).min(since) >= u64::from(fall)
    }

    /// Whether `key`'s failing is its own and not this host's view: another
    /// checked backend of its VIP passed a check begun after `key` began
    /// failing (or it has no checked sibling). At the start of a cut link
    /// the first backend to reach `fall` has no such sibling; the rest
    /// follow it into panic within an interval, and nobody leaves.
    fn seen_past(&self, key: &Key, health: &Health, states: &HashMap<Key, Health>) -> bool {
        let mut siblings = self
            .judging
            .iter()
            .filter(|(k, j)| j.checked && k.vip == key.vip && *k != key)
            .peekable();
        if siblings.peek().is_none() {
            return true;
        }
        siblings.any(|(sibling, _)| {
            states.get(sibling).is_some_and(|s| {
                s.failures == 0
                    && s.passed_at
                        .zip(health.failing_since)
                        .is_some_and(|(passed, failing)| passed > failing)
            })
        })
    }

    /// Starts `vip`'s evidence afresh: failures before now stop counting.
    fn restart_evidence(&mut self, vip: &str, states: &HashMap<Key, Health>) {
        for (key, health) in states.iter().filter(|(k, _)| k.vip == vip) {
            self.evidence.insert(key.clone(), health.checks);
        }
    }

    /// The VIPs every one of whose checked backends failed its last check.
    fn dark_in(&self, states: &HashMap<Key, Health>) -> BTreeSet<String> {
        let mut lit: BTreeMap<&str, bool> = BTreeMap::new();
        for key in self
            .judging
            .iter()
            .filter(|(_, j)| j.checked)
            .map(|(k, _)| k)
        {
            let failing = states
                .get(key)
                .is_some_and(|h| h.checks > 0 && h.failures > 0);
            *lit.entry(&key.vip).or_default() |= !failing;
        }
        lit.into_iter()
            .filter(|(_, lit)| !lit)
            .map(|(vip, _)| vip.to_string())
            .collect()
    }

    /// Follows which VIPs are dark. When one lights again, its evidence
    /// and its judgement start afresh: failures from before take no
    /// backend out, and it settles again before its table changes or it
    /// is announced anew.
    fn follow_dark(&mut self, states: &HashMap<Key, Health>) {
        let dark = self.dark_in(states);
        for vip in self.dark.difference(&dark).cloned().collect::<Vec<_>>() {
            crate::note!(
                "health: VIP {vip}: a backend answers again after every one failed at once; \
                 failures from before now take no backend out, and it settles again"
            );
            self.restart_evidence(&vip, states);
            for (key, health) in states.iter().filter(|(k, _)| k.vip == vip) {
                self.judged_from.insert(key.clone(), health.checks);
            }
        }
        self.dark = dark;
    }

    /// Records the failing backends for the next daemon, when they changed.
    fn record_failing(&mut self, states: &HashMap<Key, Health>) {
        let failing: BTreeSet<Down> = states
            .iter()
            .filter(|(_, h)| !h.up)
            .map(|(k, _)| (k.vip.clone(), k.backend))
            .collect();
        if failing == self.record.1 {
            return;
        }
        let listed: Vec<Down> = failing.iter().cloned().collect();
        match self.record.0.write_health(&listed) {
            Ok(()) => self.record.1 = failing,
            Err(e) => crate::note!("health: recording the failing backends: {e:#}"),
        }
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
    /// starts up every backend the last daemon did not record failing).
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
                let rise = self.judging.get(*key).map_or(1, |j| j.rise);
                !h.up || (out && h.successes < rise)
            })
            .map(|(k, _)| (k.vip.clone(), k.backend))
            .collect()
    }

    /// Judges `config` against the checker's findings. Returns the change
    /// to install when a VIP's dead backends differ from what its table
    /// leaves out and its damping budget allows it; a VIP whose budget is
    /// spent waits (and is counted) until a later call.
    pub fn reconcile(&mut self, config: &Config) -> Option<TableChange> {
        let states = self.checker.states();
        self.record_failing(&states);
        let dead = self.dead_in(&states);
        let mut verdicts = judge(config, &dead);
        self.follow_dark(&states);
        let unsettled = self.unsettled_in(&states);
        let now = Instant::now();
        let mut details = Vec::new();
        let mut vips = Vec::new();
        for (verdict, vip) in verdicts.iter_mut().zip(&config.vips) {
            let was_panic = self
                .verdicts
                .iter()
                .find(|v| v.endpoint == verdict.endpoint)
                .is_some_and(|v| v.panic);
            if verdict.panic && !was_panic {
                self.restart_evidence(&verdict.endpoint, &states);
            }
            verdict.settling = unsettled.get(&verdict.endpoint).cloned();
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
            let have = self
                .applied
                .get(&verdict.endpoint)
                .cloned()
                .unwrap_or_default();
            // Out already, or proven dead by failures of its own: a
            // backend failing on older evidence, or while this host may
            // see nothing at all, stays in.
            verdict.taken_down.retain(|addr| {
                let key = Key {
                    vip: verdict.endpoint.clone(),
                    backend: *addr,
                };
                have.contains(addr)
                    || states.get(&key).is_some_and(|h| {
                        self.proven_dead(&key, h) && self.seen_past(&key, h, &states)
                    })
            });
            let mut wanted = verdict.taken_down.clone();
            wanted.sort();
            if wanted == have || unsettled.contains_key(&verdict.endpoint) {
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
        (!vips.is_empty()).then_some(TableChange { details, vips })
    }

    /// Forgets a change the gate did not install: the tables still leave
    /// out what they did before.
    pub fn undo(&mut self, before: &[Down]) {
        self.applied = grouped(before);
    }
}
