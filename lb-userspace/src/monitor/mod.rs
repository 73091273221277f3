//! Watching the data plane run: the installed state as the monitor sees it
//! (names, expected shares, the apply that last changed each VIP), a
//! sampler that reads every counter each second into the imbalance
//! detector's window and the outlier detector, and logs each flag that
//! goes up or down, the
//! controller's own facts (generation, applies, refusals), and the report
//! that `status`, `top` and `/metrics` are all made from.

pub mod metrics;
pub mod outlier;
pub mod report;
pub mod window;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::errors::Chain;
use crate::{
    announce::AnnounceReport,
    config::{Config, Imbalance, Outlier, QuicConfig},
    daemon::desk::Ramped,
    dataplane::{
        admission::DenyRule, clock::EpochClock, counted_ids, counters::CounterReader, pins::PinDir,
        state::DesiredState, system::PinSurvival,
    },
    group::GroupReport,
    health::Checker,
    policy::{
        Outcome,
        health::{Down, VipHealth},
        refusal::{Clients, Seen},
    },
};
use outlier::{Detector, Found};
use report::{ConnectionsReport, Healths, Report};
use window::{Transition, Window};

/// How often the sampler reads the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The apply that last changed a VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastChange {
    /// The generation it made.
    pub generation: u64,
    /// When, in seconds since the Unix epoch.
    pub time: f64,
    /// Which door it came by (`api backend set-weight`, `file`, ...).
    pub source: String,
}

/// The installed state, as the monitor reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// The generation in force.
    pub generation: u64,
    /// The VIPs, in config order.
    pub vips: Vec<VipView>,
    /// How many backend and VIP counter entries cover their ids.
    pub counted: (u32, u32),
    /// The deny rules in force.
    pub rules: Vec<DenyRule>,
}

impl View {
    /// This view with the deny rules in force, whose drops it reports.
    pub fn with_rules(mut self, rules: Vec<DenyRule>) -> Self {
        self.rules = rules;
        self
    }

    /// How many counters cover the deny rules' slots, with the backends'
    /// and VIPs'.
    fn counters(&self) -> (u32, u32, u32) {
        let rules = self.rules.iter().map(|r| r.slot + 1).max().unwrap_or(0);
        (self.counted.0, self.counted.1, rules)
    }
}

/// One installed VIP.
#[derive(Clone, Debug, PartialEq)]
pub struct VipView {
    /// Its label.
    pub name: String,
    /// `address:port/protocol`.
    pub endpoint: String,
    /// Its id (counters).
    pub vip_id: u32,
    /// Its backends, in config order.
    pub backends: Vec<BackendView>,
    /// The apply that last changed it, when known.
    pub last_change: Option<LastChange>,
    /// Its table's digest.
    pub table_digest: String,
    /// Where its QUIC servers put their server ID, for a QUIC VIP.
    pub quic: Option<QuicConfig>,
}

/// One installed backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendView {
    /// Its label.
    pub name: String,
    /// `address:port`.
    pub address: String,
    /// Its slot (counters).
    pub backend_id: u32,
    /// Its configured weight.
    pub weight: u32,
    /// Its share of the installed table.
    pub expected_share: f64,
    /// Held out of the table for want of a MAC.
    pub held_out: bool,
    /// Its identity (address and port), as health checks name it.
    pub socket: SocketAddr,
    /// Out of the table because its checks fail.
    pub down: bool,
    /// Its QUIC server ID, in hex, on a QUIC VIP.
    pub server_id: Option<String>,
}

impl View {
    /// The view of `state`, installed as `generation`; `changes` maps VIP
    /// endpoints to the apply that last changed them.
    pub fn of(
        state: &DesiredState,
        generation: u64,
        changes: &HashMap<String, LastChange>,
    ) -> Self {
        let vips = state
            .vips
            .iter()
            .map(|vip| {
                let endpoint = vip.endpoint();
                VipView {
                    name: vip.label.clone(),
                    last_change: changes.get(&endpoint).cloned(),
                    table_digest: crate::group::spelt(crate::group::vip_digest(vip)),
                    endpoint,
                    vip_id: vip.vip_id,
                    quic: vip.quic,
                    backends: vip
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(index, b)| BackendView {
                            name: b.label.clone(),
                            address: b.addr.to_string(),
                            backend_id: b.backend_id,
                            weight: b.weight,
                            expected_share: vip.expected_share(index),
                            held_out: b.held_out(),
                            socket: b.addr,
                            down: b.down,
                            server_id: b.server_id.as_ref().map(ToString::to_string),
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            generation,
            vips,
            counted: counted_ids(state),
            rules: Vec::new(),
        }
    }

    /// The view with the configured weights of `config` in the VIPs where
    /// a backend ramps up (`ramped`): their tables are built from weights
    /// scaled for the ramp, which say nothing to an operator. A backend
    /// out of its table keeps weight 0.
    pub fn unramped(mut self, config: &Config, ramped: &[Ramped]) -> Self {
        for vip in &mut self.vips {
            if !ramped
                .iter()
                .any(|((endpoint, _), _)| *endpoint == vip.endpoint)
            {
                continue;
            }
            let Some(configured) = config.vips.iter().find(|v| v.endpoint() == vip.endpoint) else {
                continue;
            };
            for backend in vip.backends.iter_mut().filter(|b| b.weight > 0) {
                if let Some(b) = configured
                    .backends
                    .iter()
                    .find(|b| configured.backend_addr(b) == backend.socket)
                {
                    backend.weight = b.weight;
                }
            }
        }
        self
    }

    /// The ids of VIPs that are new in `self` or whose backends or shares
    /// differ from `old`'s.
    fn changed_since(&self, old: &View) -> Vec<u32> {
        let before: HashMap<u32, &VipView> = old.vips.iter().map(|v| (v.vip_id, v)).collect();
        self.vips
            .iter()
            .filter(|v| {
                before
                    .get(&v.vip_id)
                    .is_none_or(|o| o.backends != v.backends)
            })
            .map(|v| v.vip_id)
            .collect()
    }
}

/// What the monitor sees, now, of what a change could make worse: per
/// backend (its VIP's endpoint and identity) and per VIP endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// The outliers of the detector's last interval, with their evidence.
    pub outliers: BTreeMap<Down, String>,
    /// The backends the imbalance detector flags.
    pub imbalanced: BTreeSet<Down>,
    /// Per VIP: handshakes attempted and completed since the data plane
    /// was loaded.
    pub handshakes: BTreeMap<String, (u64, u64)>,
    /// Per VIP: handshakes attempted and completed in the outlier
    /// detector's last interval.
    pub last_interval: BTreeMap<String, (u64, u64)>,
}

/// Health-driven table changes of one VIP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Table changes health checks made.
    pub applied: u64,
    /// Changes held back by damping.
    pub damped: u64,
}

/// What the controller did, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    /// The last apply decision: when (Unix seconds) and its result.
    pub last_apply: Option<(f64, Outcome)>,
    /// Decisions by outcome.
    pub applies: BTreeMap<Outcome, u64>,
    /// Refusals by problem code.
    pub refusals: BTreeMap<String, u64>,
    /// Whether the config file on disk is the config in force, as last seen.
    pub file_in_force: Option<bool>,
    /// Where the journal of changes is written.
    pub journal: Option<String>,
    /// Whether a change is being watched now.
    pub watching: bool,
    /// Watches ended, by how (`WATCH_RESULTS`).
    pub watches: BTreeMap<&'static str, u64>,
}

/// How a watch of a change can end, as the metrics name it.
pub const WATCH_RESULTS: [&str; 4] = ["kept", "rolled_back", "rollback_refused", "superseded"];

/// Where the data plane should be attached, to check that it still is.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// Its pins (the link pin among them).
    pub pins: PinDir,
    /// The interface.
    pub interface: String,
    /// Whether the pins outlive the daemon.
    pub survival: PinSurvival,
}

impl Attachment {
    /// Whether the kernel has the pinned link attached to the interface,
    /// and then the XDP mode it runs the program in.
    pub fn state(&self) -> (bool, Option<crate::net::XdpMode>) {
        match (
            self.pins.attached_ifindex(),
            crate::net::xdp_of(&self.interface),
        ) {
            (Ok(Some(attached)), Ok((ifindex, mode))) if attached == ifindex => (true, mode),
            _ => (false, None),
        }
    }
}

struct State {
    view: Arc<View>,
    window: Window,
    outliers: Detector,
    /// The backends the controller ejected as outliers.
    ejected: BTreeSet<Down>,
    /// The backends ramping up (slow start), with the fraction of their
    /// weight they take.
    ramped: BTreeMap<Down, f64>,
    facts: Facts,
    verdicts: Vec<VipHealth>,
    health_changes: BTreeMap<String, Changes>,
    group: Option<GroupReport>,
    announce: Option<AnnounceReport>,
}

/// The monitor, shared by the controller, the sampler and the metrics
/// server.
pub struct Monitor {
    checker: Arc<Checker>,
    reader: CounterReader,
    clock: Mutex<EpochClock>,
    attachment: Attachment,
    state: Mutex<State>,
}

impl Monitor {
    /// A monitor of `view`, reading through `reader`.
    pub fn new(
        checker: Arc<Checker>,
        (reader, clock): (CounterReader, EpochClock),
        attachment: Attachment,
        view: View,
        (imbalance, outlier): (Imbalance, Outlier),
    ) -> Arc<Self> {
        Arc::new(Self {
            checker,
            reader,
            clock: Mutex::new(clock),
            attachment,
            state: Mutex::new(State {
                view: Arc::new(view),
                window: Window::new(imbalance),
                outliers: Detector::new(outlier),
                ejected: BTreeSet::new(),
                ramped: BTreeMap::new(),
                facts: Facts::default(),
                verdicts: Vec::new(),
                health_changes: BTreeMap::new(),
                group: None,
                announce: None,
            }),
        })
    }

    /// The panic policy's verdicts and the health-driven changes per VIP.
    pub fn health_verdicts(&self, verdicts: &[VipHealth], changes: &BTreeMap<String, Changes>) {
        let mut state = self.lock();
        state.verdicts = verdicts.to_vec();
        state.health_changes = changes.clone();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere never leaves the state half-updated in a way
        // that matters more than losing the monitor would.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new state went live: VIPs whose tables changed start their window
    /// afresh.
    pub fn install(&self, view: View, (imbalance, outlier): (Imbalance, Outlier)) {
        let mut state = self.lock();
        let changed = view.changed_since(&state.view);
        state.window.restart(imbalance, &changed, Instant::now());
        state.outliers.configure(outlier);
        state.view = Arc::new(view);
    }

    /// The clients each VIP's flows come from, as the connection table
    /// holds them: of its active flows, and of the proven flows opened in
    /// the imbalance detector's window (by endpoint).
    pub fn clients(&self) -> io::Result<Clients> {
        let (view, window_s) = {
            let state = self.lock();
            (state.view.clone(), state.window.settings().window_s)
        };
        let mut sources = self.reader.sources(window_s as u32)?;
        Ok(view
            .vips
            .iter()
            .map(|vip| {
                let found = sources.remove(&vip.vip_id).unwrap_or_default();
                let seen = Seen {
                    active: found.active,
                    recent: found.recent,
                    window_s,
                };
                (vip.endpoint.clone(), seen)
            })
            .collect())
    }

    /// What a change could make worse, as it stands now.
    pub fn signals(&self) -> io::Result<Signals> {
        let view = self.lock().view.clone();
        let counters = self.reader.read(view.counters())?;
        let state = self.lock();
        let mut signals = Signals {
            outliers: state
                .outliers
                .found()
                .iter()
                .map(|f| ((f.vip.clone(), f.backend), f.evidence.clone()))
                .collect(),
            ..Signals::default()
        };
        for vip in &view.vips {
            let totals = counters.vip(vip.vip_id);
            signals.handshakes.insert(
                vip.endpoint.clone(),
                (
                    totals.syns,
                    totals.handshakes.saturating_sub(totals.early_resets),
                ),
            );
            let mut last = (0, 0);
            for backend in &vip.backends {
                let shakes = state
                    .outliers
                    .backend(vip.vip_id, backend.backend_id)
                    .handshakes;
                last = (
                    last.0 + shakes.syns,
                    last.1 + shakes.completed.min(shakes.syns),
                );
                if state
                    .window
                    .backend(vip.vip_id, backend.backend_id)
                    .imbalanced
                {
                    signals
                        .imbalanced
                        .insert((vip.endpoint.clone(), backend.socket));
                }
            }
            signals.last_interval.insert(vip.endpoint.clone(), last);
        }
        Ok(signals)
    }

    /// The outlier detector's last findings: the intervals judged so far
    /// (a new count means new findings) and the outliers of the last one.
    pub fn outliers(&self) -> (u64, Vec<Found>) {
        let state = self.lock();
        (state.outliers.judged(), state.outliers.found().to_vec())
    }

    /// The backends ejected as outliers now, and those ramping up with
    /// the fraction of their weight they take.
    pub fn left_out(&self, ejected: BTreeSet<Down>, ramped: BTreeMap<Down, f64>) {
        let mut state = self.lock();
        state.ejected = ejected;
        state.ramped = ramped;
    }

    /// Whether a change is watched now; with `ended`, how the last watch
    /// ended (one of `WATCH_RESULTS`).
    pub fn watching(&self, watching: bool, ended: Option<&'static str>) {
        let mut state = self.lock();
        state.facts.watching = watching;
        if let Some(result) = ended {
            *state.facts.watches.entry(result).or_default() += 1;
        }
    }

    /// Counts one decision of the gate; `codes` are a refusal's problem codes.
    pub fn decided(&self, result: Outcome, codes: &[&str]) {
        let mut state = self.lock();
        let facts = &mut state.facts;
        facts.last_apply = Some((unix_now(), result));
        *facts.applies.entry(result).or_default() += 1;
        for code in codes {
            *facts.refusals.entry(code.to_string()).or_default() += 1;
        }
    }

    /// The host's group and seed fingerprint.
    pub fn grouped(&self, group: GroupReport) {
        self.lock().group = Some(group);
    }

    /// What the announcer did last.
    pub fn announced(&self, announce: AnnounceReport) {
        self.lock().announce = Some(announce);
    }

    /// Whether the kernel has the data plane attached to its interface.
    pub fn attached(&self) -> bool {
        self.attachment.state().0
    }

    /// The journal of changes is written to `path`.
    pub fn journal_at(&self, path: &std::path::Path) {
        self.lock().facts.journal = Some(path.display().to_string());
    }

    /// The config file was seen to be (or not to be) the config in force.
    pub fn file_in_force(&self, in_force: bool) {
        self.lock().facts.file_in_force = Some(in_force);
    }

    /// Advances the data plane's epoch, then reads every counter into the
    /// window and logs the flags that went up or down.
    pub fn sample(&self) -> io::Result<()> {
        if let Ok(mut clock) = self.clock.lock()
            && let Err(e) = clock.tick()
        {
            return Err(io::Error::other(format!(
                "advancing the epoch: {}",
                Chain(&e)
            )));
        }
        let view = self.lock().view.clone();
        let counters = self.reader.read(view.counters())?;
        let now = Instant::now();
        let mut state = self.lock();
        let transitions = state.window.observe(now, &view, &counters);
        let before: Vec<Found> = state.outliers.found().to_vec();
        if state.outliers.observe(now, &view, &counters) {
            log_outliers(&before, state.outliers.found());
        }
        let settings = state.window.settings().clone();
        drop(state);
        for transition in transitions {
            log_transition(&view, &settings, &transition);
        }
        Ok(())
    }

    /// Reads every counter now and reports them with the window's shares
    /// and flags, and the controller's facts; with `flows`, also each
    /// backend's active flows (one pass over the connection table).
    pub fn report(&self, flows: bool) -> io::Result<(Report, Facts)> {
        let active = if flows {
            Some(self.reader.active_flows()?)
        } else {
            None
        };
        let view = self.lock().view.clone();
        let counters = self.reader.read(view.counters())?;
        let (census, sets) = self.reader.census()?;
        let (attached, xdp_mode) = self.attachment.state();
        let health = self.checker.states();
        let state = self.lock();
        let report = Report::build(
            &view,
            (&counters, ConnectionsReport::of(&census, sets)),
            (&state.window, &state.outliers),
            attached,
            &Healths {
                states: &health,
                verdicts: &state.verdicts,
                changes: &state.health_changes,
                ejected: &state.ejected,
                ramped: &state.ramped,
            },
            active.as_ref(),
        )
        .with_group(state.group.clone(), state.announce.clone());
        let report = Report {
            pin_survival: Some(self.attachment.survival.clone()),
            xdp_mode: xdp_mode.map(|mode| mode.to_string()),
            ..report
        };
        Ok((report, state.facts.clone()))
    }

    /// Samples now (the window's first baseline, before any traffic the
    /// daemon serves), then every `SAMPLE_EVERY` on `runtime` until the
    /// monitor is dropped. A sample reads the kernel's counters, so it
    /// runs where blocking is allowed.
    pub fn spawn_sampler(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        if let Err(e) = self.sample() {
            crate::note!("the sampler cannot read the counters: {e}");
        }
        let monitor: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            let mut failing = false;
            loop {
                every.tick().await;
                let Some(monitor) = monitor.upgrade() else {
                    return;
                };
                match tokio::task::spawn_blocking(move || monitor.sample()).await {
                    Ok(Ok(())) => failing = false,
                    Ok(Err(e)) if !failing => {
                        failing = true;
                        crate::note!("the sampler cannot read the counters: {e}");
                    }
                    Ok(Err(_)) => {}
                    // The runtime is shutting down.
                    Err(_) => return,
                }
            }
        });
    }
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How long ago `time` (Unix seconds) was, for people.
pub fn ago(time: f64) -> String {
    let seconds = (unix_now() - time).max(0.0) as u64;
    match seconds {
        0..120 => format!("{seconds} s ago"),
        120..7200 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}

/// `generation N (source, T ago)`, or that no change is known.
pub fn describe_change(change: Option<&LastChange>) -> String {
    change.map_or_else(
        || "no apply since the journal began".into(),
        |c| {
            format!(
                "generation {} ({}, {})",
                c.generation,
                c.source,
                ago(c.time)
            )
        },
    )
}

/// Logs the backends that became outliers in the interval just judged
/// (`now`), and those that no longer are (`before` held them).
fn log_outliers(before: &[Found], now: &[Found]) {
    let same = |a: &Found, b: &Found| a.vip == b.vip && a.backend == b.backend;
    for found in now.iter().filter(|f| !before.iter().any(|b| same(b, f))) {
        crate::note!(
            "WARNING outlier: VIP {} backend {}: {}; see `fulcrum status` and docs/runbook.md",
            found.vip,
            found.backend,
            found.evidence
        );
    }
    for gone in before.iter().filter(|b| !now.iter().any(|f| same(b, f))) {
        crate::note!(
            "outlier cleared: VIP {} backend {} (judged again, or no longer judged)",
            gone.vip,
            gone.backend
        );
    }
}

fn log_transition(view: &View, settings: &Imbalance, t: &Transition) {
    let Some(vip) = view.vips.iter().find(|v| v.vip_id == t.vip_id) else {
        return;
    };
    let Some(backend) = vip.backends.iter().find(|b| b.backend_id == t.backend_id) else {
        return;
    };
    let shares = format!(
        "{:.1}% of new flows over the last {:.0} s against an expected {:.1}% ({:.2}x; {:.1} new flows/s)",
        t.judgement.observed_share * 100.0,
        t.vip.span.as_secs_f64(),
        backend.expected_share * 100.0,
        t.judgement.ratio,
        t.vip.flow_rate,
    );
    if t.raised {
        crate::note!(
            "WARNING imbalance: VIP {} ({}): backend {} ({}) takes {shares}, at least {}x for {} s; \
             the VIP was last changed by {}; see `fulcrum status` and docs/runbook.md",
            vip.name,
            vip.endpoint,
            backend.name,
            backend.address,
            settings.factor,
            t.judgement
                .skewed_for
                .map_or(settings.for_s, |d| d.as_secs()),
            describe_change(vip.last_change.as_ref()),
        );
    } else {
        crate::note!(
            "imbalance cleared: VIP {} ({}): backend {} ({}) takes {shares}",
            vip.name,
            vip.endpoint,
            backend.name,
            backend.address,
        );
    }
}
