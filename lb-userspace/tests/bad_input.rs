//! `fulcrum run` with bad input: each case must end with exactly one error
//! line on stderr, before anything is loaded or attached, and exit status
//! 78 (`EX_CONFIG`: starting again cannot help until the config is fixed)
//! when the config is at fault, else 1.

mod common;

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use common::{Scratch, fulcrum, guarded};

/// Exit status of a start refused for its config.
const EX_CONFIG: i32 = 78;

/// Runs `command` and checks: exit `code`, one stderr line containing
/// `needle`.
fn fails_with(mut command: Command, needle: &str, code: i32) {
    let output = command.output().expect("fulcrum runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit status; stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("fulcrum: "), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

const VALID: &str = r#"
[[vip]]
address = "198.18.100.1"
port = 80
protocol = "tcp"
backend = [
  { address = "198.18.0.11", mac = "02:00:00:00:00:11" },
  { address = "198.18.0.12", mac = "02:00:00:00:00:12" },
]
"#;

#[test]
fn a_missing_config_file() {
    let mut command = fulcrum();
    command.args([
        "run",
        "--config",
        "/nonexistent/fulcrum.toml",
        "--interface",
        "lo",
    ]);
    fails_with(
        command,
        "reading config /nonexistent/fulcrum.toml",
        EX_CONFIG,
    );
}

/// The daemon reads its config (at start, on SIGHUP, after an edit) no
/// further than a config may hold.
#[test]
fn a_config_that_never_ends() {
    let mut command = guarded(fulcrum());
    command.args(["run", "--interface", "lo", "--config", "/dev/zero"]);
    fails_with(
        command,
        "reading config /dev/zero: larger than 1048576 bytes (1 MiB), the most a config may hold",
        EX_CONFIG,
    );
}

#[test]
fn a_config_that_does_not_parse() {
    let scratch = Scratch::new("parse");
    let path = scratch.file(
        "bad.toml",
        "[[vip]]\naddress = \"198.18.100.1\"\nport = \"eighty\"\n",
    );
    let mut command = fulcrum();
    command
        .args(["run", "--interface", "lo", "--config"])
        .arg(&path);
    fails_with(
        command,
        "port = \"eighty\": expected a port from 0 to 65535",
        EX_CONFIG,
    );
}

#[test]
fn a_config_with_broken_syntax() {
    let scratch = Scratch::new("syntax");
    let path = scratch.file("broken.toml", "[[vip]\naddress = \"198.18.100.1\"\n");
    let mut command = fulcrum();
    command
        .args(["run", "--interface", "lo", "--config"])
        .arg(&path);
    fails_with(command, "config: line 1, column", EX_CONFIG);
}

#[test]
fn an_unknown_key() {
    let scratch = Scratch::new("key");
    let path = scratch.file("typo.toml", &VALID.replace("port = 80", "prot = 80"));
    let mut command = fulcrum();
    command
        .args(["run", "--interface", "lo", "--config"])
        .arg(&path);
    fails_with(command, "prot = 80: unknown key", EX_CONFIG);
}

#[test]
fn an_unknown_interface() {
    let scratch = Scratch::new("iface");
    let path = scratch.file("ok.toml", VALID);
    let mut command = fulcrum();
    command
        .args(["run", "--interface", "fulcrum-nope0", "--config"])
        .arg(&path);
    fails_with(command, "unknown interface \"fulcrum-nope0\"", 1);
}

#[test]
fn no_interface_at_all() {
    let scratch = Scratch::new("noiface");
    let path = scratch.file("ok.toml", VALID);
    let mut command = fulcrum();
    command.args(["run", "--config"]).arg(&path);
    fails_with(command, "no interface", EX_CONFIG);
}

#[test]
fn a_config_that_fails_validation() {
    let scratch = Scratch::new("invalid");
    let one_backend = VALID.replace(
        "  { address = \"198.18.0.12\", mac = \"02:00:00:00:00:12\" },\n",
        "",
    );
    let path = scratch.file("single.toml", &one_backend);
    let mut command = fulcrum();
    command
        .args(["run", "--interface", "lo", "--config"])
        .arg(&path);
    fails_with(command, "[too-few-backends]", EX_CONFIG);
}

#[test]
fn missing_privileges() {
    // Copy the binary somewhere an unprivileged user may run it.
    let scratch = Scratch::new("privs");
    let binary = scratch.0.join("fulcrum");
    std::fs::copy(env!("CARGO_BIN_EXE_fulcrum"), &binary).unwrap();
    let config = scratch.file("ok.toml", VALID);
    for (path, mode) in [(&scratch.0, 0o755), (&binary, 0o755), (&config, 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let command = || {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&binary)
            .args(["run", "--interface", "lo", "--config"])
            .arg(&config);
        command
    };
    // A test running beside this one may fork while the copy is still
    // open for writing: its child holds the file until it execs, and
    // exec here fails with ETXTBSY meanwhile. That child's exec ends it.
    for _ in 0..100 {
        let output = command().output().expect("setpriv runs");
        if !String::from_utf8_lossy(&output.stderr).contains("Text file busy") {
            break;
        }
        std::thread::yield_now();
    }
    fails_with(command(), "missing privileges", 1);
}
