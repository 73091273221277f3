//! The command line: one file per subcommand, all returning `anyhow` errors
//! that `main` prints as one line before exiting with status 1.

pub mod run;

use clap::{Parser, Subcommand};

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
    /// Load the XDP program, install a config and forward until SIGINT/SIGTERM.
    Run(run::RunArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run(args) => run::run(args),
        }
    }
}
