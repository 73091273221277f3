//! `fulcrum`: the command-line entry point. Errors print as one line and
//! exit with status 1.

use clap::Parser as _;
use lb_userspace::cli::Cli;

fn main() {
    if let Err(err) = Cli::parse().execute() {
        eprintln!("fulcrum: {err:#}");
        std::process::exit(1);
    }
}
