//! The Debian package, as an operator gets it: installed with dpkg into a
//! scratch root, it holds the binary of this build, the systemd unit and
//! tmpfiles entry as shipped, a man page for every verb, shell
//! completions, the example config, the docs, the dashboard and the alert
//! rules; lintian has nothing to say of it; and it removes without a trace.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use lb_tests::{lab::package_near_tests, scratch::Scratch};

/// Runs `program args`; returns stdout, failing with stderr.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `dpkg` on the scratch root, as the package's installer.
fn dpkg(root: &Path, args: &[&str]) -> String {
    let root = format!("--root={}", root.display());
    let mut all = vec![
        root.as_str(),
        "--force-script-chrootless",
        "--force-depends",
        "--log=/dev/null",
    ];
    all.extend_from_slice(args);
    run("dpkg", &all)
}

/// The repository file `path`.
fn shipped(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_package_installs_what_an_operator_needs_and_removes_cleanly() {
    let deb = package_near_tests().expect("the package");
    let deb = deb.to_str().expect("a UTF-8 path");
    let root = Scratch::new("pkg");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.0.join(dir)).expect("dpkg's directories");
    }
    std::fs::write(root.0.join("var/lib/dpkg/status"), "").expect("dpkg's status");
    dpkg(&root.0, &["-i", deb]);
    let status = dpkg(&root.0, &["-s", "fulcrum"]);
    assert!(status.contains("Status: install ok installed"), "{status}");
    let at = |path: &str| root.0.join(path);

    // The binary runs, and is this build.
    let version = run(at("usr/bin/fulcrum").to_str().unwrap(), &["--version"]);
    assert!(
        version.starts_with(&format!("fulcrum {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // The files as shipped in the repository.
    for (installed, source) in [
        (
            "lib/systemd/system/fulcrum.service",
            "deploy/systemd/fulcrum.service",
        ),
        (
            "usr/lib/tmpfiles.d/fulcrum.conf",
            "deploy/systemd/fulcrum-tmpfiles.conf",
        ),
        (
            "usr/share/fulcrum/grafana/fulcrum-dashboard.json",
            "deploy/grafana/fulcrum-dashboard.json",
        ),
        (
            "usr/share/fulcrum/prometheus/fulcrum-rules.yml",
            "deploy/prometheus/fulcrum-rules.yml",
        ),
        (
            "usr/share/doc/fulcrum/examples/fulcrum.toml",
            "examples/fulcrum.toml",
        ),
        ("usr/share/doc/fulcrum/README.md", "README.md"),
        ("usr/share/doc/fulcrum/book/runbook.md", "docs/runbook.md"),
    ] {
        let got =
            std::fs::read_to_string(at(installed)).unwrap_or_else(|e| panic!("{installed}: {e}"));
        assert!(
            got == shipped(source),
            "{installed} is not {source} as in the repository"
        );
    }
    // A man page for the command and for every verb it lists.
    let help = run(at("usr/bin/fulcrum").to_str().unwrap(), &["--help"]);
    let verbs: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a command list")
        .lines()
        .skip(1)
        .map_while(|line| line.strip_prefix("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|verb| *verb != "help")
        .collect();
    assert!(verbs.len() >= 10, "{verbs:?}");
    for page in
        std::iter::once("fulcrum".to_string()).chain(verbs.iter().map(|v| format!("fulcrum-{v}")))
    {
        let path = at(&format!("usr/share/man/man1/{page}.1.gz"));
        assert!(path.is_file(), "no man page {page}");
    }
    for (completion, says) in [
        (
            "usr/share/bash-completion/completions/fulcrum",
            "_fulcrum()",
        ),
        (
            "usr/share/zsh/vendor-completions/_fulcrum",
            "#compdef fulcrum",
        ),
        (
            "usr/share/fish/vendor_completions.d/fulcrum.fish",
            "complete -c fulcrum",
        ),
    ] {
        let text = std::fs::read_to_string(at(completion)).expect(completion);
        assert!(text.contains(says), "{completion}");
    }
    let copyright = std::fs::read_to_string(at("usr/share/doc/fulcrum/copyright")).unwrap();
    assert!(
        copyright.contains("License: MIT or Apache-2.0"),
        "{copyright}"
    );

    // Debian's own checker has no remark.
    let lintian = Command::new("lintian")
        .args(["--tag-display-limit", "0", deb])
        .output()
        .expect("lintian runs (Debian's lintian; `cargo xtask setup` installs it)");
    let remarks: Vec<String> = String::from_utf8_lossy(&lintian.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(remarks.is_empty(), "lintian: {remarks:#?}");

    // Removed, it leaves nothing but dpkg's own records.
    dpkg(&root.0, &["-P", "fulcrum"]);
    let left: Vec<PathBuf> = walk(&root.0)
        .into_iter()
        .filter(|p| !p.starts_with(root.0.join("var/lib/dpkg")))
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}
