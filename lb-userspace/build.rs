//! Builds the XDP programs (lb-ebpf) with aya-build and leaves their objects
//! (one per bin: the load balancer, the decapsulation, the bench object) in
//! OUT_DIR for `include_bytes_aligned!`. The BPF toolchain is a setting:
//! `FULCRUM_BPF_TOOLCHAIN`, else the Debian `debian-bpf` link when rustup
//! knows it, else `nightly` (which needs the rust-src component). It also
//! records the git commit built (`FULCRUM_GIT_COMMIT`, which a build from a
//! source tarball sets itself; `unknown` when neither says) for
//! `fulcrum --version`.

use std::process::Command;

use anyhow::{Context as _, bail};

const TOOLCHAIN_ENV: &str = "FULCRUM_BPF_TOOLCHAIN";

const COMMIT_ENV: &str = "FULCRUM_GIT_COMMIT";

/// Runs git in this crate's directory; its output, if it succeeded.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    output.status.success().then(|| text.trim().to_string())
}

/// The commit being built, and a build again when HEAD moves.
fn record_commit() {
    println!("cargo:rerun-if-env-changed={COMMIT_ENV}");
    let commit = std::env::var(COMMIT_ENV).ok().or_else(|| {
        let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
            println!("cargo:rerun-if-changed={dir}/HEAD");
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                println!("cargo:rerun-if-changed={dir}/{branch}");
            }
        }
        Some(commit)
    });
    println!(
        "cargo:rustc-env={COMMIT_ENV}={}",
        commit.as_deref().unwrap_or("unknown")
    );
}

fn main() -> anyhow::Result<()> {
    record_commit();
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_ENV}");
    let listed = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context(
            "rustup is not on PATH; the eBPF build needs it (run `cargo xtask setup`, \
             and make sure ~/.cargo/bin is on PATH)",
        )?;
    let toolchains = String::from_utf8_lossy(&listed.stdout);
    let toolchain = match std::env::var(TOOLCHAIN_ENV) {
        Ok(name) => name,
        Err(_) if toolchains.lines().any(|l| l.starts_with("debian-bpf")) => "debian-bpf".into(),
        Err(_) => "nightly".into(),
    };
    if !toolchains.lines().any(|l| l.starts_with(&toolchain)) {
        bail!(
            "the BPF toolchain `{toolchain}` is not installed; run `cargo xtask setup` \
             (or set {TOOLCHAIN_ENV} to a toolchain with BPF `core`)"
        );
    }
    let ebpf = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(&toolchain))
        .context("building the XDP program (lb-ebpf)")
}
