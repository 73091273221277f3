//! Toolchain setup for building the XDP program, idempotent and quick when
//! everything is present. On Debian: the `rustc-web` packages (rustc 1.96
//! with a prebuilt BPF `core`), LLVM 22 for bpf-linker, the `debian-bpf`
//! rustup link, and bpf-linker itself. Elsewhere it explains the nightly
//! route instead of failing obscurely.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// Debian packages the build, the tests and the lab need.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "ethtool",
    // The monitoring tests: a real Prometheus and promtool for the alert
    // rules, and tmux for `fulcrum top` in a real terminal.
    "prometheus",
    "tmux",
    // The ECMP scale-out test: BIRD announces VIPs over BGP.
    "bird2",
    // The trace test reads `fulcrum trace --pcap`'s file back with tcpdump.
    "tcpdump",
    // The shipped unit is checked with systemd-analyze, the package with
    // lintian.
    "systemd",
    "lintian",
];
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const TOOLCHAIN: &str = "debian-bpf";

/// PATH with cargo's bin directory and LLVM 22 in front.
pub fn tool_path() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let old = std::env::var("PATH").unwrap_or_default();
    format!("{home}/.cargo/bin:{LLVM_BIN}:{old}")
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .env("PATH", tool_path())
        .output()
        .is_ok_and(|out| out.status.success())
}

fn exec(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .env("PATH", tool_path())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

const NON_DEBIAN_HELP: &str = "\
this host has no apt-get, so setup cannot install the BPF toolchain itself.
Install it the standard way, then run this command again:
  rustup toolchain install nightly --component rust-src
  cargo install bpf-linker
  export FULCRUM_BPF_TOOLCHAIN=nightly
and install iproute2 and ethtool with your package manager.";

/// Installs whatever is missing.
pub fn run() -> Result<()> {
    if !succeeds("rustup", &["--version"]) {
        bail!(
            "rustup is not on PATH (looked in ~/.cargo/bin too); the eBPF build runs \
             `rustup run <toolchain>`: install rustup first"
        );
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if !missing.is_empty() {
        if !Path::new("/usr/bin/apt-get").exists() {
            bail!("{NON_DEBIAN_HELP}");
        }
        eprintln!("setup: installing {}", missing.join(" "));
        exec("apt-get", &["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        exec("apt-get", &args)?;
    }
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .env("PATH", tool_path())
        .output()
        .context("rustup toolchain list")?;
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with(TOOLCHAIN))
    {
        eprintln!("setup: linking the {TOOLCHAIN} toolchain to /usr");
        exec("rustup", &["toolchain", "link", TOOLCHAIN, "/usr"])?;
    }
    if !succeeds("bpf-linker", &["--version"]) {
        eprintln!("setup: installing bpf-linker (about a minute)");
        exec(
            "cargo",
            &[
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ],
        )?;
    }
    Ok(())
}
