//! `fulcrum`: the command-line entry point. Errors print as one line and
//! exit with status 1, or 78 (`EX_CONFIG`) when `fulcrum run` was refused
//! for its config.

use clap::Parser as _;
use lb_userspace::cli::{Cli, exit_code};

fn main() {
    if let Err(err) = Cli::parse().execute() {
        eprintln!("fulcrum: {err:#}");
        std::process::exit(exit_code(&err));
    }
}
