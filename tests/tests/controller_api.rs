//! The controller's doors, as an operator meets them, against a running
//! `fulcrum run` in the namespace lab: every CLI verb's exit code and JSON
//! shape; the seed's mistake refused at every door (`apply`, `backend
//! set-weight`, an edit of the file, SIGHUP) with the traffic split
//! unchanged; bad API input answered with a 4xx that changes nothing; a
//! socket only root may use; concurrent applies serialized.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::Duration,
};

use lb_tests::{
    api,
    lab::{BackendSpec, Lab, TCP_PORT, VIP4, VIP6, fulcrum_binary},
    traffic,
};
use serde_json::Value;

fn lab(backends: usize) -> Lab {
    Lab::start(&BackendSpec::equal(backends)).expect("lab starts")
}

/// Runs a verb with `--format json`; returns the exit code and the one JSON
/// document it printed.
fn json(lab: &Lab, args: &[&str]) -> (i32, Value) {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    let (code, stdout, stderr) = lab.cli(&args).expect("fulcrum runs");
    let document = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("{args:?}: stdout is not one JSON document ({e}): {stdout:?}; stderr: {stderr}")
    });
    (code, document)
}

/// The codes of a list of problems in an answer (`problems`, `warnings`).
fn codes<'a>(answer: &'a Value, list: &str) -> Vec<&'a str> {
    answer[list]
        .as_array()
        .map(|problems| problems.iter().filter_map(|p| p["code"].as_str()).collect())
        .unwrap_or_default()
}

/// Checks a verb's exit code and whether the answer says it applied.
fn assert_applied(code: i32, answer: &Value, applied: bool) {
    let want = (if applied { 0 } else { 1 }, &Value::Bool(applied));
    assert_eq!((code, &answer["applied"]), want, "{answer}");
}

fn generation(lab: &Lab) -> u64 {
    let (code, status) = json(lab, &["status"]);
    assert_eq!(code, 0, "{status}");
    status["generation"].as_u64().expect("a generation")
}

/// Each backend's expected share of VIP `web4`, from `status`.
fn web4_shares(lab: &Lab) -> Vec<(String, f64)> {
    let (_, status) = json(lab, &["status"]);
    let vip = status["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web4")
        .expect("web4 in status")
        .clone();
    vip["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["expected_share"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// 400 new connections to `web4`: every one answered, and no backend far
/// from an equal share.
fn assert_even_split(lab: &Lab, backends: usize) {
    let web4 = SocketAddr::new(IpAddr::V4(VIP4), TCP_PORT);
    let tally = traffic::tcp_connections(lab.client(), web4, 400, 4).expect("traffic");
    assert_eq!(tally.failures, 0, "{:?}", tally.first_error);
    for name in (1..=backends).map(|i| format!("b{i}")) {
        let share = tally.share(&name);
        assert!(
            (share - 1.0 / backends as f64).abs() < 0.1,
            "{name} took {share:.2} of new connections"
        );
    }
}

#[test]
fn every_verb_answers_with_its_exit_code_and_json_shape() {
    let lab = lab(4);
    let (code, status) = json(&lab, &["status"]);
    assert_eq!(code, 0);
    for key in ["interface", "attached", "generation", "vips", "reasons"] {
        assert!(status.get(key).is_some(), "status has {key}: {status}");
    }
    assert_eq!(status["attached"], true);
    let start = status["generation"].as_u64().unwrap();

    let (code, explained) = json(
        &lab,
        &["explain", "tcp", "198.18.0.2:40000", "198.18.100.1:80"],
    );
    assert_eq!(code, 0, "{explained}");
    assert_eq!(explained["via"], "table");
    assert_eq!(explained["forwarding"], "l2-dsr", "{explained}");
    assert!(
        explained["slot"].is_u64() && explained["backend"].is_string(),
        "{explained}"
    );
    let (code, not_a_vip) = json(
        &lab,
        &["explain", "tcp", "198.18.0.2:40000", "198.18.100.9:80"],
    );
    assert_eq!(code, 1);
    assert!(not_a_vip["error"].as_str().unwrap().contains("not a VIP"));

    let config = lab.config_path();
    let config = config.to_str().unwrap();
    let (code, planned) = json(&lab, &["plan", config]);
    assert_eq!(
        (code, &planned["accepted"]),
        (0, &Value::Bool(true)),
        "{planned}"
    );
    assert_eq!(planned["generation"], start, "planned against: {planned}");
    // The config in force again: nothing to do, the generation stays.
    let (code, applied) = json(&lab, &["apply", config]);
    assert_applied(code, &applied, true);
    assert_eq!(applied["generation"], start, "{applied}");
    assert_eq!(applied["unchanged"], true, "{applied}");

    let steps: [&[&str]; 5] = [
        &["backend", "set-weight", "web4", "b1", "2"],
        &["backend", "set-weight", "web4", "b1", "1"],
        &["backend", "drain", "web4", "b4"],
        &[
            "backend",
            "add",
            "web4",
            "198.18.0.30",
            "--name",
            "b9",
            "--mac",
            "02:00:00:00:00:30",
        ],
        &["backend", "remove", "web4", "b9"],
    ];
    for (i, step) in steps.iter().enumerate() {
        let (code, answer) = json(&lab, step);
        assert_eq!(code, 0, "{step:?}: {answer}");
        assert_eq!(answer["applied"], true, "{step:?}");
        assert_eq!(answer["generation"], start + 1 + i as u64, "{step:?}");
    }
    let on_disk = std::fs::read_to_string(lab.config_path()).unwrap();
    assert!(
        on_disk.contains("weight = 0"),
        "the drain is in the file:\n{on_disk}"
    );
    let (code, unknown) = json(&lab, &["backend", "drain", "web4", "b7"]);
    assert_eq!(code, 1);
    assert!(
        unknown["error"].as_str().unwrap().contains("no backend"),
        "{unknown}"
    );
    let (code, unknown) = json(&lab, &["backend", "drain", "nope", "b1"]);
    assert_eq!(code, 1);
    assert!(
        unknown["error"].as_str().unwrap().contains("no VIP"),
        "{unknown}"
    );

    let journal = std::fs::read_to_string(lab.journal()).unwrap();
    let entries: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        entries.len(),
        6,
        "the first install and each apply:\n{journal}"
    );
    assert_eq!(entries[0]["source"], "start", "{}", entries[0]);
    for entry in &entries[1..] {
        assert_eq!(entry["uid"], 0, "{entry}");
    }
    assert!(
        entries.iter().all(|e| e["result"] == "applied"),
        "{journal}"
    );
    assert_eq!(entries[1]["source"], "api backend set-weight");

    // No daemon: one line, exit 1, for every verb.
    for verb in [
        &["status"][..],
        &["apply", config],
        &["explain", "tcp", "1.2.3.4:1", "5.6.7.8:2"],
    ] {
        let output = Command::new(fulcrum_binary().unwrap())
            .args(verb)
            .args(["--socket", "/nonexistent/fulcrum.sock"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{verb:?}");
        assert_eq!(stderr.lines().count(), 1, "{verb:?}: {stderr}");
        assert!(stderr.contains("no fulcrum daemon answers"), "{stderr}");
        let json_output = Command::new(fulcrum_binary().unwrap())
            .args(verb)
            .args(["--socket", "/nonexistent/fulcrum.sock", "--format", "json"])
            .output()
            .unwrap();
        let document: Value = serde_json::from_slice(&json_output.stdout)
            .unwrap_or_else(|e| panic!("{verb:?} --format json: one JSON document ({e})"));
        assert!(document["error"].is_string(), "{verb:?}: {document}");
    }

    let (code, detached) = json(&lab, &["detach"]);
    assert_eq!(
        (code, &detached["detached"]),
        (0, &Value::Bool(true)),
        "{detached}"
    );
    assert!(!lab.lb_has_xdp().unwrap(), "detach removed the program");
    // The daemon exits 0, which the shipped unit does not restart.
    let status = lab.await_fulcrum_exit().expect("fulcrum exits");
    assert_eq!(status.code(), Some(0), "{status}");
}

/// The lab's config with backend `name` of `web4` (the first VIP) at `weight`.
fn with_weight(text: &str, name: &str, weight: u32) -> String {
    let at = text
        .find(&format!("name = \"{name}\""))
        .expect("the backend");
    let weight_at = at + text[at..].find("weight = 1").expect("its weight");
    format!(
        "{}weight = {weight}{}",
        &text[..weight_at],
        &text[weight_at + "weight = 1".len()..]
    )
}

/// The seed's outage: one backend of `web4` takes (nearly) everything.
fn seed(text: &str) -> String {
    with_weight(text, "b1", 100)
}

fn wait_for_log(lab: &Lab, needle: &str) -> Vec<String> {
    lab.await_log(needle, Duration::from_secs(10))
        .unwrap_or_else(|_| lab.fulcrum_log())
}

#[test]
fn the_seeds_mistake_is_refused_at_every_door() {
    let lab = lab(4);
    let before = generation(&lab);
    let shares = web4_shares(&lab);
    let good = std::fs::read_to_string(lab.config_path()).unwrap();
    let bad = seed(&good);
    assert_ne!(good, bad, "the edit applies");
    let scratch = lab.config_path().with_extension("seed.toml");
    std::fs::write(&scratch, &bad).unwrap();

    // In JSON the reasons are in the document, and stderr says so.
    let args = ["apply", scratch.to_str().unwrap(), "--format", "json"];
    let (code, stdout, stderr) = lab.cli(&args).expect("fulcrum runs");
    let refused: Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_applied(code, &refused, false);
    assert!(stderr.contains("see `problems` in the JSON"), "{stderr}");
    let (code, refused) = json(&lab, &["backend", "set-weight", "web4", "b1", "100"]);
    assert_applied(code, &refused, false);
    let codes = codes(&refused, "problems");
    assert!(codes.contains(&"concentration"), "{codes:?}");

    std::fs::write(lab.config_path(), &bad).unwrap();
    let log = wait_for_log(&lab, "file: REFUSED");
    assert!(
        log.iter()
            .any(|l| l.contains("file: REFUSED") && l.contains("[concentration]")),
        "{log:?}"
    );
    // SAFETY: signalling the daemon this lab started, by its PID.
    unsafe { libc::kill(lab.fulcrum_pid().unwrap() as i32, libc::SIGHUP) };
    let log = wait_for_log(&lab, "sighup: REFUSED");
    assert!(log.iter().any(|l| l.contains("sighup: REFUSED")), "{log:?}");

    assert_eq!(generation(&lab), before, "nothing was applied");
    assert_eq!(web4_shares(&lab), shares, "the tables are unchanged");
    assert_even_split(&lab, 4);
    let journal = std::fs::read_to_string(lab.journal()).unwrap();
    let refusals = journal
        .lines()
        .filter(|l| l.contains("\"result\":\"refused\""))
        .count();
    assert_eq!(
        refusals, 4,
        "every door's refusal is journalled:\n{journal}"
    );

    // The refused edit is still on disk: an API change must not overwrite it.
    let (code, blocked) = json(&lab, &["backend", "drain", "web4", "b4"]);
    assert_eq!(code, 1, "{blocked}");
    let error = blocked["error"].as_str().unwrap();
    assert!(
        error.contains("differs from the config in force"),
        "{error}"
    );
    // The file put back equals what is in force: nothing to apply, and a
    // SIGHUP of the config in force does not bump the generation either.
    std::fs::write(lab.config_path(), &good).unwrap();
    // SAFETY: signalling the daemon this lab started, by its PID.
    unsafe { libc::kill(lab.fulcrum_pid().unwrap() as i32, libc::SIGHUP) };
    let log = wait_for_log(&lab, "is the config in force; nothing to change");
    assert!(
        log.iter()
            .any(|l| l.contains("sighup: ") && l.contains("nothing to change")),
        "{log:?}"
    );
    assert_eq!(generation(&lab), before, "no-ops keep the generation");
    let (code, _) = json(&lab, &["backend", "drain", "web4", "b4"]);
    assert_eq!(code, 0, "with the file back in force, the API writes again");
}

#[test]
fn a_second_controller_and_live_only_settings_are_refused() {
    let lab = lab(2);
    let before = generation(&lab);
    let output = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.lb().name()))
        .arg("--")
        .arg(fulcrum_binary().unwrap())
        .args(["run", "--config"])
        .arg(lab.config_path())
        .args(lab.place_args())
        .arg("--socket")
        .arg(lab.socket().with_file_name("second.sock"))
        .arg("--journal")
        .arg(lab.journal().with_extension("second"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another fulcrum (pid"), "{stderr}");
    assert!(
        !stderr.contains("adopted"),
        "refused before adopting: {stderr}"
    );
    assert_eq!(generation(&lab), before);

    let text = std::fs::read_to_string(lab.config_path()).unwrap();
    let moved = lab.config_path().with_extension("eth1.toml");
    std::fs::write(
        &moved,
        text.replacen("interface = \"eth0\"", "interface = \"eth1\"", 1),
    )
    .unwrap();
    let (code, refused) = json(&lab, &["apply", moved.to_str().unwrap(), "--force"]);
    assert_applied(code, &refused, false);
    assert_eq!(codes(&refused, "problems"), ["needs-restart"], "{refused}");
    assert_eq!(generation(&lab), before);
}

/// Sends one raw HTTP request on the API socket; returns the status code.
fn raw(socket: &Path, method: &str, path: &str, body: &[u8]) -> u16 {
    api::request(socket, method, path, body)
        .expect("the API answers")
        .0
}

#[test]
fn bad_api_input_gets_a_4xx_and_changes_nothing() {
    let lab = lab(3);
    let before = generation(&lab);
    let text = std::fs::read_to_string(lab.config_path()).unwrap();
    let huge = format!(r#"{{"config": "{}"}}"#, "#".repeat(2 << 20));
    let cases: [(&str, &str, Vec<u8>, u16); 8] = [
        (
            "malformed JSON",
            "/v1/apply",
            b"{\"config\": ".to_vec(),
            400,
        ),
        ("a body over 1 MiB", "/v1/apply", huge.into_bytes(), 413),
        (
            "an unknown field",
            "/v1/apply",
            serde_json::json!({"config": text, "forse": true})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "a wrong type",
            "/v1/apply",
            serde_json::json!({"config": text, "force": "yes"})
                .to_string()
                .into_bytes(),
            422,
        ),
        (
            "an unknown VIP",
            "/v1/backend",
            br#"{"action": "drain", "vip": "nope", "backend": "b1"}"#.to_vec(),
            404,
        ),
        (
            "an unknown backend",
            "/v1/backend",
            br#"{"action": "drain", "vip": "web4", "backend": "b9"}"#.to_vec(),
            404,
        ),
        (
            "an unknown action",
            "/v1/backend",
            br#"{"action": "explode", "vip": "web4", "backend": "b1"}"#.to_vec(),
            422,
        ),
        (
            "an unreadable config",
            "/v1/apply",
            br#"{"config": "[[vip]"}"#.to_vec(),
            422,
        ),
    ];
    for (name, path, body, want) in cases {
        let got = raw(lab.socket(), "POST", path, &body);
        assert_eq!(got, want, "{name}");
        assert_eq!(generation(&lab), before, "{name} changed nothing");
    }
    assert_eq!(
        std::fs::read_to_string(lab.config_path()).unwrap(),
        text,
        "the file is untouched"
    );
}

#[test]
fn only_root_may_use_the_socket() {
    let lab = lab(2);
    let mode = std::fs::metadata(lab.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the socket is 0600");
    // A copy of the binary that an unprivileged user may run.
    let dir = std::env::temp_dir().join(format!("fulcrum-api-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("fulcrum");
    std::fs::copy(fulcrum_binary().unwrap(), &binary).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&binary)
        .args(["status", "--socket"])
        .arg(lab.socket())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied on the daemon's socket")
            && stderr.contains("Permission denied")
            && !stderr.contains("no fulcrum daemon answers"),
        "{stderr}"
    );
}

#[test]
fn concurrent_applies_are_serialized() {
    let lab = lab(4);
    let start = generation(&lab);
    let good = std::fs::read_to_string(lab.config_path()).unwrap();
    let heavier = |name: &str| with_weight(&good, name, 2);
    let dir = lab.config_path().with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<_> = ["b1", "b2"]
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, heavier(name)).unwrap();
            path
        })
        .collect();
    let generation_flag = start.to_string();
    let results: Vec<(i32, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|path| {
                let args = [
                    "apply",
                    path.to_str().unwrap(),
                    "--if-generation",
                    &generation_flag,
                ];
                let lab = &lab;
                scope.spawn(move || json(lab, &args))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners = results.iter().filter(|(code, _)| *code == 0).count();
    assert_eq!(winners, 1, "exactly one apply wins: {results:?}");
    let loser = results.iter().find(|(code, _)| *code != 0).unwrap();
    assert!(
        loser.1["error"]
            .as_str()
            .unwrap()
            .contains(&format!("not {start}")),
        "the other is told the state changed: {loser:?}"
    );
    assert_eq!(generation(&lab), start + 1);
}

/// Waits until `fulcrum run` has logged a line containing `needle`.
fn wait_until_logged(lab: &Lab, needle: &str) -> bool {
    wait_for_log(lab, needle).iter().any(|l| l.contains(needle))
}

#[test]
fn a_backend_without_a_mac_is_held_out_and_the_guards_judge_the_rest() {
    let lab = lab(4);
    // No host answers at 198.18.0.40: after the resolution timeout it is
    // held out of the table, shown in status, and traffic is unaffected.
    let (code, added) = json(
        &lab,
        &["backend", "add", "web4", "198.18.0.40", "--name", "b9"],
    );
    assert_applied(code, &added, true);
    let warnings = codes(&added, "warnings");
    assert!(warnings.contains(&"no-mac"), "{warnings:?}");
    let (_, status) = json(&lab, &["status"]);
    let b9 = status["vips"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "b9")
        .expect("b9 in status")
        .clone();
    assert_eq!(b9["held_out"], true, "{b9}");
    assert_eq!(b9["expected_share"], 0.0, "{b9}");
    assert_even_split(&lab, 4);

    // Three of four backends unresolvable: held out, only one would be
    // left, and the concentration guards refuse it.
    let before = generation(&lab);
    let text = std::fs::read_to_string(lab.config_path()).unwrap();
    let mut dark = text.clone();
    for (from, to) in [
        ("198.18.0.12", "198.18.0.42"),
        ("198.18.0.13", "198.18.0.43"),
        ("198.18.0.14", "198.18.0.44"),
    ] {
        dark = dark.replacen(
            &format!("address = \"{from}\""),
            &format!("address = \"{to}\""),
            1,
        );
    }
    let path = lab.config_path().with_extension("dark.toml");
    std::fs::write(&path, dark).unwrap();
    let (code, refused) = json(&lab, &["apply", path.to_str().unwrap(), "--force"]);
    assert_eq!(code, 1, "{refused}");
    let codes = codes(&refused, "problems");
    assert!(codes.contains(&"too-few-backends"), "{codes:?}");
    assert_eq!(generation(&lab), before);
    assert_even_split(&lab, 4);
}

#[test]
fn a_change_of_the_interfaces_own_mac_is_followed() {
    let lab = lab(3);
    // As a bond failing over to another port would: the load balancer's
    // interface takes another MAC, and the client learns it afresh.
    lab.lb()
        .ip(&["link", "set", "eth0", "address", "02:f0:00:00:00:42"])
        .unwrap();
    lab.await_log("changed from", Duration::from_secs(10))
        .expect("the daemon follows the interface's MAC");
    for family in ["-4", "-6"] {
        lab.client().ip(&[family, "neigh", "flush", "all"]).unwrap();
    }
    for ipv6 in [false, true] {
        let address = if ipv6 {
            IpAddr::V6(VIP6)
        } else {
            IpAddr::V4(VIP4)
        };
        let vip = SocketAddr::new(address, TCP_PORT);
        let tcp = traffic::tcp_connections(lab.client(), vip, 60, 4).unwrap();
        assert_eq!((tcp.answered(), tcp.failures), (60, 0), "{vip}: {tcp:?}");
    }
}

#[test]
fn a_backend_mac_change_is_followed() {
    let lab = lab(3);
    assert_even_split(&lab, 3);
    let (host, v4, v6) = lab.backend_host(0);
    let new_mac = "02:f0:00:00:00:99";
    host.ip(&["link", "set", "eth0", "address", new_mac])
        .unwrap();
    // The load balancer's kernel learns the new MAC (as a gratuitous ARP
    // would teach it); fulcrum follows within its neighbour poll.
    lab.lb()
        .ip(&[
            "neigh",
            "replace",
            &v4.to_string(),
            "lladdr",
            new_mac,
            "dev",
            "eth0",
        ])
        .unwrap();
    lab.lb()
        .ip(&[
            "-6",
            "neigh",
            "replace",
            &v6.to_string(),
            "lladdr",
            new_mac,
            "dev",
            "eth0",
        ])
        .unwrap();
    assert!(
        wait_until_logged(&lab, "neighbours: applied"),
        "fulcrum followed the MAC change: {:?}",
        lab.fulcrum_log()
    );
    assert_even_split(&lab, 3);
    let journal = std::fs::read_to_string(lab.journal()).unwrap();
    assert!(journal.contains("\"source\":\"neighbours\""), "{journal}");
}
