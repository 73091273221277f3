//! `fulcrum run`: check privileges and inputs, mount bpffs, load the XDP
//! program, install the config's VIPs and verify the kernel holds them, and
//! only then attach (native, else generic). Prints the counters on SIGUSR1;
//! detaches and prints them a last time on SIGINT or SIGTERM.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;
use lb_common::maps::DataplaneConfig;
use signal_hook::{
    consts::{SIGINT, SIGTERM, SIGUSR1},
    iterator::Signals,
};

use super::OutputFormat;
use crate::{
    config::join_problems,
    dataplane::{Capacities, Dataplane},
    host,
    plan::plan,
    report::Report,
    state::DesiredState,
    validate::validate,
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
}

const NEIGHBOUR_TIMEOUT: Duration = Duration::from_secs(3);

fn print_report(report: &Report, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Text => print!("{}", report.to_text()),
        OutputFormat::Json => println!("{}", serde_json::to_string(report)?),
    }
    Ok(())
}

/// Runs the data plane until a signal stops it.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading config {}", args.config.display()))?;
    let validation = validate(&text);
    if !validation.is_valid() {
        bail!(
            "config {} is invalid (see `fulcrum validate`): {}",
            args.config.display(),
            join_problems(&validation.errors())
        );
    }
    // Every path that applies a config goes through the plan's gate; from
    // nothing installed it judges by the config's own guards and warns
    // where they are looser than the defaults.
    let planned = plan(None, validation.side().expect("valid implies read"), false);
    for warning in validation.problems.iter().chain(&planned.problems) {
        eprintln!("fulcrum: {warning}");
    }
    if !planned.accepted() {
        bail!("plan refused: {}", join_problems(&planned.problems));
    }
    let config = validation.config.expect("valid implies read");
    let Some(interface) = args.interface.or(config.interface.clone()) else {
        bail!("no interface: set `interface` in the config or pass --interface");
    };
    host::require_bpf_privileges()?;
    host::require_interface(&interface)?;
    let state = DesiredState::build(&config, |backend| match backend.mac {
        Some(mac) => Ok(mac),
        None => host::resolve_mac(backend.address, &interface, NEIGHBOUR_TIMEOUT),
    })?;
    if host::ensure_bpffs()? {
        eprintln!("fulcrum: mounted bpffs at {}", host::BPFFS);
    }
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGUSR1]).context("installing signal handlers")?;
    let mut dataplane = Dataplane::load_with(Capacities {
        connection_table_size: config.connection_table_size,
        max_backends: config.max_backends,
    })?;
    dataplane.set_config(DataplaneConfig {
        if_mac: host::interface_mac(&interface)?.0,
        pad: [0; 2],
    })?;
    dataplane.install(&state)?;
    let mode = dataplane.attach(&interface)?;
    let backends: usize = state.vips.iter().map(|v| v.backends.len()).sum();
    let capacities = dataplane.capacities()?;
    eprintln!(
        "fulcrum: attached to {interface} ({mode} XDP); {} VIPs and {backends} backends \
         installed and verified; room for {} flows and {} backends; SIGUSR1 prints \
         counters, SIGINT/SIGTERM detaches",
        state.vips.len(),
        capacities.connection_table_size,
        capacities.max_backends
    );
    for signal in signals.forever() {
        if signal == SIGUSR1 {
            print_report(&Report::collect(&dataplane, &state)?, args.stats_format)?;
            continue;
        }
        break;
    }
    dataplane.detach()?;
    eprintln!("fulcrum: detached from {interface}");
    print_report(&Report::collect(&dataplane, &state)?, args.stats_format)
}
