//! `fulcrum run`: the controller. It adopts the data plane pinned for the
//! interface if there is one (checking that the kernel holds what the
//! installed record says), else loads, pins and attaches a new one (native
//! XDP, else generic). Either way the config file goes through the change
//! gate. Then it serves the admin API; API changes, SIGHUP and edits of the
//! file all go through the same gate, one at a time. SIGUSR1 prints the
//! counters; SIGINT/SIGTERM exit and leave the data plane forwarding,
//! unless `--detach-on-exit`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use lb_common::{flow_hash::FlowSeed, maps::DataplaneConfig};
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1},
    iterator::Signals,
};

use super::OutputFormat;
use crate::{
    config::join_problems,
    daemon::{
        Controller, Door,
        api::{self, Job, Request},
        gate::{self, HostNetwork, InForce, Verdict},
        journal::{self, Journal},
        records::{self, RecordDir},
        scrape, seed,
    },
    dataplane::{
        Capacities, Dataplane,
        pins::{self, PinDir},
        system,
    },
    monitor::report::Report,
    net,
    policy::{plan::Plan, validate::validate},
};

/// Arguments of `fulcrum run`.
#[derive(Args)]
pub struct RunArgs {
    /// The config file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The interface to attach to; overrides `interface` in the config.
    #[arg(long, short)]
    pub interface: Option<String>,
    /// How counters are printed (JSON: one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub stats_format: OutputFormat,
    /// Detach the data plane and remove its pins on SIGINT/SIGTERM, instead
    /// of leaving it forwarding.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Accept a config that loosens the guards in force, or moves more than
    /// they allow (each override is recorded).
    #[arg(long)]
    pub force: bool,
    /// The metrics address (`ADDRESS:PORT`); overrides `[api].metrics`.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,

    /// The admin API's Unix socket; overrides `[api].socket`.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The apply journal (JSON lines).
    #[arg(long, default_value = journal::DEFAULT_PATH)]
    pub journal: PathBuf,
    /// Where the pins and installed records are.
    #[command(flatten)]
    pub places: Places,
}

/// Where the data plane's pins and installed records live.
#[derive(Args, Clone)]
pub struct Places {
    /// The bpffs directory under which each interface's data plane is pinned.
    #[arg(long, default_value = pins::DEFAULT_ROOT)]
    pub pin_root: PathBuf,
    /// The directory under which each interface's installed records live.
    #[arg(long, default_value = records::DEFAULT_ROOT)]
    pub state_root: PathBuf,
}

impl Places {
    /// The pin and record directories of `interface`.
    pub fn of(&self, interface: &str) -> (PinDir, RecordDir) {
        (
            PinDir::new(&self.pin_root, interface),
            RecordDir::new(&self.state_root, interface),
        )
    }
}

/// Prints a counter report; a closed stdout is reported once on stderr and
/// never stops the controller.
fn print_report(report: &Report, format: OutputFormat) {
    let text = match format {
        OutputFormat::Text => report.to_text(),
        OutputFormat::Json => serde_json::to_string(report)
            .map_or_else(|e| format!("{{\"error\": \"{e}\"}}\n"), |json| json + "\n"),
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        crate::note!("counters not printed: {e}");
    }
}

fn report(controller: &Controller, format: OutputFormat) {
    match controller.report() {
        Ok(report) => print_report(&report, format),
        Err(e) => crate::note!("reading the counters failed: {e:#}"),
    }
}

fn read_config(path: &Path) -> anyhow::Result<String> {
    crate::config::read_file(path).with_context(|| format!("reading config {}", path.display()))
}

/// The config text the data plane pinned for this run's interface was
/// installed from (its newest record), when there is such a data plane.
/// The interface is `--interface`, the one an invalid file still names, or
/// the only one with records under the state root.
fn installed_config(args: &RunArgs, parsed: Option<&crate::config::Config>) -> Option<String> {
    let interface = args
        .interface
        .clone()
        .or_else(|| parsed.and_then(|c| c.interface.clone()))
        .or_else(|| {
            let recorded: Vec<String> = std::fs::read_dir(&args.places.state_root)
                .ok()?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| {
                    let (_, records) = args.places.of(name);
                    records.read(0).is_ok() || records.read(1).is_ok()
                })
                .collect();
            match recorded.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            }
        })?;
    let (pins, records) = args.places.of(&interface);
    if !pins.path().exists() {
        return None;
    }
    [0, 1]
        .into_iter()
        .filter_map(|bank| records.read(bank).ok())
        .max_by_key(|record| record.generation)
        .map(|record| record.config)
}

/// Tells the operator what the gate decided at start-up; errors when it
/// refused. Returns the plan applied and the config in force.
fn announce(verdict: Verdict, what: &str) -> anyhow::Result<(Plan, InForce)> {
    match verdict {
        Verdict::Applied {
            plan,
            generation,
            in_force,
        } => {
            for problem in plan.problems.iter().chain(&plan.forced) {
                crate::note!("{problem}");
            }
            crate::note!("{what}: applied and verified as generation {generation}");
            Ok((plan, *in_force))
        }
        Verdict::Refused { problems, .. } => {
            bail!(
                "{what}: REFUSED, nothing changed: {}",
                join_problems(&problems)
            )
        }
    }
}

/// What the controller thread reacts to.
enum Event {
    Api(Job),
    Signal(i32),
    /// The config file changed on disk.
    FileChanged,
    /// Time to look at the neighbour table again (and at health changes
    /// damping held back).
    Neighbours,
    /// A backend's health checks changed its state.
    Health(crate::health::Transition),
}

/// How often backend MACs are looked up again (changes are followed, and
/// held-out backends join once they resolve).
const NEIGHBOUR_POLL: Duration = Duration::from_secs(2);

/// How often the config file is checked for edits.
const FILE_POLL: Duration = Duration::from_secs(1);

/// What the config file held when last read by anyone (the watch, a
/// SIGHUP, the daemon's own write-back of an API change), or why it was
/// not a config: the watch says only what differs from it, so that an edit
/// is judged once, and an edit back to an older text is never missed.
type FileSeen = Arc<Mutex<Result<String, String>>>;

/// Notes that the file now reads `read` (the bounded read).
fn saw(seen: &FileSeen, read: Result<String, crate::config::ReadError>) {
    *seen.lock().unwrap_or_else(PoisonError::into_inner) = read.map_err(|e| e.to_string());
}

/// Says whenever the config file differs from what was last seen of it:
/// its text, or that it is not a config (too large, not text), which the
/// daemon then reports once. Reads at most the config size limit, however
/// large the file grows.
fn watch_file(path: PathBuf, seen: FileSeen, events: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(FILE_POLL);
            let read = match crate::config::read_file(&path) {
                // Missing or unreadable for a moment (an editor replacing
                // it): wait for the next look.
                Err(crate::config::ReadError::Io(_)) => continue,
                read => read.map_err(|e| e.to_string()),
            };
            let mut last = seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *last != read {
                *last = read;
                drop(last);
                if events.send(Event::FileChanged).is_err() {
                    return;
                }
            }
        }
    });
}

/// Runs the controller until a signal (or `fulcrum detach`) stops it.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = read_config(&args.config)?;
    let (first_text, first) = match validate(&text).valid() {
        Ok(valid) => (text.clone(), valid),
        Err(invalid) => {
            let problems = join_problems(&invalid.errors());
            // A broken edit must not keep a controller from a data plane
            // that runs: start from what it was installed from, and refuse
            // the edit.
            let Some(installed) = installed_config(&args, invalid.config.as_ref()) else {
                bail!(
                    "config {} is invalid (see `fulcrum validate`): {problems}",
                    args.config.display()
                );
            };
            crate::note!(
                "WARNING config {} is invalid: {problems}; starting from the config the pinned \
                 data plane was installed from, which stays in force until the file is fixed",
                args.config.display()
            );
            let Ok(valid) = validate(&installed).valid() else {
                bail!("the installed config is invalid too: {problems}");
            };
            (installed, valid)
        }
    };
    for warning in first.warnings() {
        crate::note!("{warning}");
    }
    let config = first.config().clone();
    let Some(interface) = args.interface.clone().or(config.interface.clone()) else {
        bail!("no interface: set `interface` in the config or pass --interface");
    };
    system::require_bpf_privileges()?;
    net::require_interface(&interface)?;
    let bpffs_mounted = system::ensure_bpffs()?;
    if bpffs_mounted {
        crate::note!("mounted bpffs at {}", system::BPFFS);
    }
    let signals =
        Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP]).context("installing signal handlers")?;
    let socket = args.socket.clone().unwrap_or(config.api.socket.clone());
    let (pins, records) = args.places.of(&interface);
    // One controller per data plane: a second one would write into the bank
    // the first just made live. Held until this process exits.
    let _lock = records
        .lock()
        .with_context(|| format!("taking control of {interface}"))?;
    let journal = Journal::new(&args.journal);
    crate::note!(
        "fulcrum {}{} starting",
        env!("CARGO_PKG_VERSION"),
        // Set at build time, so that two builds of one version can be told apart.
        option_env!("FULCRUM_BUILD_NOTE").map_or_else(String::new, |n| format!(" ({n})"))
    );
    let (events, inbox) = mpsc::channel();
    let notify = {
        let events = events.clone();
        move |transition| {
            let _ = events.send(Event::Health(transition));
        }
    };
    let (seed, seed_from) =
        seed::resolve(config.flow_hash_seed, &seed::path_beside(&args.journal))?;
    let adopted = Dataplane::adopt(&pins)?;
    let mut controller = match adopted {
        Some(mut dataplane) => {
            dataplane.set_link_mtu(net::interface_mtu(&interface)?);
            let bank = dataplane.live_bank()?;
            let record = records.read(bank).context(
                "the pinned data plane has no installed record; `fulcrum detach` removes it",
            )?;
            let (_, state) = record.state()?;
            dataplane
                .adopt_state(state, bank, record.generation)
                .context("the kernel does not hold what the installed record says")?;
            if dataplane.config()?.seed != seed {
                crate::note!(
                    "WARNING the pinned data plane hashes flows with another seed than {seed_from}; \
                     it keeps its own, since its connection table is placed by it. The new seed \
                     takes effect after `fulcrum detach`, which forgets every tracked flow"
                );
            }
            let ifindex = net::ifindex(&interface)?;
            if pins.attached_ifindex().ok().flatten() == Some(ifindex) {
                crate::note!(
                    "adopted the data plane attached to {interface} (pinned at {}): \
                     generation {}, {} VIPs; forwarding never stopped",
                    pins.path().display(),
                    record.generation,
                    record.vips.len()
                );
                match dataplane.upgrade_program(&pins) {
                    Ok(id) => crate::note!(
                        "this build's XDP program (id {id}) replaced the running one in \
                         place, on the same maps"
                    ),
                    Err(e) => crate::note!("kept the running XDP program: {e}"),
                }
            } else {
                // Detached from outside, or the interface was made again:
                // the pinned link forwards nothing. Attach again, on the
                // same maps (tables, connection table, counters).
                let mode = dataplane.reattach(&pins, &interface).with_context(|| {
                    format!("attaching the adopted data plane to {interface} again")
                })?;
                crate::note!(
                    "WARNING the pinned data plane (generation {}, {} VIPs) was no longer \
                     attached to {interface}, so nothing was forwarded; attached it again \
                     ({mode} XDP) on the same maps",
                    record.generation,
                    record.vips.len()
                );
            }
            let in_force =
                InForce::installed(record.config, record.held_out).map_err(|problems| {
                    anyhow::anyhow!(
                        "the installed record's config cannot be read: {}",
                        join_problems(&problems)
                    )
                })?;
            Controller::new(
                dataplane,
                (pins.clone(), records.clone()),
                in_force,
                (&args.config, journal),
                (&interface, bpffs_mounted),
                notify,
            )?
        }
        None => {
            let (dataplane, plan, in_force) = start_fresh(
                &args,
                &interface,
                &config,
                (&pins, &records),
                &first_text,
                seed,
            )?;
            crate::note!("flows are hashed with {seed_from}");
            let mut controller = Controller::new(
                dataplane,
                (pins.clone(), records.clone()),
                in_force,
                (&args.config, journal),
                (&interface, bpffs_mounted),
                notify,
            )?;
            controller.started(&plan);
            controller
        }
    };
    if controller.config_text() != text {
        // The file changed while no controller ran, or is invalid.
        controller.change(text.clone(), args.force, None, Door::Start);
    }
    controller.file_seen(&text);
    controller.announce();
    controller.monitor().spawn_sampler();
    let metrics_address = args.metrics.unwrap_or(config.api.metrics);
    let metrics = scrape::serve(metrics_address, controller.monitor())?;
    let (jobs, job_inbox) = mpsc::channel::<Job>();
    let server = api::serve(&socket, jobs, controller.trace_hub())?;
    {
        let events = events.clone();
        std::thread::spawn(move || {
            for job in job_inbox {
                if events.send(Event::Api(job)).is_err() {
                    return;
                }
            }
        });
    }
    {
        let events = events.clone();
        let mut signals = signals;
        std::thread::spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        });
    }
    {
        let events = events.clone();
        std::thread::spawn(move || {
            while events.send(Event::Neighbours).is_ok() {
                std::thread::sleep(NEIGHBOUR_POLL);
            }
        });
    }
    let seen: FileSeen = Arc::new(Mutex::new(Ok(text)));
    watch_file(args.config.clone(), seen.clone(), events);
    let capacities = controller.dataplane().capacities()?;
    crate::note!(
        "serving on {interface}; API on {}; metrics on http://{metrics_address}/metrics; \
         room for {} flows and {} backends; edits of {} (or SIGHUP) are applied through \
         the gate, SIGUSR1 prints counters, SIGINT/SIGTERM exit",
        socket.display(),
        capacities.connection_table_size,
        capacities.max_backends,
        args.config.display()
    );
    for event in inbox {
        match event {
            Event::Api(job) => {
                let detaching = matches!(job.request, Request::Detach);
                let writes = matches!(job.request, Request::Apply(_) | Request::Backend(_));
                let reply = controller.handle(job.request, job.uid);
                if writes && reply.status == 200 {
                    // The daemon wrote the change back into the file.
                    saw(&seen, crate::config::read_file(&args.config));
                }
                let detached = detaching && reply.status == 200;
                let _ = job.reply.send(reply);
                if detached {
                    // Let the answer reach the caller before the socket goes.
                    std::thread::sleep(Duration::from_millis(100));
                    drop(server);
                    drop(metrics);
                    return Ok(());
                }
            }
            Event::Signal(SIGUSR1) => report(&controller, args.stats_format),
            Event::Signal(SIGHUP) => match read_config(&args.config) {
                Ok(text) => {
                    saw(&seen, Ok(text.clone()));
                    if text == controller.config_text() {
                        controller.file_seen(&text);
                        crate::note!(
                            "sighup: {} is the config in force; nothing to change",
                            args.config.display()
                        );
                    } else {
                        controller.change(text, false, None, Door::Sighup);
                    }
                }
                Err(e) => crate::note!("SIGHUP: {e:#}; the installed state stays in force"),
            },
            Event::FileChanged => {
                // Read the file now, not when the watcher saw it: the API may
                // have written it since, and an older text must not undo that.
                match read_config(&args.config) {
                    Ok(text) if text != controller.config_text() => {
                        controller.change(text, false, None, Door::FileChanged);
                    }
                    Ok(text) => controller.file_seen(&text),
                    Err(e) => crate::note!("{e:#}; the installed state stays in force"),
                }
            }
            Event::Neighbours => {
                controller.follow_interface_mac();
                controller.refresh_neighbours();
                controller.reconcile_health();
                controller.announce();
            }
            Event::Health(transition) => {
                crate::note!(
                    "health: VIP {} backend {} is {}: {}",
                    transition.key.vip,
                    transition.key.backend,
                    if transition.up { "up" } else { "DOWN" },
                    transition.reason
                );
                controller.reconcile_health();
            }
            Event::Signal(_) => break,
        }
    }
    drop(server);
    drop(metrics);
    report(&controller, args.stats_format);
    if args.detach_on_exit
        && let Err(e) = controller.withdraw()
    {
        crate::note!(
            "WARNING withdrawing the routes failed: {e:#}; not detaching: the data plane \
             stays attached and forwarding what the routers still send"
        );
    } else if args.detach_on_exit {
        controller.dataplane_mut().detach()?;
        pins.remove()?;
        records.remove()?;
        crate::note!("detached from {interface} and removed its pins");
    } else {
        crate::note!(
            "exiting; the data plane stays attached to {interface} and keeps \
             forwarding (pinned at {}); `fulcrum detach --interface {interface} \
             --pin-root {} --state-root {}` removes it",
            pins.path().display(),
            args.places.pin_root.display(),
            args.places.state_root.display()
        );
    }
    Ok(())
}

/// Loads, pins and fills a new data plane with `text` (through the gate,
/// from nothing installed), then attaches it and pins the link.
fn start_fresh(
    args: &RunArgs,
    interface: &str,
    config: &crate::config::Config,
    (pins, records): (&PinDir, &RecordDir),
    text: &str,
    seed: FlowSeed,
) -> anyhow::Result<(Dataplane, Plan, InForce)> {
    let mut dataplane = Dataplane::load_with(Capacities {
        connection_table_size: config.connection_table_size,
        max_backends: config.max_backends,
    })?;
    dataplane.set_link_mtu(net::interface_mtu(interface)?);
    dataplane.set_config(DataplaneConfig {
        if_mac: net::interface_mac(interface)?.0,
        epoch: crate::dataplane::clock::epoch_now(),
        tcp_idle_s: config.idle.tcp_s,
        udp_idle_s: config.idle.udp_s,
        seed,
        ..DataplaneConfig::default()
    })?;
    let network = HostNetwork { interface };
    let started = (|| {
        dataplane.pin(pins)?;
        let proposal = gate::Proposal {
            text,
            force: args.force,
            persist: None,
            down: &[],
        };
        let verdict = gate::apply(&mut dataplane, records, None, &proposal, &network)?;
        let (plan, in_force) = announce(verdict, &args.config.display().to_string())?;
        let mode = dataplane.attach(interface)?;
        dataplane.pin_link(pins)?;
        crate::note!(
            "attached to {interface} ({mode} XDP), pinned at {}",
            pins.path().display()
        );
        anyhow::Ok((plan, in_force))
    })();
    match started {
        Ok((plan, in_force)) => Ok((dataplane, plan, in_force)),
        Err(e) => {
            // Nothing half-made stays behind: no pins without a link.
            let _ = dataplane.detach();
            let _ = pins.remove();
            let _ = records.remove();
            Err(e)
        }
    }
}
