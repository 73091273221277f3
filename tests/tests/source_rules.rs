//! Source rules against a running `fulcrum run`, judged by their blast
//! radius: a deny rule that covers the lab's client shows, in `fulcrum
//! plan`, the active flows it would cut, and the gate refuses it; a rule
//! for a prefix nobody uses passes; `--force` applies the first, and then
//! the client's held connections and new ones are refused in XDP,
//! counted by reason.

use std::time::Duration;

use lb_tests::{
    lab::{BackendSpec, Lab},
    scratch::Scratch,
    status::{sessions, status, vip, wait_for, web4, web4_edited},
    traffic,
};
use serde_json::Value;

/// A candidate config file: the lab's with `rule` added to web4.
fn with_rule(lab: &Lab, scratch: &Scratch, name: &str, rule: &str) -> String {
    let path = scratch.0.join(name);
    std::fs::write(&path, web4_edited(lab, rule)).expect("the candidate");
    path.display().to_string()
}

/// Runs the CLI with JSON output: its exit status and document.
fn json(lab: &Lab, args: &[&str]) -> (i32, Value) {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    let (code, stdout, stderr) = lab.cli(&args).expect("fulcrum runs");
    let document = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout:?}; stderr: {stderr}"));
    (code, document)
}

/// web4's plan in a plan answer.
fn web4_plan(answer: &Value) -> &Value {
    answer["vips"]
        .as_array()
        .and_then(|vips| vips.iter().find(|v| v["name"] == "web4"))
        .unwrap_or_else(|| panic!("web4 in the plan: {answer}"))
}

fn codes(answer: &Value, list: &str) -> Vec<String> {
    answer[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["code"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_deny_rule_that_cuts_active_clients_is_shown_and_refused_until_forced() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let mut held = sessions(&lab, &["b1", "b2", "b3"]);
    let scratch = Scratch::new("source-rules");
    let (client, _) = lab.client_addrs();
    let client_net = format!("{}.0/24", client.to_string().rsplit_once('.').unwrap().0);
    let cutting = with_rule(
        &lab,
        &scratch,
        "cutting.toml",
        &format!("deny_sources = [\"{client_net}\"]"),
    );
    let harmless = with_rule(
        &lab,
        &scratch,
        "harmless.toml",
        "deny_sources = [\"198.18.99.0/24\"]",
    );

    // The plan counts the held connections among the active flows cut.
    let (code, planned) = json(&lab, &["plan", &cutting]);
    let refused = &web4_plan(&planned)["refused"];
    eprintln!("plan: {refused}");
    assert_eq!(code, 1, "refused: {planned}");
    let cut = refused["active_flows"].as_u64().expect("active flows cut");
    assert!(
        cut >= held.len() as u64 && cut == refused["active_total"].as_u64().unwrap(),
        "every active flow of web4 comes from the client: {refused}"
    );
    let problems = codes(&planned, "problems");
    assert!(
        problems.iter().any(|c| c == "blast-radius-clients"),
        "{problems:?}"
    );
    // The gate refuses it as the plan said; the held connections go on.
    let (code, applied) = json(&lab, &["apply", &cutting]);
    assert_eq!(code, 1, "{applied}");
    for session in &mut held {
        assert_eq!(
            session.ask().expect("still served"),
            session.backend,
            "a refused change changes nothing"
        );
    }
    // A rule for a prefix no client uses passes, and refuses nobody.
    let (code, planned) = json(&lab, &["plan", &harmless]);
    assert_eq!(code, 0, "{planned}");
    assert_eq!(web4_plan(&planned)["refused"]["active_flows"], 0);

    // Forced: the override is recorded, and the client is refused in XDP,
    // its held connections too.
    let generation = status(&lab)["generation"].as_u64().unwrap();
    let (code, applied) = json(&lab, &["apply", &cutting, "--force"]);
    assert_eq!(code, 0, "{applied}");
    assert!(
        codes(&applied, "forced")
            .iter()
            .any(|c| c == "blast-radius-clients"),
        "the override is recorded: {applied}"
    );
    wait_for(&lab, Duration::from_secs(10), |s| {
        s["generation"].as_u64() > Some(generation)
    });
    // Two of them suffice (each waits out its read timeout).
    for session in held.iter_mut().take(2) {
        assert!(
            session.ask().is_err(),
            "a held connection from the denied /24 is cut"
        );
    }
    let tally = traffic::tcp_connections(lab.client(), web4(), 2, 2).expect("connections");
    assert_eq!(
        tally.answered(),
        0,
        "new connections are refused: {tally:?}"
    );
    // Counted by reason, and against the rule.
    let (after, _) = wait_for(&lab, Duration::from_secs(10), |s| {
        vip(s, "web4")["refused"]["denied"].as_u64() > Some(0)
            && vip(s, "web4")["rule_drops"][&client_net].as_u64() > Some(0)
    });
    eprintln!(
        "refused: {}; by rule: {}",
        vip(&after, "web4")["refused"],
        vip(&after, "web4")["rule_drops"]
    );
}
