//! The command line: one file per subcommand, all returning `anyhow` errors
//! that `main` prints as one line before exiting with status 1.

pub mod detach;
pub mod plan;
pub mod run;
pub mod validate;

use std::path::Path;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    problem::Problem,
    validate::{Validation, validate},
};

/// How results are printed.
#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// For machines.
    Json,
}

/// Fulcrum: an XDP layer-4 load balancer.
#[derive(Parser)]
#[command(name = "fulcrum", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the controller: adopt or load the pinned data plane and apply the config.
    Run(run::RunArgs),
    /// Detach the data plane from an interface and remove its pins.
    Detach(detach::DetachArgs),
    /// Check a config file and report every problem in it.
    Validate(validate::ValidateArgs),
    /// Show what applying a config would change, and whether the guards allow it.
    Plan(plan::PlanArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::run(args),
            Command::Detach(args) => detach::run(args),
            Command::Validate(args) => validate::run(args),
            Command::Plan(args) => plan::run(args),
        }
    }
}

/// Reads and validates a config file. A file that cannot be read is one
/// more problem of the outcome, so every outcome can be reported the same
/// way (JSON consumers always get a document).
pub fn load_config(path: &Path) -> Validation {
    match std::fs::read_to_string(path) {
        Ok(text) => validate(&text),
        Err(why) => Validation {
            config: None,
            problems: vec![Problem::error(
                "unreadable-file",
                path.display().to_string(),
                "",
                "",
                format!("cannot read the config: {why}"),
            )],
            tables: Vec::new(),
        },
    }
}
