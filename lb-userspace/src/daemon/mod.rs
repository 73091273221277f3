//! The controller daemon behind `fulcrum run`: the state in force, and
//! every door a change comes by (the API's apply and backend verbs, SIGHUP,
//! an edit of the config file) taken through the one gate, written back to
//! the file before it is reported, and journalled.

pub mod api;
pub mod desk;
pub mod edit;
pub mod gate;
pub mod health;
pub mod journal;
pub mod life;
pub mod notify;
pub mod outlier;
pub mod ramp;
pub mod records;
pub mod scrape;
pub mod seed;
pub mod start;
pub mod trace;
pub mod watch;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Instant,
};

use crate::errors::Chain;
use crate::{
    announce::{self, Announcer, Hold},
    config::{Config, MacAddr, Protocol},
    daemon::records::RecordDir,
    dataplane::state::{DesiredState, flow_key},
    dataplane::{Dataplane, pins::PinDir, table_id},
    group::{self, GroupReport, Tables, VipTableDump},
    monitor::{Attachment, LastChange, Monitor, View, unix_now},
    net,
    policy::plan::{Plan, plan},
    policy::refusal::Clients,
    policy::{
        Outcome,
        health::Down,
        quic::{CidRoute, route_cid},
        validate::validate,
    },
    problem::Problem,
};
use api::{Reply, Request};
pub use desk::Door;
use desk::{Decision, Desk, TableChange, changed_vips};
use gate::{HostNetwork, InForce};
use journal::Journal;
use wire::{
    ApplyRequest, BackendRequest, ChangeAnswer, ConfigAnswer, DetachAnswer, ExplainAnswer,
    ExplainRequest, PlanAnswer, StatusAnswer, TraceRenewed, TraceStarted, TraceStatsAnswer,
    TraceStatsLine, Via,
};

/// The running controller's state.
pub struct Controller {
    /// The config in force and the data plane that holds it.
    desk: Desk<Dataplane>,
    /// Its pins.
    pub pins: PinDir,
    /// The interface it serves, and the kernel's tables behind it.
    network: HostNetwork,
    monitor: Arc<Monitor>,
    /// Per VIP endpoint, the apply that last changed it.
    changes: HashMap<String, LastChange>,
    health: health::HealthControl,
    outliers: outlier::OutlierControl,
    ramps: ramp::RampControl,
    /// The operator's change under watch, if one is.
    watch: Option<watch::Watch>,
    /// How the last watch ended.
    watched: Option<watch::WatchReport>,
    /// The last operator change applied, for a watch to start from: its
    /// generation, the door, the config before it and the VIPs it changed.
    last_applied: Option<watch::Applied>,
    /// Keeps BIRD's routes in step, when the config announces.
    announcer: Option<Announcer>,
    /// The trace session's events.
    trace: trace::Hub,
}

/// The imbalance detector's settings of the config in force.
fn monitor_settings(in_force: &InForce) -> (crate::config::Imbalance, crate::config::Outlier) {
    let config = in_force.config();
    (config.imbalance.clone(), config.outlier.clone())
}

fn lines(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

impl Controller {
    /// A controller for `dataplane`, whose installed state is `in_force`;
    /// its monitor starts from the journal's record of past changes; its
    /// health checks and the trace ring's reader run on `runtime`, and the
    /// checks report to `notify`.
    pub fn new(
        mut dataplane: Dataplane,
        (pins, records): (PinDir, RecordDir),
        in_force: InForce,
        (config_path, journal): (&Path, Journal),
        (network, bpffs_mounted): (HostNetwork, bool),
        (notify, runtime): (
            impl Fn(crate::health::Transition) + Send + Sync + 'static,
            &tokio::runtime::Handle,
        ),
    ) -> anyhow::Result<Self> {
        let survival = crate::dataplane::system::pin_survival(pins.path(), bpffs_mounted);
        if !survival.survives {
            crate::note!(
                "WARNING the data plane dies with this process: {}",
                survival.why
            );
        }
        let down = dataplane
            .installed()
            .map(DesiredState::down_backends)
            .unwrap_or_default();
        let config = in_force.config();
        let health = health::HealthControl::start(config, &down, &records, (notify, runtime))?;
        // What the installed state leaves out as outliers, or weighs less
        // while it ramps: a restart keeps both.
        let (ejected, ramped) = match dataplane.installed() {
            Some(_) => records
                .read(dataplane.bank())
                .map(|record| (record.ejected, record.ramped))
                .unwrap_or_default(),
            None => Default::default(),
        };
        let now = Instant::now();
        let outliers = outlier::OutlierControl::start(config, &ejected, now);
        let ramps = ramp::RampControl::resume(config, &ramped, now);
        let changes = journal.last_changes();
        let rules = dataplane.deny_rules()?;
        let view = dataplane
            .installed()
            .map(|state| {
                View::of(state, dataplane.generation(), &changes)
                    .unramped(config, &ramped)
                    .with_rules(rules)
            })
            .unwrap_or_default();
        let monitor = Monitor::new(
            health.checker(),
            (dataplane.counter_reader()?, dataplane.epoch_clock()?),
            Attachment {
                pins: pins.clone(),
                interface: network.interface().to_string(),
                survival,
            },
            view,
            monitor_settings(&in_force),
        );
        monitor.journal_at(journal.path());
        let announcer = config
            .announce
            .as_ref()
            .map(|settings| Announcer::new(settings, network.interface()));
        let mut dataplane = dataplane;
        // A trace a previous daemon left on ends now, not at its lease.
        dataplane.set_trace(lb_common::maps::TraceControl::default())?;
        let hub = trace::Hub::default();
        trace::spawn_reader(dataplane.take_trace_events()?, hub.clone(), runtime)?;
        let controller = Self {
            desk: Desk::new(dataplane, records, in_force, (config_path, journal)),
            pins,
            network,
            monitor,
            changes,
            health,
            outliers,
            ramps,
            watch: None,
            watched: None,
            last_applied: None,
            announcer,
            trace: hub,
        };
        controller.tell_left_out();
        controller.report_group()?;
        Ok(controller)
    }

    /// Tells the monitor the group in force and the seed's fingerprint.
    fn report_group(&self) -> anyhow::Result<()> {
        let seed = self.desk.dataplane.config()?.seed;
        self.monitor.grouped(GroupReport {
            name: self.group_name(),
            seed_fingerprint: group::seed_fingerprint(&seed),
        });
        Ok(())
    }

    /// The name of the group the config in force puts this host in.
    fn group_name(&self) -> Option<String> {
        let config = self.desk.in_force().config();
        config.group.as_ref().map(|g| g.name.clone())
    }

    /// Announces the VIPs this host is ready to serve and withdraws the
    /// rest (when the config announces); run on every change and tick.
    pub fn announce(&mut self) {
        let Some(announcer) = &mut self.announcer else {
            return;
        };
        let mut holds: BTreeMap<String, Hold> = self
            .health
            .unsettled()
            .into_iter()
            .map(|(vip, why)| (vip, Hold::Settling(why)))
            .collect();
        // Failing health withdraws nothing unless BIRD reaches no router
        // either (asked only then).
        if !self.health.dark().is_empty() && announcer.cut_off() {
            for vip in self.health.dark() {
                let why = "withdrawn: every health check fails and BIRD has no established BGP \
                           session (this host is cut off); announced again once its checks \
                           settle";
                holds.insert(vip.clone(), Hold::CutOff(why.into()));
            }
        }
        let vips = announce::readiness(
            self.monitor.attached(),
            self.desk.dataplane.installed(),
            &holds,
        );
        if let Some(line) = announcer.reconcile(vips) {
            crate::note!("{line}");
        }
        self.monitor.announced(announcer.report().clone());
    }

    /// Withdraws every route before the data plane goes, and waits for
    /// the routers to stop sending here. An error (BIRD did not take the
    /// withdrawal) means the routes may still be announced.
    pub fn withdraw(&mut self) -> anyhow::Result<()> {
        let Some(announcer) = &mut self.announcer else {
            return Ok(());
        };
        let result = announcer.withdraw();
        self.monitor.announced(announcer.report().clone());
        crate::note!("{}", result?);
        let drain = announcer.drain();
        crate::note!(
            "announce: waiting {} s for the routers to stop sending here",
            drain.as_secs()
        );
        std::thread::sleep(drain);
        Ok(())
    }

    /// Follows a change of `[announce]`: another include file or BIRD
    /// (or none) withdraws the old one's routes, and the new announcer
    /// tells BIRD afresh; another drain is just taken.
    fn follow_announce_settings(&mut self) {
        let wanted = self.desk.in_force().config().announce.clone();
        if let (Some(announcer), Some(settings)) = (&mut self.announcer, &wanted)
            && announcer.take_settings(settings)
        {
            return;
        }
        if let Some(old) = &mut self.announcer {
            match old.withdraw() {
                Ok(line) => crate::note!("{line} (announcing settings changed)"),
                Err(e) => crate::note!(
                    "announce: WARNING withdrawing through the old settings failed: {}; \
                     routes may still be announced through {}",
                    Chain(&e),
                    old.settings().bird_socket.display()
                ),
            }
        }
        self.announcer = wanted.map(|settings| Announcer::new(&settings, self.network.interface()));
    }

    /// The monitor, for the sampler and the metrics server.
    pub fn monitor(&self) -> Arc<Monitor> {
        self.monitor.clone()
    }

    /// The config text in force.
    pub fn config_text(&self) -> &str {
        &self.desk.in_force().text
    }

    /// The config file the controller runs with.
    pub fn config_path(&self) -> &Path {
        self.desk.config_path()
    }

    /// The data plane.
    pub fn dataplane(&self) -> &Dataplane {
        &self.desk.dataplane
    }

    /// The data plane, to change outside the gate (detaching it).
    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.desk.dataplane
    }

    /// Answers one API request.
    pub fn handle(&mut self, request: Request, uid: Option<u32>) -> Reply {
        match request {
            Request::Status => self.status(),
            Request::Config => Reply::ok(&ConfigAnswer {
                generation: self.desk.dataplane.generation(),
                config: self.desk.in_force().text.clone(),
            }),
            Request::Plan(request) => self.plan(&request),
            Request::Apply(request) => {
                let reply = self.change(
                    request.config,
                    request.force,
                    request.if_generation,
                    Door::Api(uid, "apply".into()),
                );
                self.watched_reply(reply, request.watch_s)
            }
            Request::Backend(request) => {
                let watch_s = request.watch_s;
                let reply = self.backend(request, uid);
                self.watched_reply(reply, watch_s)
            }
            Request::Watch => Reply::ok(&wire::WatchAnswer {
                watch: self.watch_report(),
            }),
            Request::Explain(request) => self.explain(&request),
            Request::Tables => self.tables(),
            Request::TraceStart(request) => self.trace_start(&request),
            Request::TraceRenew(id) => self.trace_renew(id),
            Request::TraceStop(id) => self.trace_stop(id),
            Request::Detach => self.detach(),
        }
    }

    fn status(&self) -> Reply {
        if self.desk.dataplane.installed().is_none() {
            return Reply::error(503, "nothing is installed");
        }
        let report = match self.monitor.report(true) {
            Ok((report, _)) => report,
            Err(e) => return Reply::error(500, format!("reading the counters: {e}")),
        };
        Reply::ok(&StatusAnswer {
            interface: self.network.interface().to_string(),
            bank: self.desk.dataplane.bank(),
            config: self.desk.config_path().display().to_string(),
            pins: self.pins.path().display().to_string(),
            watch: self.watch_report(),
            report,
        })
    }

    /// Reads every counter, with the window's shares and flags.
    pub fn report(&self) -> std::io::Result<crate::monitor::report::Report> {
        self.monitor.report(true).map(|(report, _)| report)
    }

    /// The clients the data plane sees, to judge a change from the config
    /// in force to `text` by, when either may hold source rules or limits
    /// (only then is a pass over the connection table worth it). `None`
    /// otherwise, or when reading fails (said in the log): the change is
    /// then judged on the rules alone.
    fn clients_for(&self, text: &str) -> Option<Clients> {
        let touches = [self.desk.in_force().text.as_str(), text]
            .iter()
            .any(|text| text.contains("_sources") || text.contains("limits"));
        if !touches {
            return None;
        }
        self.monitor
            .clients()
            .map_err(|e| eprintln!("fulcrum: reading the clients' sources: {e}"))
            .ok()
    }

    fn plan(&self, request: &ApplyRequest) -> Reply {
        let next = validate(&request.config);
        let Some(next_side) = next.side() else {
            return Reply::with(
                422,
                &PlanAnswer {
                    accepted: false,
                    error: Some("the config cannot be read".into()),
                    config_problems: next.problems,
                    current_problems: Vec::new(),
                    generation: None,
                    plan: None,
                },
            );
        };
        let clients = self.clients_for(&request.config);
        let mut planned = plan(
            Some(self.desk.in_force().side()),
            next_side,
            request.force,
            clients.as_ref(),
        );
        if let Some(config) = &next.config {
            planned.judge_health(config, &self.health.dead());
        }
        let accepted = next.is_valid() && planned.accepted();
        let answer = PlanAnswer {
            accepted,
            error: None,
            config_problems: next.problems,
            current_problems: Vec::new(),
            generation: Some(self.desk.dataplane.generation()),
            plan: Some(planned),
        };
        Reply::with(if accepted { 200 } else { 422 }, &answer)
    }

    /// Follows a change of the interface's MAC (a bond failing over, an
    /// `ip link set address`): the data plane forwards only the frames
    /// addressed to the MAC it holds, and would pass every other one to
    /// the kernel. Run on every neighbour tick, so also after a restart.
    pub fn follow_interface_mac(&mut self) {
        let (Ok(mac), Ok(config)) = (
            net::interface_mac(self.network.interface()),
            self.desk.dataplane.config(),
        ) else {
            return;
        };
        if config.if_mac == mac.0 {
            return;
        }
        let was = MacAddr(config.if_mac);
        let config = lb_common::maps::DataplaneConfig {
            if_mac: mac.0,
            ..config
        };
        match self.desk.dataplane.set_config(config) {
            Ok(()) => crate::note!(
                "WARNING the MAC of {} changed from {was} to {mac}; the data plane now takes the \
                 frames addressed to {mac}",
                self.network.interface()
            ),
            Err(e) => crate::note!(
                "following the MAC of {}: {}",
                self.network.interface(),
                Chain(&e)
            ),
        }
    }

    /// Looks at the neighbour table again. A held-out backend that now has
    /// a MAC, or a backend whose MAC changed, re-applies the config in force
    /// through the gate (door `neighbours`; unchanged tables are shared, so
    /// a MAC change rewrites only backend slots). Bringing held-out capacity
    /// back may move more flows than the blast-radius guard allows at once;
    /// that is the point of the change, so it is forced, and the journal
    /// records it.
    pub fn refresh_neighbours(&mut self) {
        let wanted = self.desk.in_force().config().unresolved_addresses();
        if wanted.is_empty() {
            return;
        }
        let table = match self.network.known(&wanted) {
            Ok(table) => table,
            Err(e) => {
                crate::note!("reading the neighbour table: {e:#}");
                return;
            }
        };
        let installed: HashMap<IpAddr, MacAddr> = self
            .desk
            .dataplane
            .installed()
            .iter()
            .flat_map(|s| &s.vips)
            .flat_map(|v| &v.backends)
            .map(|b| (b.addr.ip(), b.mac))
            .collect();
        let changed = wanted.iter().any(|(address, _)| {
            matches!((table.get(address), installed.get(address)), (Some(now), Some(was)) if now != was)
        });
        if changed {
            self.change(
                self.desk.in_force().text.clone(),
                true,
                None,
                Door::Neighbours,
            );
        }
    }

    /// Takes `text` through the gate. For the API, the file is rewritten
    /// (durably) before the change goes live and before it is reported.
    pub fn change(
        &mut self,
        text: String,
        force: bool,
        if_generation: Option<u64>,
        door: Door,
    ) -> Reply {
        let (down, ejected) = (self.health.down(), self.outliers.ejected());
        let previous = self.desk.in_force().text.clone();
        let ramps_before = self.ramps.clone();
        self.start_ramps(&text, (&down, &ejected));
        let ramped = self.ramps.ramped();
        // What the file said, for the doors that read it.
        let file_text =
            matches!(door, Door::FileChanged | Door::Sighup | Door::Start).then(|| text.clone());
        // A change of source rules or limits is judged on the clients the
        // data plane saw: the operator's doors only (the automatic ones
        // keep the rules in force).
        let operator = matches!(
            door,
            Door::Api(..) | Door::FileChanged | Door::Sighup | Door::Rollback(_)
        );
        let clients = if operator {
            self.clients_for(&text)
        } else {
            None
        };
        let request = desk::Request {
            text,
            force,
            if_generation,
            door: door.clone(),
            clients,
        };
        let left_out = desk::LeftOut {
            down: &down,
            ejected: &ejected,
            ramped: &ramped,
        };
        let decision = self.desk.change(request, left_out, &self.network);
        if !matches!(decision, Decision::Applied { .. }) {
            self.ramps.undo(ramps_before);
        }
        let (reply, codes, reasons) = match &decision {
            Decision::Stale {
                generation,
                expected,
            } => {
                return Reply::error(
                    409,
                    format!(
                        "the generation in force is {generation}, not {expected}: the state \
                         changed; plan again"
                    ),
                );
            }
            Decision::Unchanged { generation } => {
                return Reply::ok(&ChangeAnswer {
                    applied: true,
                    unchanged: true,
                    generation: *generation,
                    forced: Some(Vec::new()),
                    warnings: Some(Vec::new()),
                    vips: Some(Vec::new()),
                    ..ChangeAnswer::default()
                });
            }
            Decision::FileDiffers(path) => {
                return Reply::error(
                    409,
                    format!(
                        "{} differs from the config in force (an edit that was refused or \
                         is not applied yet); apply or revert that edit first, so that \
                         this change does not overwrite it",
                        path.display()
                    ),
                );
            }
            Decision::FileUnreadable(why) => return Reply::error(500, why.clone()),
            Decision::Applied { plan, generation } => {
                self.installed(plan, &door);
                if matches!(door, Door::Api(..) | Door::FileChanged | Door::Sighup) {
                    self.supersede_watch();
                    self.last_applied = Some(watch::Applied {
                        generation: *generation,
                        source: door.name(),
                        previous,
                        vips: changed_vips(plan).into_iter().collect(),
                    });
                }
                let answer = ChangeAnswer {
                    applied: true,
                    generation: *generation,
                    forced: Some(plan.forced.clone()),
                    warnings: Some(plan.problems.clone()),
                    vips: Some(plan.vips.clone()),
                    ..ChangeAnswer::default()
                };
                (Reply::ok(&answer), Vec::new(), Vec::new())
            }
            Decision::Refused {
                problems,
                plan,
                generation,
            } => {
                let answer = ChangeAnswer {
                    generation: *generation,
                    problems: Some(problems.clone()),
                    vips: plan.as_ref().map(|p| p.vips.clone()),
                    ..ChangeAnswer::default()
                };
                let codes = problems.iter().map(|p| &*p.code).collect();
                (Reply::with(422, &answer), codes, lines(problems))
            }
            Decision::Failed {
                failure,
                generation,
            } => {
                let message = format!("{failure}; the previous state stays in force");
                let answer = ChangeAnswer {
                    generation: *generation,
                    error: Some(message.clone()),
                    ..ChangeAnswer::default()
                };
                (
                    Reply::with(500, &answer),
                    vec!["install-failed"],
                    vec![message],
                )
            }
        };
        let outcome = decision.outcome().unwrap_or(Outcome::Failed);
        self.monitor.decided(outcome, &codes);
        if let Some(text) = file_text {
            self.file_seen(&text);
        } else if matches!(door, Door::Api(..) | Door::Rollback(_)) && outcome == Outcome::Applied {
            self.monitor.file_in_force(true);
        }
        self.announce();
        match outcome {
            Outcome::Applied => crate::note!(
                "{}: applied and verified as generation {}",
                door.name(),
                self.desk.dataplane.generation()
            ),
            Outcome::Refused | Outcome::Failed => crate::note!(
                "{}: {}: {}; the installed state stays in force",
                door.name(),
                outcome.name().to_uppercase(),
                reasons.join("; ")
            ),
        }
        reply
    }

    /// A plan was applied by `door`: the VIPs it changed were last changed
    /// now, and the monitor watches the new state.
    fn installed(&mut self, plan: &Plan, door: &Door) {
        let change = LastChange {
            generation: self.desk.dataplane.generation(),
            time: unix_now(),
            source: door.name(),
        };
        for endpoint in changed_vips(plan)
            .into_iter()
            .chain(door.details().1.to_vec())
        {
            self.changes.insert(endpoint, change.clone());
        }
        if !matches!(
            door,
            Door::Health(_) | Door::Outlier(_) | Door::SlowStart(_)
        ) {
            self.health.retarget(self.desk.in_force().config());
        }
        self.follow_announce_settings();
        if let Err(e) = self.report_group() {
            crate::note!("reading the seed in force: {e:#}");
        }
        self.tell_left_out();
        let rules = self.desk.dataplane.deny_rules().unwrap_or_else(|e| {
            eprintln!("fulcrum: reading the deny rules in force: {e}");
            Vec::new()
        });
        if let Some(state) = self.desk.dataplane.installed() {
            let view = View::of(state, self.desk.dataplane.generation(), &self.changes)
                .unramped(self.desk.in_force().config(), &self.ramps.ramped())
                .with_rules(rules);
            self.monitor
                .install(view, monitor_settings(self.desk.in_force()));
        }
    }

    /// Takes the health checker's findings to the tables, by the door
    /// `health`, as far as the panic policy and damping allow.
    pub fn reconcile_health(&mut self) {
        let config = self.desk.in_force().config().clone();
        let before = self.health.down();
        let change = self.health.reconcile(&config);
        self.monitor
            .health_verdicts(self.health.verdicts(), self.health.changes());
        if let Some(change) = change
            && !self.reconcile(Door::Health(change))
        {
            self.health.undo(&before);
        }
    }

    /// Takes an automatic change by `door` through the gate: the config in
    /// force, installed with what the daemon leaves out now. Whether it
    /// went live.
    fn reconcile(&mut self, door: Door) -> bool {
        let text = self.desk.in_force().text.clone();
        self.change(text, false, None, door).status == 200
    }

    /// Starts the ramps of the backends that `text` (the config a change
    /// proposes), installed without `out` (down, ejected), puts into a
    /// table they are not in now.
    fn start_ramps(&mut self, text: &str, (down, ejected): (&[Down], &[Down])) {
        // The automatic doors propose the text in force, read already; a
        // new text is read here only when it can ramp at all (reading a
        // config of 100,000 backends takes most of a second, and the gate
        // reads it again). Without slow start anywhere, nothing ramps.
        let parsed;
        let next = if text == self.desk.in_force().text {
            self.desk.in_force().config()
        } else if text.contains("slow_start_s") {
            match Config::parse(text) {
                Ok(config) => {
                    parsed = config;
                    &parsed
                }
                Err(_) => return,
            }
        } else {
            self.ramps = ramp::RampControl::default();
            return;
        };
        if next.vips.iter().all(|vip| vip.slow_start_s == 0) {
            self.ramps = ramp::RampControl::default();
            return;
        }
        let out: BTreeSet<Down> = down.iter().chain(ejected).cloned().collect();
        let before: BTreeSet<Down> = self
            .desk
            .dataplane
            .installed()
            .iter()
            .flat_map(|state| &state.vips)
            .flat_map(|vip| {
                let endpoint = vip.endpoint();
                vip.backends
                    .iter()
                    .filter(|b| b.weight > 0 && !b.down)
                    .map(move |b| (endpoint.clone(), b.addr))
            })
            .collect();
        let serving = ramp::serving(next, &out);
        self.ramps.start(next, (&before, &serving), Instant::now());
    }

    /// Moves the slow-start ramps on, by the door `slow-start`.
    pub fn advance_ramps(&mut self) {
        let before = self.ramps.clone();
        if let Some(change) = self.ramps.advance(Instant::now())
            && !self.reconcile(Door::SlowStart(change))
        {
            self.ramps.undo(before);
        }
    }

    /// Starts watching the operator change just applied, for `asked`
    /// seconds, else `[rollout] watch_s` (none when 0, or when it changed
    /// no VIP).
    pub fn begin_watch(&mut self, asked: Option<u64>) {
        let Some(applied) = self.last_applied.take() else {
            return;
        };
        let generation = applied.generation;
        let length = asked.unwrap_or(self.desk.in_force().config().rollout.watch_s);
        if generation != self.desk.dataplane.generation() || length == 0 || applied.vips.is_empty()
        {
            return;
        }
        let before = match self.monitor.signals() {
            Ok(signals) => watch::only(signals, &applied.vips),
            Err(e) => {
                crate::note!(
                    "WARNING watch: reading the counters: {e}; generation {generation} is not watched"
                );
                return;
            }
        };
        let dead = self.health.dead();
        crate::note!(
            "watch: generation {generation} ({}) is watched for {length} s: {}",
            applied.source,
            applied.vips.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        self.watch = Some(watch::Watch::new(
            applied,
            (before, dead),
            (Instant::now(), std::time::Duration::from_secs(length)),
        ));
        self.monitor.watching(true, None);
    }

    /// Starts the watch of the change `reply` answered (for `asked`
    /// seconds, else as configured), and says in it how long the watch is.
    fn watched_reply(&mut self, mut reply: Reply, asked: Option<u64>) -> Reply {
        self.begin_watch(asked);
        if let Some(watch) = &self.watch
            && reply.status == 200
            && reply.body["generation"] == watch.generation
        {
            reply.body["watch_s"] = watch.length().as_secs().into();
        }
        reply
    }

    /// The watch under way, else how the last one ended.
    fn watch_report(&self) -> Option<watch::WatchReport> {
        self.watch
            .as_ref()
            .map(|w| w.report(Instant::now()))
            .or_else(|| self.watched.clone())
    }

    /// Ends the watch under way (another operator change came): it is
    /// neither kept nor rolled back.
    fn supersede_watch(&mut self) {
        if let Some(watch) = self.watch.take() {
            crate::note!(
                "watch: generation {} ({}) is superseded by a new change before its watch ended",
                watch.generation,
                watch.source
            );
            self.end_watch(&watch, ("superseded", "superseded"), Vec::new(), None);
        }
    }

    fn end_watch(
        &mut self,
        watch: &watch::Watch,
        (state, result): (&str, &'static str),
        evidence: Vec<String>,
        rolled_back_as: Option<u64>,
    ) {
        self.watched = Some(watch::WatchReport {
            state: state.into(),
            left_s: None,
            evidence,
            rolled_back_as,
            ..watch.report(Instant::now())
        });
        self.monitor.watching(false, Some(result));
    }

    /// Looks at the change under watch: keeps it when its watch is over
    /// and nothing got worse, rolls it back when something did.
    pub fn check_watch(&mut self) {
        let Some(watch) = &self.watch else {
            return;
        };
        let signals = match self.monitor.signals() {
            Ok(signals) => signals,
            Err(e) => {
                crate::note!("watch: reading the counters: {e}");
                return;
            }
        };
        let now = Instant::now();
        let config = self.desk.in_force().config().clone();
        let look = watch.look(&config, (&signals, &self.health.dead()), now);
        let Some(watch) = (look != watch::Look::Watching)
            .then(|| self.watch.take())
            .flatten()
        else {
            return;
        };
        match look {
            watch::Look::Worse(evidence) => self.roll_back(&watch, evidence),
            _ => {
                crate::note!(
                    "watch: generation {} ({}) kept after {} s: nothing got worse",
                    watch.generation,
                    watch.source,
                    watch.watched_for(now).as_secs()
                );
                self.end_watch(&watch, ("kept", "kept"), Vec::new(), None);
            }
        }
    }

    /// Rolls the watched change back to the config before it, through the
    /// gate and its guards (door `rollback`, the file written back).
    fn roll_back(&mut self, watch: &watch::Watch, evidence: Vec<String>) {
        crate::note!(
            "WARNING watch: generation {} ({}) made things worse after {} s: {}; rolling back to \
             the config before it",
            watch.generation,
            watch.source,
            watch.watched_for(Instant::now()).as_secs(),
            evidence.join("; ")
        );
        let change = TableChange {
            details: std::iter::once(format!(
                "rolls back generation {} ({})",
                watch.generation, watch.source
            ))
            .chain(evidence.iter().cloned())
            .collect(),
            vips: watch.vips.iter().cloned().collect(),
        };
        let reply = self.change(watch.previous.clone(), false, None, Door::Rollback(change));
        if reply.status == 200 {
            let generation = self.desk.dataplane.generation();
            self.end_watch(
                watch,
                ("rolled back", "rolled_back"),
                evidence,
                Some(generation),
            );
            return;
        }
        // A refusal lists its problems; a failure, or a file that holds
        // another edit, says its error.
        let problems: Vec<Problem> =
            serde_json::from_value(reply.body["problems"].clone()).unwrap_or_default();
        let why: Vec<String> = problems
            .iter()
            .map(ToString::to_string)
            .chain(reply.body["error"].as_str().map(str::to_string))
            .collect();
        crate::note!(
            "WARNING watch: the rollback of generation {} was REFUSED ({}); the change stays in \
             force although it made things worse: act now",
            watch.generation,
            why.join("; ")
        );
        let evidence = evidence
            .into_iter()
            .chain(
                why.into_iter()
                    .map(|w| format!("the rollback was refused: {w}")),
            )
            .collect();
        self.end_watch(
            watch,
            ("rollback refused", "rollback_refused"),
            evidence,
            None,
        );
    }

    /// Takes the outlier detector's findings to the tables, by the door
    /// `outlier`: ejections, returns, and the ejected backends of a VIP
    /// health failures put into panic.
    pub fn reconcile_outliers(&mut self) {
        let config = self.desk.in_force().config().clone();
        let before = self.outliers.clone();
        let (judged, found) = self.monitor.outliers();
        let dead = self.health.dead();
        let change = self
            .outliers
            .reconcile(&config, &dead, (judged, &found), Instant::now());
        if let Some(change) = change
            && !self.reconcile(Door::Outlier(change))
        {
            self.outliers.undo(before);
        }
        self.tell_left_out();
    }

    /// Tells the monitor which backends are ejected and which ramp up.
    fn tell_left_out(&self) {
        self.monitor.left_out(
            self.outliers.ejected().into_iter().collect(),
            self.ramps.ramped().into_iter().collect(),
        );
    }

    /// The config file was read with `text`: is that the config in force?
    pub fn file_seen(&self, text: &str) {
        self.monitor
            .file_in_force(text == self.desk.in_force().text);
    }

    /// The first install of a fresh start, which `plan` described: journalled
    /// and watched like any applied change.
    pub fn started(&mut self, plan: &Plan) {
        self.desk.started(plan);
        self.installed(plan, &Door::Start);
        self.monitor.decided(Outcome::Applied, &[]);
    }

    fn backend(&mut self, request: BackendRequest, uid: Option<u32>) -> Reply {
        let edit = request.edit();
        let verb = format!("backend {}", edit.action.verb());
        match edit::apply(&self.desk.in_force().text, &edit) {
            Ok(text) => self.change(
                text,
                request.force,
                request.if_generation,
                Door::Api(uid, verb),
            ),
            Err(e @ (edit::EditError::UnknownVip(_) | edit::EditError::UnknownBackend { .. })) => {
                Reply::error(404, e.to_string())
            }
            Err(e) => Reply::error(400, e.to_string()),
        }
    }

    fn explain(&self, request: &ExplainRequest) -> Reply {
        let protocol = match request.protocol.parse::<Protocol>() {
            Ok(p) => p,
            Err(e) => return Reply::error(400, format!("protocol: {e}")),
        };
        let parse = |what: &str, text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|e| Reply::error(400, format!("{what} {text:?}: {e} (want ADDRESS:PORT)")))
        };
        let (source, destination) = match (
            parse("source", &request.source),
            parse("destination", &request.destination),
        ) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => return e,
        };
        let Some(state) = self.desk.dataplane.installed() else {
            return Reply::error(503, "nothing is installed");
        };
        if source.is_ipv4() != destination.is_ipv4() {
            return Reply::error(
                400,
                format!("{source} and {destination} are of different address families"),
            );
        }
        let key = flow_key(source, destination, protocol.number());
        let Some(vip) = state.vip_for(&key) else {
            return Reply::error(404, format!("{destination}/{protocol} is not a VIP"));
        };
        let seed = match self.desk.dataplane.config() {
            Ok(config) => config.seed,
            Err(e) => {
                return Reply::error(
                    500,
                    format!("reading the data plane's config: {}", Chain(&e)),
                );
            }
        };
        let hash = lb_common::flow_hash::flow_hash(&key, &seed);
        let tracked = match self.desk.dataplane.connection(&key) {
            Ok(tracked) => tracked,
            Err(e) => {
                return Reply::error(500, format!("reading the connection table: {}", Chain(&e)));
            }
        };
        let quic = match route_cid(vip, request.cid.as_deref()) {
            Ok(CidRoute::Server(backend, why)) => {
                return Reply::ok(&ExplainAnswer {
                    vip: vip.label.clone(),
                    backend: backend.label.clone(),
                    address: backend.addr.to_string(),
                    via: Via::ServerId,
                    forwarding: vip.forwarding.name().into(),
                    why,
                    hash,
                    slot: None,
                });
            }
            Ok(CidRoute::Fallback(why)) => why,
            Err(e) => return Reply::error(400, e),
        };
        let by_id = |id: u32| vip.backends.iter().find(|b| b.backend_id == id);
        if let Some(flow) = tracked
            && flow.entry.vip_id == vip.vip_id
            && let Some(backend) = by_id(flow.entry.backend_id)
        {
            return Reply::ok(&ExplainAnswer {
                vip: vip.label.clone(),
                backend: backend.label.clone(),
                address: backend.addr.to_string(),
                via: Via::ConnectionTable,
                forwarding: vip.forwarding.name().into(),
                why: format!(
                    "{quic}an established flow: the connection table pins it to this backend"
                ),
                hash,
                slot: None,
            });
        }
        let slot = lb_common::flow_hash::table_slot(hash, vip.table.table.len() as u32);
        match state.backend_for(&key, &seed) {
            Some(backend) => Reply::ok(&ExplainAnswer {
                vip: vip.label.clone(),
                backend: backend.label.clone(),
                address: backend.addr.to_string(),
                via: Via::Table,
                forwarding: vip.forwarding.name().into(),
                why: format!(
                    "{quic}a new flow: its hash {hash:#010x} picks slot {} of {}",
                    slot.unwrap_or(0),
                    vip.table.table.len()
                ),
                hash,
                slot,
            }),
            None => Reply::error(404, "the VIP's table has no backend for this flow"),
        }
    }

    /// The trace sessions' hub, for the API.
    pub fn trace_hub(&self) -> trace::Hub {
        self.trace.clone()
    }

    fn trace_labels(&self) -> wire::Labels {
        self.desk
            .dataplane
            .installed()
            .map(|state| {
                wire::Labels::of(
                    state,
                    self.desk.dataplane.bank(),
                    self.desk.dataplane.generation(),
                )
            })
            .unwrap_or_default()
    }

    fn trace_stats(&self) -> Result<TraceStatsAnswer, Reply> {
        match self.desk.dataplane.trace_stats() {
            Ok(stats) => Ok(trace::stats_answer(&stats, self.trace.lost())),
            Err(e) => Err(Reply::error(
                500,
                format!("reading the trace counters: {}", Chain(&e)),
            )),
        }
    }

    fn trace_start(&mut self, request: &wire::TraceRequest) -> Reply {
        let Some(state) = self.desk.dataplane.installed() else {
            return Reply::error(503, "nothing is installed");
        };
        let control = match trace::control(request, state) {
            Ok(control) => control,
            Err(why) => return Reply::error(400, why),
        };
        let Some(id) = self.trace.open() else {
            return Reply::error(409, "a trace is already running; one at a time");
        };
        if let Err(e) = self.desk.dataplane.set_trace(control) {
            self.trace.close(id);
            return Reply::error(500, format!("turning tracing on: {}", Chain(&e)));
        }
        crate::note!("trace: session {id} on ({request:?})");
        match self.trace_stats() {
            Ok(stats) => Reply::ok(&TraceStarted {
                session: id,
                labels: self.trace_labels(),
                stats,
            }),
            Err(reply) => reply,
        }
    }

    fn trace_renew(&mut self, id: u64) -> Reply {
        if !self.trace.is_open(id) {
            return Reply::error(410, "the trace session is over");
        }
        let renewed = self.desk.dataplane.trace().and_then(|control| {
            self.desk
                .dataplane
                .set_trace(lb_common::maps::TraceControl {
                    expires_ns: crate::dataplane::trace::lease_end(trace::LEASE),
                    ..control
                })
        });
        if let Err(e) = renewed {
            return Reply::error(500, format!("renewing the trace: {}", Chain(&e)));
        }
        match self.trace_stats() {
            Ok(stats) => Reply::ok(&TraceRenewed {
                labels: self.trace_labels(),
                stats,
            }),
            Err(reply) => reply,
        }
    }

    fn trace_stop(&mut self, id: u64) -> Reply {
        if !self.trace.close(id) {
            return Reply::error(410, "the trace session is over");
        }
        if let Err(e) = self
            .desk
            .dataplane
            .set_trace(lb_common::maps::TraceControl::default())
        {
            crate::note!(
                "trace: WARNING turning tracing off: {}; its lease ends it in 3 s",
                Chain(&e)
            );
        }
        crate::note!("trace: session {id} off");
        match self.trace_stats() {
            Ok(stats) => Reply::ok(&TraceStatsLine { stats }),
            Err(reply) => reply,
        }
    }

    /// Every VIP's table as the kernel holds it, in backend identities.
    fn tables(&self) -> Reply {
        let Some(state) = self.desk.dataplane.installed() else {
            return Reply::error(503, "nothing is installed");
        };
        let bank = self.desk.dataplane.bank();
        let mut vips = Vec::new();
        for vip in &state.vips {
            let held = match self.desk.dataplane.read_table(table_id(bank, vip.vip_id)) {
                Ok(held) => held,
                Err(e) => {
                    return Reply::error(
                        500,
                        format!("reading {}'s table: {}", vip.label, Chain(&e)),
                    );
                }
            };
            let position: HashMap<u32, u32> = (0u32..)
                .zip(&vip.backends)
                .map(|(i, b)| (b.backend_id, i))
                .collect();
            let slots = held
                .iter()
                .map(|id| position.get(id).copied().unwrap_or(u32::MAX))
                .collect();
            vips.push(VipTableDump::new(
                &vip.label,
                vip.endpoint(),
                vip.backends.iter().map(|b| b.addr).collect(),
                slots,
            ));
        }
        let seed = match self.desk.dataplane.config() {
            Ok(config) => config.seed,
            Err(e) => return Reply::error(500, format!("reading the seed: {}", Chain(&e))),
        };
        let tables = Tables {
            source: format!(
                "the data plane on {} of {}",
                self.network.interface(),
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map_or_else(|_| "this host".into(), |name| name.trim().to_string())
            ),
            group: self.group_name(),
            seed_fingerprint: Some(group::seed_fingerprint(&seed)),
            vips,
        };
        Reply::ok(&tables)
    }

    fn detach(&mut self) -> Reply {
        if let Err(e) = self.withdraw() {
            return Reply::error(
                503,
                format!(
                    "withdrawing the routes failed: {e:#}; nothing was detached, so the \
                     host still forwards what the routers send it. Fix BIRD (`fulcrum \
                     status`), or stop the daemon and run `fulcrum detach --interface {} \
                     --force` to detach with the routes still announced",
                    self.network.interface()
                ),
            );
        }
        let result = self
            .desk
            .dataplane
            .detach()
            .map_err(anyhow::Error::from)
            .and_then(|()| self.pins.remove().map_err(anyhow::Error::from))
            .and_then(|_| self.desk.records().remove());
        match result {
            Ok(()) => {
                crate::note!(
                    "detached from {} on request; exiting",
                    self.network.interface()
                );
                Reply::ok(&DetachAnswer {
                    detached: true,
                    interface: self.network.interface().to_string(),
                    pins: None,
                })
            }
            Err(e) => Reply::error(500, format!("detaching: {e:#}")),
        }
    }
}
