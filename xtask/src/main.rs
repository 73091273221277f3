//! Fulcrum's developer commands, the ones the README names: `setup` installs
//! the toolchain, `test` runs every test, `lab` runs the namespace lab and
//! `bench` the benchmarks, `campaign` the randomized fault campaign, `dist`
//! the Debian package. All but `setup` run `setup` first.

mod dist;
mod setup;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

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
    /// Set up, build a release and pack it as a Debian package under
    /// target/dist.
    Dist,
    /// Set up, then run the randomized fault campaign for as long as asked.
    Campaign {
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// The seed to replay (default: from the clock; printed at start).
        #[arg(long)]
        seed: Option<u64>,
    },
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
            check_alert_rules()?;
            // The restart tests upgrade to a second build of `fulcrum`, made
            // from a different build input, as an operator's upgrade would be.
            cargo_with(
                &["build", "--profile", "ci", "-p", "lb-userspace", "--bins"],
                &[("FULCRUM_BUILD_NOTE", UPGRADE_NOTE)],
            )?;
            let dir = target_dir().join("ci");
            std::fs::copy(dir.join("fulcrum"), dir.join("fulcrum-upgrade"))
                .context("keeping the upgrade build as target/ci/fulcrum-upgrade")?;
            // The end-to-end tests run the real `fulcrum` binary. The `ci`
            // profile is release with overflow checks on.
            cargo(&["build", "--profile", "ci", "-p", "lb-userspace", "--bins"])?;
            // The package test installs what this build packs.
            dist::package(&dir.join("fulcrum"), &dir.join("dist"))?;
            // Host tests (no root, no kernel) run in parallel; the kernel
            // and namespace tests one at a time, as their labs share the
            // machine's CPUs and BPF.
            cargo_test(&[
                "test",
                "--workspace",
                "--exclude",
                "lb-tests",
                "--profile",
                "ci",
            ])?;
            cargo_test(&[
                "test",
                "-p",
                "lb-tests",
                "--profile",
                "ci",
                "--",
                "--test-threads=1",
            ])
        }
        Task::Lab { args } => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "lb-userspace"])?;
            let mut cmd = vec!["run", "--release", "-p", "lb-tests", "--bin", "lab", "--"];
            cmd.extend(args.iter().map(String::as_str));
            cargo(&cmd)
        }
        Task::Bench => {
            setup::run()?;
            cargo(&["bench", "-p", "lb-tests", "--bench", "dataplane"])?;
            // The apply bench drives the real `fulcrum` binary.
            cargo(&["build", "--release", "-p", "lb-userspace", "--bins"])?;
            cargo(&["bench", "-p", "lb-tests", "--bench", "apply"])?;
            cargo(&["bench", "-p", "lb-tests", "--bench", "metrics"])?;
            cargo(&["bench", "-p", "lb-userspace", "--bench", "control_plane"])
        }
        Task::Dist => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "lb-userspace", "--bins"])?;
            let dir = target_dir().join("release");
            let deb = dist::package(&dir.join("fulcrum"), &target_dir().join("dist"))?;
            eprintln!("xtask: built {}", deb.display());
            Ok(())
        }
        Task::Campaign { seconds, seed } => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "lb-userspace", "--bins"])?;
            let seconds = seconds.to_string();
            let seed = seed.map(|s| s.to_string());
            let mut env = vec![("FULCRUM_CAMPAIGN_SECONDS", seconds.as_str())];
            if let Some(seed) = &seed {
                env.push(("FULCRUM_CAMPAIGN_SEED", seed.as_str()));
            }
            cargo_with(
                &[
                    "test",
                    "--release",
                    "-p",
                    "lb-tests",
                    "--test",
                    "campaign",
                    "--",
                    "--nocapture",
                ],
                &env,
            )
        }
    }
}

/// The cargo that runs us, with the toolchain's bin dir on PATH.
fn cargo_command(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(args).env("PATH", setup::tool_path());
    command
}

fn check_status(args: &[&str], status: std::process::ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs cargo with `args`.
fn cargo(args: &[&str]) -> Result<()> {
    cargo_with(args, &[])
}

/// Runs cargo with `args` and extra environment variables.
fn cargo_with(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let status = cargo_command(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    check_status(args, status)
}

/// `promtool check rules` and `promtool test rules` on the shipped alert
/// rules and their unit tests.
fn check_alert_rules() -> Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        ["check", "rules", "fulcrum-rules.yml"],
        ["test", "rules", "fulcrum-rules.test.yml"],
    ] {
        let status = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .status()
            .context("running promtool (from Debian's prometheus package)")?;
        if !status.success() {
            bail!("`promtool {}` failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

/// Cargo's target directory for this workspace.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        Into::into,
    )
}

/// The build note of the second `fulcrum` build the restart tests upgrade to.
const UPGRADE_NOTE: &str = "upgrade-test";

/// Runs `cargo test`, echoing its output, and closes with one line that
/// totals every test binary's result (the last binary alone is often an
/// empty doc-test run).
fn cargo_test(args: &[&str]) -> Result<()> {
    let mut child = cargo_command(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count_before(result, " passed");
            failed += count_before(result, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("summary: {passed} passed, {failed} failed");
    check_status(args, status)
}

/// The number just before `label` in a `test result:` line.
fn count_before(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
