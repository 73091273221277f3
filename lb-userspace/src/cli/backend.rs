//! `fulcrum backend add|remove|drain|set-weight VIP BACKEND ...`: one
//! backend change, made by the daemon on the config in force and taken
//! through the same gate as `apply`.

use std::time::{Duration, Instant};

use super::{
    apply::change_text,
    client::{Connection, NO_BODY},
    watch::WatchArg,
};
use crate::daemon::{
    edit::Action,
    wire::{self, BackendRequest, StatusAnswer},
};
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

/// How long `drain --wait` waits unless `--timeout` says otherwise.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// Arguments of `fulcrum backend`.
#[derive(Args)]
pub struct BackendArgs {
    /// The change.
    #[command(subcommand)]
    pub action: BackendAction,
    /// Override the guards (each override is recorded in the journal).
    #[arg(long, global = true)]
    pub force: bool,
    /// Refuse unless the generation in force is N.
    #[arg(long, global = true, value_name = "N")]
    pub if_generation: Option<u64>,
    /// Watch the change, and wait for the verdict.
    #[command(flatten)]
    pub watch: WatchArg,
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

/// The VIP and backend a change is about.
#[derive(Args)]
pub struct Target {
    /// The VIP: its name, or ADDRESS:PORT/PROTOCOL.
    pub vip: String,
    /// The backend: its name or address (for `add`: its address).
    pub backend: String,
}

/// The backend changes.
#[derive(Subcommand)]
pub enum BackendAction {
    /// Add a backend.
    Add {
        /// The VIP and the backend.
        #[command(flatten)]
        target: Target,
        /// Its weight (default 1).
        #[arg(long)]
        weight: Option<u32>,
        /// Its name.
        #[arg(long)]
        name: Option<String>,
        /// Its MAC (else found in the neighbour table).
        #[arg(long)]
        mac: Option<String>,
        /// Its port (default: the VIP's).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Remove a backend.
    Remove {
        /// The VIP and the backend.
        #[command(flatten)]
        target: Target,
    },
    /// Set a backend's weight to 0: no new flows; established ones continue.
    Drain {
        /// The VIP and the backend.
        #[command(flatten)]
        target: Target,
        /// Then wait until the backend's active flows reach zero, printing
        /// the count (on stderr) as it falls, for at most `--timeout`
        /// seconds (default 300).
        #[arg(long)]
        wait: bool,
    },
    /// Set a backend's weight.
    SetWeight {
        /// The VIP and the backend.
        #[command(flatten)]
        target: Target,
        /// The new weight.
        weight: u32,
    },
}

/// Sends the change and prints the verdict.
pub fn run(args: BackendArgs) -> anyhow::Result<()> {
    let (action, target, weight) = match &args.action {
        BackendAction::Add { target, weight, .. } => (Action::Add, target, *weight),
        BackendAction::Remove { target } => (Action::Remove, target, None),
        BackendAction::Drain { target, .. } => (Action::Drain, target, None),
        BackendAction::SetWeight { target, weight } => (Action::SetWeight, target, Some(*weight)),
    };
    let (name, mac, port) = match &args.action {
        BackendAction::Add {
            target,
            name,
            mac,
            port,
            ..
        } => {
            // Checked here, before the daemon is asked.
            target.backend.parse::<std::net::IpAddr>().map_err(|_| {
                anyhow::anyhow!(
                    "fulcrum backend add: {:?} is not an IP address (the new backend's address)",
                    target.backend
                )
            })?;
            if let Some(mac) = mac {
                mac.parse::<crate::config::MacAddr>()
                    .map_err(|e| anyhow::anyhow!("fulcrum backend add: --mac: {e}"))?;
            }
            (name.clone(), mac.clone(), *port)
        }
        _ => (None, None, None),
    };
    let verb = action.verb();
    let request = BackendRequest {
        action,
        vip: target.vip.clone(),
        backend: target.backend.clone(),
        weight,
        name,
        mac,
        port,
        force: args.force,
        if_generation: args.if_generation,
        watch_s: args.watch.watch_s(),
    };
    let answer = args
        .connection
        .request(wire::BACKEND, Some(&request))
        .with_context(|| format!("fulcrum backend {verb}"))?;
    args.connection.finish(&answer, change_text)?;
    args.watch.wait(&args.connection, &answer)?;
    if let BackendAction::Drain { target, wait: true } = &args.action {
        let limit = args.connection.timeout.unwrap_or(DRAIN_TIMEOUT);
        wait_drained(&args.connection, target, limit)?;
    }
    Ok(())
}

/// The backend's active flows, from `status`.
fn active_flows(connection: &Connection, target: &Target) -> anyhow::Result<u64> {
    let answer = connection.call(wire::STATUS, NO_BODY)?;
    anyhow::ensure!(answer.ok(), "fulcrum status: {}", answer.reason());
    let status: StatusAnswer = answer.read()?;
    let vip = status
        .report
        .vips
        .iter()
        .find(|v| v.name == target.vip || v.endpoint == target.vip)
        .with_context(|| format!("no VIP {} in status", target.vip))?;
    let backend = vip
        .backends
        .iter()
        .find(|b| {
            let address = b.address.as_str();
            b.name == target.backend
                || address == target.backend
                || address
                    .rsplit_once(':')
                    .is_some_and(|(ip, _)| ip.trim_matches(['[', ']']) == target.backend)
        })
        .with_context(|| {
            format!(
                "no backend {} of VIP {} in status",
                target.backend, target.vip
            )
        })?;
    backend
        .active_flows
        .context("status does not count active flows")
}

/// Polls until the backend has no active flow, or `timeout` passes.
fn wait_drained(connection: &Connection, target: &Target, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = None;
    loop {
        let flows = active_flows(connection, target)?;
        if last != Some(flows) {
            crate::note!("{}: {flows} active flows", target.backend);
            last = Some(flows);
        }
        if flows == 0 {
            crate::note!(
                "{} is drained ({:.0} s)",
                target.backend,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() >= timeout {
            bail!(
                "{} still has {flows} active flows after {} s; its established flows go on \
                 (a flow counts while it sent a packet in the last minute and was not closed)",
                target.backend,
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
