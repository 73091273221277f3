//! The Debian package: `fulcrum` built, staged as it installs (the binary,
//! the systemd unit and tmpfiles entry, man pages and shell completions
//! made by the binary itself, the example config, the README and the book,
//! the dashboard and the alert rules) and packed with `dpkg-deb`. Nothing
//! is enabled or started on install: the service needs a config first.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The package's name.
const NAME: &str = "fulcrum";
/// Who answers for it.
const MAINTAINER: &str = "Fulcrum developers <fulcrum@packages.invalid>";

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program args`, failing with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Copies `from` to `to` (relative to the staged root), with `mode`.
fn put(stage: &Path, from: &Path, to: &str, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(stage, to, bytes, mode)
}

/// Writes `bytes` to `to` (relative to the staged root), with `mode`.
fn write(stage: &Path, to: &str, bytes: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let target = stage.join(to);
    fs::create_dir_all(target.parent().context("a file's directory")?)?;
    fs::write(&target, bytes).with_context(|| format!("writing {to}"))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Compresses `path` in place (`path.gz`), as Debian wants man pages and
/// changelogs: reproducibly (`-n`), at most.
fn gzip(path: &Path) -> Result<()> {
    run("gzip", &["-9nf", &path.display().to_string()]).map(drop)
}

/// The Debian changelog of this version.
fn changelog(version: &str) -> String {
    format!(
        "{NAME} ({version}) unstable; urgency=medium\n\n  * Release {version}.\n\n \
         -- {MAINTAINER}  Sat, 05 Dec 2026 00:00:00 +0000\n"
    )
}

/// `debian/copyright` in the machine-readable format, for the licences
/// Cargo.toml names: MIT in full, Apache-2.0 by Debian's common copy.
fn copyright() -> Result<String> {
    let mit = fs::read_to_string(root().join("LICENSE-MIT"))?;
    let indent = |text: &str| -> String {
        text.lines()
            .map(|l| {
                if l.trim().is_empty() {
                    " .\n".to_string()
                } else {
                    format!(" {l}\n")
                }
            })
            .collect()
    };
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: fulcrum\n\n\
         Files: *\nCopyright: 2026 The Fulcrum developers\nLicense: MIT or Apache-2.0\n\n\
         License: MIT\n{}\nLicense: Apache-2.0\n \
         On Debian systems, the complete text of the Apache License, Version 2.0\n \
         can be found in /usr/share/common-licenses/Apache-2.0.\n",
        indent(&mit)
    ))
}

/// After install: systemd learns of the unit and makes the BIRD include
/// file; nothing is enabled or started.
const POSTINST: &str = "#!/bin/sh\nset -e\n\
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n\
\tsystemctl --system daemon-reload >/dev/null || true\n\
\tsystemd-tmpfiles --create fulcrum.conf >/dev/null || true\n\
fi\n";

/// After removal: systemd forgets the unit.
const POSTRM: &str = "#!/bin/sh\nset -e\n\
if [ -d /run/systemd/system ]; then\n\
\tsystemctl --system daemon-reload >/dev/null || true\n\
fi\n";

/// Builds `out/fulcrum_VERSION_ARCH.deb` from `binary`; returns its path.
pub fn package(binary: &Path, out: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = run("dpkg", &["--print-architecture"])?.trim().to_string();
    let stage = out.join(format!("{NAME}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let repo = root();
    put(&stage, binary, "usr/bin/fulcrum", 0o755)?;
    // As dh_strip would: no debug information in the package.
    run(
        "strip",
        &[
            "--strip-unneeded",
            &stage.join("usr/bin/fulcrum").display().to_string(),
        ],
    )?;
    put(
        &stage,
        &repo.join("deploy/systemd/fulcrum.service"),
        "lib/systemd/system/fulcrum.service",
        0o644,
    )?;
    put(
        &stage,
        &repo.join("deploy/systemd/fulcrum-tmpfiles.conf"),
        "usr/lib/tmpfiles.d/fulcrum.conf",
        0o644,
    )?;
    // Made by the binary from its own parser.
    let man = stage.join("usr/share/man/man1");
    let binary = binary.display().to_string();
    run(&binary, &["manpages", &man.display().to_string()])?;
    for page in fs::read_dir(&man)? {
        gzip(&page?.path())?;
    }
    for (shell, to) in [
        ("bash", "usr/share/bash-completion/completions/fulcrum"),
        ("zsh", "usr/share/zsh/vendor-completions/_fulcrum"),
        ("fish", "usr/share/fish/vendor_completions.d/fulcrum.fish"),
    ] {
        write(&stage, to, run(&binary, &["completions", shell])?, 0o644)?;
    }
    let doc = "usr/share/doc/fulcrum";
    put(
        &stage,
        &repo.join("README.md"),
        &format!("{doc}/README.md"),
        0o644,
    )?;
    for entry in fs::read_dir(repo.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_name().context("a name")?.to_string_lossy();
            put(&stage, &path, &format!("{doc}/book/{name}"), 0o644)?;
        }
    }
    put(
        &stage,
        &repo.join("examples/fulcrum.toml"),
        &format!("{doc}/examples/fulcrum.toml"),
        0o644,
    )?;
    write(&stage, &format!("{doc}/copyright"), copyright()?, 0o644)?;
    write(
        &stage,
        &format!("{doc}/changelog"),
        changelog(version),
        0o644,
    )?;
    gzip(&stage.join(format!("{doc}/changelog")))?;
    put(
        &stage,
        &repo.join("deploy/grafana/fulcrum-dashboard.json"),
        "usr/share/fulcrum/grafana/fulcrum-dashboard.json",
        0o644,
    )?;
    put(
        &stage,
        &repo.join("deploy/prometheus/fulcrum-rules.yml"),
        "usr/share/fulcrum/prometheus/fulcrum-rules.yml",
        0o644,
    )?;
    let size_kib = run(
        "du",
        &["-sk", "--exclude=DEBIAN", &stage.display().to_string()],
    )?
    .split_whitespace()
    .next()
    .context("du's answer")?
    .to_string();
    let control = format!(
        "Package: {NAME}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {size_kib}\nDepends: libc6 (>= 2.34), libgcc-s1\n\
         Suggests: bird2, prometheus\nSection: net\nPriority: optional\n\
         Description: XDP layer-4 load balancer with guarded, verified changes\n \
         Fulcrum spreads TCP and UDP flows for virtual IPs over backends with\n \
         weighted Maglev consistent hashing in an XDP program. Its controller\n \
         refuses configs that would concentrate traffic, shows each change's\n \
         plan, swaps tables atomically, verifies what the kernel holds, checks\n \
         backend health and exports per-backend counters to Prometheus.\n"
    );
    write(&stage, "DEBIAN/control", control, 0o644)?;
    write(&stage, "DEBIAN/postinst", POSTINST, 0o755)?;
    write(&stage, "DEBIAN/postrm", POSTRM, 0o755)?;
    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    run(
        "dpkg-deb",
        &[
            "--build",
            "--root-owner-group",
            &stage.display().to_string(),
            &deb.display().to_string(),
        ],
    )?;
    Ok(deb)
}
