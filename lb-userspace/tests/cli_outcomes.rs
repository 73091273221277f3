//! `fulcrum validate` and `fulcrum plan` run as binaries: for every outcome
//! (valid, invalid, unreadable, refused, forced) the exit code, and with
//! `--format json` exactly one JSON document of the documented shape on
//! stdout, so a machine reading it never gets empty output. Also what the
//! command line says of itself (`--version`) and of bad arguments, before
//! any daemon is asked.

mod common;

use std::{io::Write as _, process::Command};

use common::{Scratch, fulcrum, guarded};
use serde_json::Value;

const SIX: &str = r#"
[[vip]]
name = "checkout"
address = "198.18.100.1"
port = 443
protocol = "tcp"
backend = [
  { name = "c1", address = "198.18.0.11", weight = 1 },
  { name = "c2", address = "198.18.0.12", weight = 1 },
  { name = "c3", address = "198.18.0.13", weight = 1 },
  { name = "c4", address = "198.18.0.14", weight = 1 },
  { name = "c5", address = "198.18.0.15", weight = 1 },
  { name = "c6", address = "198.18.0.16", weight = 1 },
]
"#;

/// The seed's outage: weights 100, 0, 0, 0, 0, 0.
fn seed_weights() -> String {
    SIX.replace(
        r#"{ name = "c1", address = "198.18.0.11", weight = 1 }"#,
        r#"{ name = "c1", address = "198.18.0.11", weight = 100 }"#,
    )
    .replace("weight = 1 }", "weight = 0 }")
}

/// The seed's outage with every guard of the VIP switched off in the same edit.
fn seed_outage() -> String {
    seed_weights().replace(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\nguards = { min_backends = 1, max_backend_share = 1.0, \
         max_flows_moved = 1.0, max_capacity_removed = 1.0 }",
    )
}

/// Runs `fulcrum args...`; returns the exit code and stdout parsed as one
/// JSON document (failing if stdout is anything else).
fn json(args: &[&str]) -> (i32, Value) {
    let output = fulcrum().args(args).output().expect("fulcrum runs");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    let document: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not one JSON document ({e}): {stdout:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().expect("exit code"), document)
}

fn codes(problems: &Value) -> Vec<String> {
    problems
        .as_array()
        .expect("a problem list")
        .iter()
        .map(|p| p["code"].as_str().expect("a code").to_string())
        .collect()
}

fn assert_validate_shape(document: &Value) {
    for key in ["valid", "errors", "warnings", "problems", "vips"] {
        assert!(document.get(key).is_some(), "no {key:?} in {document}");
    }
}

#[test]
fn validate_prints_one_json_document_for_every_outcome() {
    let scratch = Scratch::new("validate-json");
    let good = scratch.file("good.toml", SIX);
    let invalid = scratch.file("invalid.toml", &seed_weights());
    let broken = scratch.file("broken.toml", "[[vip]\n");
    let missing = scratch.0.join("missing.toml");
    let cases = [
        (&good, 0, true, vec![]),
        (
            &invalid,
            1,
            false,
            vec!["too-few-backends", "concentration"],
        ),
        (&broken, 1, false, vec!["syntax"]),
        (&missing, 1, false, vec!["unreadable-file"]),
    ];
    for (path, exit, valid, want) in cases {
        let (code, document) = json(&["validate", path.to_str().unwrap(), "--format", "json"]);
        assert_validate_shape(&document);
        assert_eq!(code, exit, "{}: {document}", path.display());
        assert_eq!(document["valid"], valid, "{}", path.display());
        let got = codes(&document["problems"]);
        for code in &want {
            assert!(
                got.iter().any(|c| c == code),
                "{}: {code} not in {got:?}",
                path.display()
            );
        }
        assert_eq!(
            got.is_empty(),
            want.is_empty(),
            "{}: {got:?}",
            path.display()
        );
    }
    let (_, document) = json(&["validate", good.to_str().unwrap(), "--format", "json"]);
    assert_eq!(document["vips"][0]["backends"].as_array().unwrap().len(), 6);
    // The guard that refuses is named as the config spells it.
    let (_, document) = json(&["validate", invalid.to_str().unwrap(), "--format", "json"]);
    let too_few = document["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "too-few-backends")
        .expect("too-few-backends");
    let message = too_few["message"].as_str().unwrap();
    assert!(message.contains("guards.min_backends = 2"), "{message}");
}

fn assert_verdict(code: i32, document: &Value, exit: i32, accepted: bool) {
    assert_eq!(code, exit, "exit code: {document}");
    assert_eq!(document["accepted"], accepted, "{document}");
}

fn count(codes: &[String], code: &str) -> usize {
    codes.iter().filter(|c| *c == code).count()
}

fn assert_plan_shape(document: &Value) {
    for key in ["accepted", "error", "config_problems", "current_problems"] {
        assert!(document.get(key).is_some(), "no {key:?} in {document}");
    }
}

#[test]
fn plan_prints_one_json_document_for_every_outcome() {
    let scratch = Scratch::new("plan-json");
    let six = scratch.file("six.toml", SIX);
    let seed = scratch.file("seed.toml", &seed_outage());
    let invalid = scratch.file("invalid.toml", &SIX.replace("port = 443", "port = 99999"));
    let missing = scratch.0.join("missing.toml");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let plan = |next: &std::path::Path, against: &std::path::Path, force: bool| {
        let mut args = vec![
            "plan".to_string(),
            path(next),
            "--against".into(),
            path(against),
        ];
        args.extend(["--format".into(), "json".into()]);
        if force {
            args.push("--force".into());
        }
        json(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Unchanged: accepted, a full plan, nothing forced.
    let (code, document) = plan(&six, &six, false);
    assert_plan_shape(&document);
    assert_verdict(code, &document, 0, true);
    assert!(document["error"].is_null());
    assert_eq!(document["vips"][0]["change"], "unchanged");
    assert_eq!(document["forced"].as_array().unwrap().len(), 0);

    // The seed's outage with its guards loosened: refused, and says why.
    let (code, document) = plan(&seed, &six, false);
    assert_plan_shape(&document);
    assert_verdict(code, &document, 1, false);
    let refused = codes(&document["problems"]);
    assert_eq!(count(&refused, "guard-loosened"), 4, "{refused:?}");
    for code in ["concentration", "too-few-backends", "blast-radius-flows"] {
        assert!(
            refused.iter().any(|c| c == code),
            "{code} not in {refused:?}"
        );
    }

    // Forced: accepted, and every override recorded.
    let (code, document) = plan(&seed, &six, true);
    assert_verdict(code, &document, 0, true);
    let forced = codes(&document["forced"]);
    assert_eq!(count(&forced, "guard-loosened"), 4, "{forced:?}");
    assert!(forced.iter().any(|c| c == "concentration"), "{forced:?}");

    // A new config that cannot be read, or does not parse.
    for next in [&missing, &invalid] {
        let (code, document) = plan(next, &six, false);
        assert_plan_shape(&document);
        assert_verdict(code, &document, 1, false);
        assert!(
            !codes(&document["config_problems"]).is_empty(),
            "{document}"
        );
    }
    let (_, document) = plan(&missing, &six, false);
    assert!(
        document["error"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{document}"
    );

    // A current config that is invalid or unreadable: no plan, and why.
    for current in [&invalid, &missing] {
        let (code, document) = plan(&six, current, false);
        assert_plan_shape(&document);
        assert_verdict(code, &document, 1, false);
        assert!(
            document["error"].as_str().unwrap().contains("not valid"),
            "{document}"
        );
        assert!(
            !codes(&document["current_problems"]).is_empty(),
            "{document}"
        );
        assert!(
            document.get("vips").is_none(),
            "no plan against an invalid config"
        );
    }
}

#[test]
fn plan_text_shows_each_loosening_on_its_own_line() {
    let scratch = Scratch::new("plan-text");
    let six = scratch.file("six.toml", SIX);
    let seed = scratch.file("seed.toml", &seed_outage());
    let output = fulcrum()
        .arg("plan")
        .arg(&seed)
        .arg("--against")
        .arg(&six)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for (field, change) in [
        ("max_backend_share", "0.5 → 1"),
        ("min_backends", "2 → 1"),
        ("max_flows_moved", "0.35 → 1"),
        ("max_capacity_removed", "0.5 → 1"),
    ] {
        let line =
            format!("error: vip \"checkout\" (198.18.100.1:443/tcp) guards: {field} = {change}: ");
        assert!(stdout.contains(&line), "no line {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("verdict: REFUSED"), "{stdout}");
    let forced = fulcrum()
        .arg("plan")
        .arg(&seed)
        .arg("--against")
        .arg(&six)
        .arg("--force")
        .output()
        .unwrap();
    assert_eq!(forced.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(
        stdout.contains("forced: vip \"checkout\" (198.18.100.1:443/tcp) guards: min_backends 2 → 1 (guard-loosened)"),
        "{stdout}"
    );
}

/// Input larger than a config may hold (1 MiB) is refused after reading
/// that much of it, whether it is a file, `/dev/zero` or a FIFO whose
/// writer never stops: one JSON document, exit status 1, and no memory
/// or time beyond that megabyte.
#[test]
fn validate_reads_no_further_than_a_config_may_hold() {
    let scratch = Scratch::new("validate-size");
    let big = scratch.file("big.toml", &format!("#{}\n", "x".repeat(1 << 20)));
    let fifo = scratch.0.join("endless.toml");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut pipe = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("the FIFO opens for writing");
            // Writes comments until the reader goes (EPIPE).
            while pipe.write_all(b"# a comment that never ends\n").is_ok() {}
        })
    };
    for path in [big.as_path(), "/dev/zero".as_ref(), fifo.as_path()] {
        let output = guarded(fulcrum())
            .arg("validate")
            .arg(path)
            .args(["--format", "json"])
            .output()
            .expect("fulcrum runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let document: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{}: not one JSON document ({e}): {stdout:?}; status {:?}, stderr: {}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        });
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}: {document}",
            path.display()
        );
        assert_eq!(
            codes(&document["problems"]),
            ["config-too-large"],
            "{}",
            path.display()
        );
    }
    writer
        .join()
        .expect("the FIFO's writer ends when its reader goes");
}

/// Whether `stdout` is free of what a hostile name could do to a reader:
/// a forged line, a terminal escape.
fn inert(what: &str, stdout: &[u8]) {
    let stdout = String::from_utf8_lossy(stdout);
    assert!(
        !stdout.contains('\u{1b}'),
        "{what}: an escape reached the terminal: {stdout:?}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("error: forged")),
        "{what}: a forged line: {stdout}"
    );
}

/// Names are printed with their control characters escaped: a plan (made
/// of a config validation refuses, too) and a tables dump (read as it
/// is, not validated) cannot forge a line or drive the terminal.
#[test]
fn names_are_printed_inert() {
    let scratch = Scratch::new("inert-names");
    let forged = SIX
        .replace(r#"name = "c1""#, r#"name = "c1\nerror: forged line""#)
        .replace(r#"name = "c2""#, r#"name = "\u001b[2J""#)
        .replace(
            r#"name = "checkout""#,
            r#"name = "checkout\nerror: forged VIP""#,
        );
    let config = scratch.file("forged.toml", &forged);
    let plan = fulcrum()
        .arg("plan")
        .arg(&config)
        .arg("--from-nothing")
        .output()
        .unwrap();
    inert("plan", &plan.stdout);
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert!(stdout.contains(r"c1\nerror: forged line"), "{stdout}");
    let dump = serde_json::json!({
        "source": "a host\u{1b}[2J",
        "group": "edge\nerror: forged group",
        "seed_fingerprint": "00\u{1b}]0;title\u{7}",
        "vips": [{
            "name": "web\nerror: forged line",
            "endpoint": "198.18.100.1:80/tcp\u{1b}[31m",
            "backends": ["198.18.0.11:80"],
            "slots": [0],
            "digest": "0123\nerror: forged digest",
        }],
    });
    let dump = scratch.file("dump.json", &dump.to_string());
    let tables = fulcrum().arg("tables").arg(&dump).output().unwrap();
    assert_eq!(tables.status.code(), Some(0));
    inert("tables", &tables.stdout);
    let compare = fulcrum()
        .arg("compare")
        .arg(&dump)
        .arg(&dump)
        .output()
        .unwrap();
    inert("compare", &compare.stdout);
}

/// Without `--against`, plan asks the daemon: one that does not answer is
/// still one JSON document, and a FILE that cannot be read is the error
/// before any daemon is asked.
#[test]
fn plan_without_a_daemon_is_one_json_document_and_its_file_comes_first() {
    let scratch = Scratch::new("plan-unreachable");
    let six = scratch.file("six.toml", SIX);
    let missing = scratch.0.join("missing.toml");
    let socket = scratch.0.join("no.sock");
    let socket = socket.to_str().unwrap();
    let (code, document) = json(&[
        "plan",
        six.to_str().unwrap(),
        "--socket",
        socket,
        "--format",
        "json",
    ]);
    assert_plan_shape(&document);
    assert_verdict(code, &document, 1, false);
    let error = document["error"].as_str().unwrap();
    assert!(error.contains("no fulcrum daemon answers"), "{document}");

    let (code, document) = json(&[
        "plan",
        missing.to_str().unwrap(),
        "--socket",
        socket,
        "--format",
        "json",
    ]);
    assert_verdict(code, &document, 1, false);
    let error = document["error"].as_str().unwrap();
    assert!(error.contains("cannot be read"), "{document}");
    assert!(!error.contains("daemon"), "{document}");
}

/// A plan's VIPs go by their plain names, as `validate` has them; the
/// unchanged ones are one line unless `--all`.
#[test]
fn plan_names_vips_plainly_and_folds_the_unchanged() {
    let scratch = Scratch::new("plan-fold");
    let second = SIX
        .replace("name = \"checkout\"", "name = \"search\"")
        .replace("198.18.100.1", "198.18.100.2");
    let before = scratch.file("before.toml", &format!("{SIX}{second}"));
    let changed = SIX.replace(
        r#"{ name = "c6", address = "198.18.0.16", weight = 1 }"#,
        r#"{ name = "c6", address = "198.18.0.16", weight = 2 }"#,
    );
    let after = scratch.file("after.toml", &format!("{changed}{second}"));
    let (_, document) = json(&[
        "plan",
        after.to_str().unwrap(),
        "--against",
        before.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let names: Vec<&str> = document["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["checkout", "search"], "{document}");
    let text = |all: bool| {
        let mut command = fulcrum();
        command
            .arg("plan")
            .arg(&after)
            .arg("--against")
            .arg(&before);
        if all {
            command.arg("--all");
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(0));
        String::from_utf8(output.stdout).unwrap()
    };
    let folded = text(false);
    assert!(folded.contains("checkout 198.18.100.1:443/tcp"), "{folded}");
    assert!(!folded.contains("search 198.18.100.2"), "{folded}");
    assert!(
        folded.contains("1 changed, 0 removed, 1 unchanged"),
        "{folded}"
    );
    assert!(folded.contains("--all shows them"), "{folded}");
    let all = text(true);
    assert!(all.contains("search 198.18.100.2:443/tcp"), "{all}");
    assert!(!all.contains("--all shows them"), "{all}");
}

/// The commit `git` says this tree is at, when it is a checkout.
fn head_commit() -> Option<String> {
    let output = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[test]
fn version_names_the_commit_and_the_map_layout() {
    let output = fulcrum().arg("--version").output().expect("fulcrum runs");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("UTF-8");
    let commit = std::env::var("FULCRUM_GIT_COMMIT")
        .ok()
        .or_else(head_commit)
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        printed.trim(),
        format!(
            "fulcrum {} (commit {commit}, map layout {})",
            env!("CARGO_PKG_VERSION"),
            lb_common::maps::LAYOUT_VERSION
        )
    );
}

/// Runs `fulcrum args` against a socket in `scratch` that no daemon
/// listens on; returns the exit code and stderr.
fn without_a_daemon(scratch: &Scratch, args: &[&str]) -> (Option<i32>, String) {
    let output = guarded({
        let mut command = fulcrum();
        command
            .args(args)
            .arg("--socket")
            .arg(scratch.0.join("fulcrum.sock"));
        command
    })
    .output()
    .expect("fulcrum runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Bad arguments are reported as such, before any socket is opened: a
/// daemon that is not there is never the error.
#[test]
fn argument_errors_come_before_the_daemon_is_asked() {
    let scratch = Scratch::new("argument-errors");
    for (args, says, code) in [
        (
            &["explain", "tcp", "1.2.3.4", "198.18.100.1:80"][..],
            "invalid value '1.2.3.4' for '<SOURCE>'",
            2,
        ),
        (
            &["explain", "sctp", "1.2.3.4:5", "198.18.100.1:80"],
            "invalid value 'sctp' for '<PROTOCOL>'",
            2,
        ),
        (
            &["backend", "add", "web4", "not-an-ip"],
            "\"not-an-ip\" is not an IP address",
            1,
        ),
        (
            &["backend", "add", "web4", "198.18.0.9", "--mac", "zz"],
            "--mac: \"zz\" is not a MAC address",
            1,
        ),
        (
            &["backend", "set-weight", "web4", "b1", "-1"],
            "unexpected argument '-1'",
            2,
        ),
        (
            &["trace", "--pcap", "-", "--format", "json"],
            "--format json has no room there",
            1,
        ),
        (
            &["trace", "--snap-len", "64"],
            "the text trace shows no bytes",
            1,
        ),
        (
            &["trace", "--pcap", "x.pcapng", "--snap-len", "0"],
            "--snap-len must be at least 1",
            1,
        ),
    ] {
        let (exit, stderr) = without_a_daemon(&scratch, args);
        assert_eq!(exit, Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("no fulcrum daemon answers"),
            "{args:?}: {stderr}"
        );
    }
    // And the one error there is when the arguments are good.
    let good = ["explain", "tcp", "1.2.3.4:5", "198.18.100.1:80"];
    let (exit, stderr) = without_a_daemon(&scratch, &good);
    assert_eq!(exit, Some(1), "{stderr}");
    assert!(stderr.contains("no fulcrum daemon answers"), "{stderr}");
}
