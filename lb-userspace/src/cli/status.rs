//! `fulcrum status`: what the daemon has installed: the interface, the
//! generation, and per VIP each backend's weight, table share, observed
//! share and counters.

use super::client::{Connection, NO_BODY};
use crate::daemon::wire::{self, StatusAnswer};
use anyhow::Context as _;
use clap::Args;

/// Arguments of `fulcrum status`.
#[derive(Args)]
pub struct StatusArgs {
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

fn text(status: &StatusAnswer) -> String {
    let attached = match (&status.report.xdp_mode, status.report.attached) {
        (Some(mode), true) => format!("attached, {mode} XDP"),
        (None, true) => "attached".into(),
        (_, false) => "NOT attached".into(),
    };
    let header = format!(
        "interface {} ({attached}), generation {}, config {}\n",
        status.interface, status.report.generation, status.config,
    );
    let watch = match &status.watch {
        Some(w) if w.state == "watching" => format!(
            "WATCHING generation {} ({}): {} s left; it is rolled back if it makes {} worse\n",
            w.generation,
            w.source,
            w.left_s.unwrap_or(0),
            w.vips.join(", ")
        ),
        Some(w) => format!(
            "last watch: generation {} ({}): {}\n{}",
            w.generation,
            w.source,
            w.state,
            w.evidence
                .iter()
                .map(|line| format!("  {line}\n"))
                .collect::<String>()
        ),
        None => String::new(),
    };
    header + &watch + &status.report.to_text()
}

/// Asks the daemon and prints the answer.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let answer = args
        .connection
        .request(wire::STATUS, NO_BODY)
        .context("fulcrum status")?;
    args.connection.finish(&answer, text)
}
