//! `fulcrum run`: the controller. It adopts the data plane pinned for the
//! interface if there is one (checking that the kernel holds what the
//! installed record says), else loads, pins and attaches a new one (native
//! XDP, else generic). Either way the config file then goes through the
//! change gate. SIGHUP re-reads the file through the same gate; SIGUSR1
//! prints the counters; SIGINT/SIGTERM exit and leave the data plane
//! forwarding, unless `--detach-on-exit`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use lb_common::maps::DataplaneConfig;
use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1},
    iterator::Signals,
};

use super::OutputFormat;
use crate::{
    config::{BackendConfig, MacAddr, join_problems},
    dataplane::{
        Capacities, Dataplane,
        pins::{self, PinDir},
    },
    gate::{self, InForce, Verdict},
    host, installed,
    installed::RecordDir,
    report::Report,
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
    #[arg(long, default_value = installed::DEFAULT_ROOT)]
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

const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(3);

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
        eprintln!("fulcrum: counters not printed: {e}");
    }
}

fn report(dataplane: &Dataplane, format: OutputFormat) {
    match dataplane.installed() {
        Some(state) => match Report::collect(dataplane, state) {
            Ok(report) => print_report(&report, format),
            Err(e) => eprintln!("fulcrum: reading the counters failed: {e:#}"),
        },
        None => eprintln!("fulcrum: nothing installed yet, no counters"),
    }
}

fn read_config(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))
}

/// Tells the operator what the gate decided; errors when it refused.
fn announce(verdict: &Verdict, what: &str) -> anyhow::Result<()> {
    match verdict {
        Verdict::Applied {
            plan, generation, ..
        } => {
            for problem in &plan.problems {
                eprintln!("fulcrum: {problem}");
            }
            for forced in &plan.forced {
                eprintln!(
                    "fulcrum: forced: {} {} {} ({})",
                    forced.location, forced.field, forced.value, forced.code
                );
            }
            eprintln!("fulcrum: {what}: applied and verified as generation {generation}");
            Ok(())
        }
        Verdict::Refused { problems, .. } => {
            bail!(
                "{what}: REFUSED, nothing changed: {}",
                join_problems(problems)
            )
        }
    }
}

/// Runs the controller until a signal stops it.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = read_config(&args.config)?;
    let first = InForce::new(text.clone());
    if !first.validation.is_valid() {
        bail!(
            "config {} is invalid (see `fulcrum validate`): {}",
            args.config.display(),
            join_problems(&first.validation.errors())
        );
    }
    for warning in &first.validation.problems {
        eprintln!("fulcrum: {warning}");
    }
    let config = first.validation.config.clone().expect("valid implies read");
    let Some(interface) = args.interface.clone().or(config.interface.clone()) else {
        bail!("no interface: set `interface` in the config or pass --interface");
    };
    host::require_bpf_privileges()?;
    host::require_interface(&interface)?;
    let mac_of = |backend: &BackendConfig| -> anyhow::Result<MacAddr> {
        match backend.mac {
            Some(mac) => Ok(mac),
            None => host::resolve_mac(backend.address, &interface, NEIGHBOUR_TIMEOUT),
        }
    };
    if host::ensure_bpffs()? {
        eprintln!("fulcrum: mounted bpffs at {}", host::BPFFS);
    }
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGHUP]).context("installing signal handlers")?;
    let (pins, records) = args.places.of(&interface);
    let (mut dataplane, mut in_force) = match Dataplane::adopt(&pins)? {
        Some(mut dataplane) => {
            let bank = dataplane.live_bank()?;
            let record = records.read(bank).context(
                "the pinned data plane has no installed record; `fulcrum detach` removes it",
            )?;
            let (_, state) = record.state()?;
            dataplane
                .adopt_state(state, bank, record.generation)
                .context("the kernel does not hold what the installed record says")?;
            eprintln!(
                "fulcrum: adopted the data plane attached to {interface} (pinned at {}): \
                 generation {}, {} VIPs; forwarding never stopped",
                pins.path().display(),
                record.generation,
                record.vips.len()
            );
            (dataplane, Some(InForce::new(record.config)))
        }
        None => (
            start_fresh(&args, &interface, &config, &pins, &records, &text, mac_of)?,
            None,
        ),
    };
    if in_force.as_ref().is_some_and(|f| f.text == text) {
        eprintln!("fulcrum: {} is what is installed", args.config.display());
    } else if let Some(current) = &in_force {
        // Adopted, and the file changed while no controller ran.
        let verdict = gate::apply(
            &mut dataplane,
            &records,
            Some(current),
            &text,
            args.force,
            mac_of,
        )?;
        match announce(&verdict, &args.config.display().to_string()) {
            Ok(()) => {
                if let Verdict::Applied { in_force: next, .. } = verdict {
                    in_force = Some(*next);
                }
            }
            Err(e) => eprintln!("fulcrum: {e:#}; the installed state stays in force"),
        }
    } else {
        in_force = Some(first);
    }
    let capacities = dataplane.capacities()?;
    eprintln!(
        "fulcrum: serving on {interface}; room for {} flows and {} backends; SIGHUP \
         re-reads {}, SIGUSR1 prints counters, SIGINT/SIGTERM exit",
        capacities.connection_table_size,
        capacities.max_backends,
        args.config.display()
    );
    for signal in signals.forever() {
        match signal {
            SIGUSR1 => report(&dataplane, args.stats_format),
            SIGHUP => {
                let reload = read_config(&args.config).and_then(|text| {
                    let verdict = gate::apply(
                        &mut dataplane,
                        &records,
                        in_force.as_ref(),
                        &text,
                        false,
                        mac_of,
                    )?;
                    announce(&verdict, &format!("SIGHUP: {}", args.config.display()))?;
                    Ok(verdict)
                });
                match reload {
                    Ok(Verdict::Applied { in_force: next, .. }) => in_force = Some(*next),
                    Ok(Verdict::Refused { .. }) => {}
                    Err(e) => eprintln!("fulcrum: {e:#}; the installed state stays in force"),
                }
            }
            _ => break,
        }
    }
    report(&dataplane, args.stats_format);
    if args.detach_on_exit {
        dataplane.detach()?;
        pins.remove()?;
        records.remove()?;
        eprintln!("fulcrum: detached from {interface} and removed its pins");
    } else {
        eprintln!(
            "fulcrum: exiting; the data plane stays attached to {interface} and keeps \
             forwarding (pinned at {}); `fulcrum detach --interface {interface}` removes it",
            pins.path().display()
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
    pins: &PinDir,
    records: &RecordDir,
    text: &str,
    mac_of: impl FnMut(&BackendConfig) -> anyhow::Result<MacAddr>,
) -> anyhow::Result<Dataplane> {
    let mut dataplane = Dataplane::load_with(Capacities {
        connection_table_size: config.connection_table_size,
        max_backends: config.max_backends,
    })?;
    dataplane.set_config(DataplaneConfig {
        if_mac: host::interface_mac(interface)?.0,
        pad: [0; 2],
    })?;
    let started = (|| {
        dataplane.pin(pins)?;
        let verdict = gate::apply(&mut dataplane, records, None, text, args.force, mac_of)?;
        announce(&verdict, &args.config.display().to_string())?;
        let mode = dataplane.attach(interface)?;
        dataplane.pin_link(pins)?;
        eprintln!(
            "fulcrum: attached to {interface} ({mode} XDP), pinned at {}",
            pins.path().display()
        );
        anyhow::Ok(())
    })();
    if let Err(e) = started {
        // Nothing half-made stays behind: no pins without a link.
        let _ = dataplane.detach();
        let _ = pins.remove();
        let _ = records.remove();
        return Err(e);
    }
    Ok(dataplane)
}
