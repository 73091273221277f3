//! `fulcrum apply FILE`: sends a whole config to the daemon on its `[api]
//! socket` (or `--socket`), which takes it through the gate (validate, plan against what is installed, guards,
//! build, stage, verify, go live in one step) and writes it back to its
//! config file before answering; with `--watch`, waits for the watch's
//! verdict.

use std::path::PathBuf;

use super::{client::Connection, watch::WatchArg};
use crate::{
    config::Config,
    daemon::wire::{self, ApplyRequest, ChangeAnswer},
    problem::Problem,
};
use anyhow::Context as _;
use clap::Args;

/// Arguments of `fulcrum apply`.
#[derive(Args)]
pub struct ApplyArgs {
    /// The config to apply (TOML).
    pub file: PathBuf,
    /// Override the guards (each override is recorded in the journal).
    #[arg(long)]
    pub force: bool,
    /// Refuse unless the generation in force is N (from `fulcrum status`).
    #[arg(long, value_name = "N")]
    pub if_generation: Option<u64>,
    /// Watch the change, and wait for the verdict.
    #[command(flatten)]
    pub watch: WatchArg,
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

/// The text of a change's outcome: applied (with overrides and warnings) or
/// refused (with every reason).
pub fn change_text(answer: &ChangeAnswer) -> String {
    let lines = |problems: &Option<Vec<Problem>>, prefix: &str| {
        problems
            .iter()
            .flatten()
            .map(|p| format!("{prefix}{p}\n"))
            .collect::<String>()
    };
    if answer.applied {
        // Overrides are listed once, as `forced:`, not again as warnings.
        let warnings = answer.warnings.as_ref().map(|warnings| {
            warnings
                .iter()
                .filter(|p| !p.message.ends_with("overridden by --force"))
                .cloned()
                .collect()
        });
        format!(
            "{}{}applied and verified as generation {}\n",
            lines(&warnings, ""),
            lines(&answer.forced, "forced: "),
            answer.generation
        )
    } else if answer.problems.is_some() {
        format!("{}REFUSED: nothing changed\n", lines(&answer.problems, ""))
    } else {
        String::new()
    }
}

/// Sends the config and prints the verdict.
pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let config = crate::config::read_file(&args.file)
        .with_context(|| format!("reading config {}", args.file.display()))
        .map_err(|e| args.connection.fail(e))?;
    // The daemon the config is for (a config that cannot be read at all
    // goes to the default one, which says why it refuses it).
    let connection = match Config::read(&config) {
        (Some(read), _) => args.connection.unless_given(read.api.socket),
        (None, _) => args.connection.clone(),
    };
    let request = ApplyRequest {
        config,
        force: args.force,
        if_generation: args.if_generation,
        watch_s: args.watch.watch_s(),
    };
    let answer = connection
        .request(wire::APPLY, Some(&request))
        .context("fulcrum apply")?;
    connection.finish(&answer, change_text)?;
    args.watch.wait(&connection, &answer)
}
