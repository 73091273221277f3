//! `fulcrum validate` and `fulcrum plan` run as binaries: for every outcome
//! (valid, invalid, unreadable, refused, forced) the exit code, and with
//! `--format json` exactly one JSON document of the documented shape on
//! stdout, so a machine reading it never gets empty output.

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
