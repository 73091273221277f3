//! Builds the XDP programs (lb-ebpf) with aya-build and leaves their objects
//! (one per bin: the load balancer, the decapsulation, the bench object) in
//! OUT_DIR for `include_bytes_aligned!`. The BPF toolchain is a setting:
//! `FULCRUM_BPF_TOOLCHAIN`, else the Debian `debian-bpf` link when rustup
//! knows it, else `nightly` (which needs the rust-src component).

use std::process::Command;

use anyhow::{Context as _, bail};

const TOOLCHAIN_ENV: &str = "FULCRUM_BPF_TOOLCHAIN";

fn main() -> anyhow::Result<()> {
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
