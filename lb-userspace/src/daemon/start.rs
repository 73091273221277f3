//! Start-up: the config to start from (the file, or, when the file is
//! invalid, what the pinned data plane was installed from), then the data
//! plane: adopted from its pins (this build's program swapped in place, or
//! attached again when it was detached from outside), or loaded, filled
//! through the gate, attached and pinned. Either way the result is a
//! controller holding the data plane, its pins and records, and the lock
//! that makes it the only one.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use lb_common::{flow_hash::FlowSeed, maps::DataplaneConfig};
use tokio::runtime::Handle;

use crate::errors::Chain;
use crate::{
    config::{Config, join_problems},
    daemon::{
        Controller, Door, desk,
        gate::{self, HostNetwork, InForce, Verdict},
        journal::Journal,
        records::RecordDir,
        seed,
    },
    dataplane::{Capacities, Dataplane, XdpChoice, pins::PinDir, system},
    health::Transition,
    net,
    policy::{
        plan::Plan,
        validate::{ValidConfig, validate},
    },
};

/// How `fulcrum run` was asked to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The config file.
    pub config: PathBuf,
    /// The interface, over the config's.
    pub interface: Option<String>,
    /// Counter reports as JSON lines, not text.
    pub json_stats: bool,
    /// Detach the data plane on SIGINT/SIGTERM.
    pub detach_on_exit: bool,
    /// Override the guards for the config at start.
    pub force: bool,
    /// The metrics address, over the config's.
    pub metrics: Option<SocketAddr>,
    /// The API socket, over the config's.
    pub socket: Option<PathBuf>,
    /// The apply journal.
    pub journal: PathBuf,
    /// The bpffs directory under which each interface's data plane is pinned.
    pub pin_root: PathBuf,
    /// The directory under which each interface's records live.
    pub state_root: PathBuf,
    /// Which XDP mode to attach in.
    pub xdp_mode: XdpChoice,
}

impl Options {
    /// The pin and record directories of `interface`.
    pub fn places(&self, interface: &str) -> (PinDir, RecordDir) {
        (
            PinDir::new(&self.pin_root, interface),
            RecordDir::new(&self.state_root, interface),
        )
    }
}

/// A controller in charge of its data plane, and what it was started with.
pub struct Started {
    /// The controller.
    pub controller: Controller,
    /// The interface it serves.
    pub interface: String,
    /// The config as it was read at start.
    pub config: Config,
    /// The config file's text at start.
    pub text: String,
    /// Held while the process lives: one controller per data plane.
    pub lock: File,
}

/// A start refused for its config: unreadable, invalid, refused by the
/// gate, or naming no interface. Starting again cannot help until the file
/// is fixed, so `fulcrum run` exits with `EXIT_CONFIG` (which the shipped
/// systemd unit does not restart).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigRefused(String);

/// The exit status of a start refused for its config (`EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

/// Reads the config file.
pub fn read_config(path: &Path) -> anyhow::Result<String> {
    crate::config::read_file(path).with_context(|| format!("reading config {}", path.display()))
}

/// The config text the data plane pinned for this run's interface was
/// installed from (its newest record), when there is such a data plane.
/// The interface is `--interface`, the one an invalid file still names, or
/// the only one with records under the state root.
fn installed_config(options: &Options, parsed: Option<&Config>) -> Option<String> {
    let interface = options
        .interface
        .clone()
        .or_else(|| parsed.and_then(|c| c.interface.clone()))
        .or_else(|| {
            let recorded: Vec<String> = std::fs::read_dir(&options.state_root)
                .ok()?
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| {
                    let (_, records) = options.places(name);
                    records.read(0).is_ok() || records.read(1).is_ok()
                })
                .collect();
            match recorded.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            }
        })?;
    let (pins, records) = options.places(&interface);
    if !pins.path().exists() {
        return None;
    }
    [0, 1]
        .into_iter()
        .filter_map(|bank| records.read(bank).ok())
        .max_by_key(|record| record.generation)
        .map(|record| record.config)
}

/// The config to start from: the file's, or, when it is invalid, the one
/// the pinned data plane was installed from (the edit is then refused).
fn first_config(options: &Options, text: &str) -> anyhow::Result<(String, ValidConfig)> {
    match validate(text).valid() {
        Ok(valid) => Ok((text.to_string(), valid)),
        Err(invalid) => {
            let problems = join_problems(&invalid.errors());
            // A broken edit must not keep a controller from a data plane
            // that runs: start from what it was installed from, and refuse
            // the edit.
            let Some(installed) = installed_config(options, invalid.config.as_ref()) else {
                bail!(ConfigRefused(format!(
                    "config {} is invalid (see `fulcrum validate`): {problems}",
                    options.config.display()
                )));
            };
            crate::note!(
                "WARNING config {} is invalid: {problems}; starting from the config the pinned \
                 data plane was installed from, which stays in force until the file is fixed",
                options.config.display()
            );
            let Ok(valid) = validate(&installed).valid() else {
                bail!(ConfigRefused(format!(
                    "the installed config is invalid too: {problems}"
                )));
            };
            Ok((installed, valid))
        }
    }
}

/// Tells the operator what the gate decided at start-up; errors when it
/// refused. Returns the plan applied and the config in force.
fn first_verdict(verdict: Verdict, what: &str) -> anyhow::Result<(Plan, InForce)> {
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
            bail!(ConfigRefused(format!(
                "{what}: REFUSED, nothing changed: {}",
                join_problems(&problems)
            )))
        }
    }
}

/// Takes charge of the data plane for the config file in `options`: health
/// checks run on `runtime`, and their transitions go to `notify`.
pub fn start(
    options: &Options,
    (notify, runtime): (impl Fn(Transition) + Send + Sync + 'static, &Handle),
) -> anyhow::Result<Started> {
    let text = read_config(&options.config).map_err(|e| ConfigRefused(format!("{e:#}")))?;
    let (first_text, first) = first_config(options, &text)?;
    for warning in first.warnings() {
        crate::note!("{warning}");
    }
    let config = first.config().clone();
    let Some(interface) = options.interface.clone().or(config.interface.clone()) else {
        bail!(ConfigRefused(
            "no interface: set `interface` in the config or pass --interface".into()
        ));
    };
    system::require_bpf_privileges()?;
    net::require_interface(&interface)?;
    let bpffs_mounted = system::ensure_bpffs()?;
    if bpffs_mounted {
        crate::note!("mounted bpffs at {}", system::BPFFS);
    }
    let (pins, records) = options.places(&interface);
    // One controller per data plane: a second one would write into the bank
    // the first just made live. Held until this process exits.
    let lock = records
        .lock()
        .with_context(|| format!("taking control of {interface}"))?;
    let journal = Journal::new(&options.journal);
    crate::note!(
        "fulcrum {}{} starting",
        crate::VERSION.as_str(),
        // Set at build time, so that two builds of one version can be told apart.
        option_env!("FULCRUM_BUILD_NOTE").map_or_else(String::new, |n| format!(" ({n})"))
    );
    let (seed, seed_from) =
        seed::resolve(config.flow_hash_seed, &seed::path_beside(&options.journal))?;
    let network = HostNetwork::open(&interface, runtime)?;
    let (dataplane, in_force, first_plan) = match Dataplane::adopt(&pins)? {
        Some(dataplane) => {
            let seed = (seed, seed_from.as_str());
            let adopting = Adopting {
                pins: &pins,
                records: &records,
                interface: &interface,
                xdp_mode: options.xdp_mode,
            };
            let (dataplane, in_force) = adopting.adopt(dataplane, seed)?;
            (dataplane, in_force, None)
        }
        None => {
            let fresh = Fresh {
                network: &network,
                config: &config,
                pins: &pins,
                records: &records,
                seed,
            };
            let (dataplane, plan, in_force) = fresh.start(options, &first_text)?;
            crate::note!("flows are hashed with {seed_from}");
            (dataplane, in_force, Some(plan))
        }
    };
    let mut controller = Controller::new(
        dataplane,
        (pins, records),
        in_force,
        (&options.config, journal),
        (network, bpffs_mounted),
        (notify, runtime),
    )?;
    if let Some(plan) = first_plan {
        controller.started(&plan);
    }
    if controller.config_text() != text {
        // The file changed while no controller ran, or is invalid.
        controller.change(text.clone(), options.force, None, Door::Start);
    }
    controller.file_seen(&text);
    controller.announce();
    Ok(Started {
        controller,
        interface,
        config,
        text,
        lock,
    })
}

/// A pinned data plane to take over, and where.
struct Adopting<'a> {
    pins: &'a PinDir,
    records: &'a RecordDir,
    interface: &'a str,
    xdp_mode: XdpChoice,
}

impl Adopting<'_> {
    /// Takes over a pinned data plane: checks that the kernel holds what its
    /// record says, then swaps this build's program in place, or attaches it
    /// again when it was detached from outside.
    fn adopt(
        self,
        mut dataplane: Dataplane,
        (seed, seed_from): (FlowSeed, &str),
    ) -> anyhow::Result<(Dataplane, InForce)> {
        let Adopting {
            pins,
            records,
            interface,
            xdp_mode,
        } = self;
        dataplane.set_link_mtu(net::interface_mtu(interface)?);
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
                "WARNING the pinned data plane hashes flows with another seed than {seed_from}; it \
             keeps its own, since its connection table is placed by it. The new seed takes \
             effect after `fulcrum detach`, which forgets every tracked flow"
            );
        }
        let ifindex = net::ifindex(interface)?;
        if pins.attached_ifindex().ok().flatten() == Some(ifindex) {
            crate::note!(
                "adopted the data plane attached to {interface} (pinned at {}): generation {}, \
             {} VIPs; forwarding never stopped",
                pins.path().display(),
                record.generation,
                record.vips.len()
            );
            match dataplane.upgrade_program(pins) {
                Ok(id) => crate::note!(
                    "this build's XDP program (id {id}) replaced the running one in place, on \
                 the same maps"
                ),
                Err(e) => crate::note!("kept the running XDP program: {}", Chain(&e)),
            }
            match net::xdp_mode(interface)? {
                Some(mode) if !xdp_mode.allows(mode) => crate::note!(
                    "WARNING the adopted data plane runs in {mode} XDP mode, not as --xdp-mode \
                 asks; adopting never stops forwarding, so it stays so until `fulcrum detach` \
                 and a fresh start"
                ),
                _ => {}
            }
        } else {
            // Detached from outside, or the interface was made again: the
            // pinned link forwards nothing. Attach again, on the same maps
            // (tables, connection table, counters).
            let mode = dataplane
                .reattach(pins, interface, xdp_mode)
                .with_context(|| {
                    format!("attaching the adopted data plane to {interface} again")
                })?;
            crate::note!(
                "WARNING the pinned data plane (generation {}, {} VIPs) was no longer attached to \
             {interface}, so nothing was forwarded; attached it again ({mode} XDP) on the same \
             maps",
                record.generation,
                record.vips.len()
            );
        }
        let in_force = InForce::installed(record.config, record.held_out).map_err(|problems| {
            anyhow::anyhow!(
                "the installed record's config cannot be read: {}",
                join_problems(&problems)
            )
        })?;
        Ok((dataplane, in_force))
    }
}

/// A data plane to load afresh.
struct Fresh<'a> {
    network: &'a HostNetwork,
    config: &'a Config,
    pins: &'a PinDir,
    records: &'a RecordDir,
    seed: FlowSeed,
}

impl Fresh<'_> {
    /// Loads, pins and fills a new data plane with `text` (through the
    /// gate, from nothing installed), then attaches it and pins the link.
    /// Nothing half-made stays behind when it fails.
    fn start(&self, options: &Options, text: &str) -> anyhow::Result<(Dataplane, Plan, InForce)> {
        let Fresh {
            network,
            config,
            pins,
            records,
            seed,
        } = *self;
        let interface = network.interface();
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
        let started = (|| {
            dataplane.pin(pins)?;
            let proposal = gate::Proposal {
                text,
                force: options.force,
                persist: None,
                left_out: desk::LeftOut::default(),
                clients: None,
            };
            let verdict = gate::apply(&mut dataplane, records, None, &proposal, network)?;
            let (plan, in_force) = first_verdict(verdict, &options.config.display().to_string())?;
            let mode = dataplane.attach(interface, options.xdp_mode)?;
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
                let _ = dataplane.detach();
                let _ = pins.remove();
                let _ = records.remove();
                Err(e)
            }
        }
    }
}
