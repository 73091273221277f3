//! Fulcrum's developer commands, the ones the README names: `setup` installs
//! the toolchain, `test` runs every test, `lab` runs the namespace lab and
//! `bench` the benchmarks. `test`, `lab` and `bench` run `setup` first.

mod setup;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Fulcrum developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the Debian packages, the debian-bpf toolchain link and bpf-linker.
    Setup,
    /// Set up, then run every test (needs root: tests load XDP programs).
    Test,
    /// Set up, then run the namespace lab: traffic through the real XDP program.
    Lab {
        /// Extra arguments for the lab (see `--help` after `--`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, then run the benchmarks.
    Bench,
}

fn main() {
    if let Err(err) = run(Cli::parse().command) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Test => {
            setup::run()?;
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&["test", "--workspace", "--release", "--", "--test-threads=1"])
        }
        Task::Lab { args } => {
            setup::run()?;
            let mut cmd = vec!["run", "--release", "-p", "lb-tests", "--bin", "lab", "--"];
            cmd.extend(args.iter().map(String::as_str));
            cargo(&cmd)
        }
        Task::Bench => {
            setup::run()?;
            cargo(&["bench", "-p", "lb-tests", "--bench", "dataplane"])
        }
    }
}

/// Runs the cargo that runs us, with the toolchain's bin dir on PATH.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .env("PATH", setup::tool_path())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
