//! Watched changes in the namespace lab, against a running `fulcrum run`
//! and clients that keep connecting: a benign change made with `--watch`
//! is kept; adding a backend whose health checks pass while it leaves its
//! clients' SYNs unanswered is rolled back within the watch, the file on
//! disk is what is installed again, and no held connection to the other
//! backends breaks.

use std::time::Duration;

use lb_tests::{
    lab::{BackendSpec, Lab},
    status::{backend, sessions, status, vip, web4},
    traffic,
};

/// Fast checks, outlier intervals of 4 s judged on 10 attempts.
const SETTINGS: &str = "\n[health_check]\ninterval_ms = 300\ntimeout_ms = 200\nrise = 2\nfall = 2\n\
     [outlier]\ninterval_s = 4\nmin_syns = 10\n";

/// 24 clients, each connecting at most every 100 ms and giving up after
/// one SYN retransmission.
const CLIENTS: traffic::Clients = traffic::Clients {
    workers: 24,
    patience: Duration::from_millis(1500),
    pace: Duration::from_millis(100),
};

fn backends(lab: &Lab) -> Vec<String> {
    vip(&status(lab), "web4")["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["name"].as_str().expect("a name").to_string())
        .collect()
}

#[test]
fn a_change_that_blackholes_clients_is_rolled_back_and_a_benign_one_kept() {
    let lab = Lab::start_with(&BackendSpec::equal(4), SETTINGS).expect("lab starts");
    let mut open = sessions(&lab, &["b1", "b2", "b3"]);
    let mut kept = String::new();
    traffic::while_connecting(lab.client(), web4(), CLIENTS, || {
        // A benign change, watched: kept.
        let (code, stdout, stderr) = lab
            .cli(&["backend", "remove", "web4", "b4", "--watch", "10"])
            .expect("fulcrum backend remove");
        assert_eq!(code, 0, "{stdout} {stderr}");
        assert!(stdout.contains("\nkept\n"), "{stdout}");
        assert_eq!(backends(&lab), ["b1", "b2", "b3"]);
        kept = std::fs::read_to_string(lab.config_path()).expect("the config file");

        // b4 comes back, passing its checks but dropping its clients.
        lab.drop_clients(3, true).expect("b4 drops its clients");
        let (code, stdout, stderr) = lab
            .cli(&[
                "backend",
                "add",
                "web4",
                "198.18.0.14",
                "--name",
                "b4",
                "--watch",
                "30",
            ])
            .expect("fulcrum backend add");
        eprintln!("{stdout}{stderr}");
        assert_eq!(code, 1, "a rolled-back change exits 1: {stdout} {stderr}");
        assert!(stdout.contains("rolled back as generation"), "{stdout}");
        assert!(
            stdout.contains("198.18.0.14:80 of 198.18.100.1:80/tcp became an outlier")
                || stdout.contains("completes"),
            "the evidence: {stdout}"
        );
        assert!(stderr.contains("rolled back"), "{stderr}");
    });
    // What is installed is the config before the change, on disk too.
    assert_eq!(backends(&lab), ["b1", "b2", "b3"]);
    let (code, body) =
        lb_tests::api::request(lab.socket(), "GET", "/v1/config", b"").expect("GET /v1/config");
    assert_eq!(code, 200, "{body}");
    let installed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let on_disk = std::fs::read_to_string(lab.config_path()).expect("the config file");
    assert_eq!(
        installed["config"], on_disk,
        "the file is what is installed"
    );
    assert_eq!(on_disk, kept, "the file is the config before the change");
    let journal = std::fs::read_to_string(lab.journal()).expect("the journal");
    assert!(
        journal
            .lines()
            .any(|l| l.contains("\"source\":\"rollback\"") && l.contains("rolls back generation")),
        "the rollback is journalled with why: {journal}"
    );
    let samples = lab.scrape().expect("a scrape");
    let watches = |result| samples.get("fulcrum_watches_total", &[("result", result)]);
    assert_eq!(
        (watches("kept"), watches("rolled_back")),
        (Some(1.0), Some(1.0))
    );
    // Every held connection to the others is intact.
    for session in open.iter_mut().filter(|s| s.backend != "b4") {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("still open"), name);
    }
    let b1 = backend(&status(&lab), "web4", "b1").clone();
    assert!(
        (b1["expected_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 0.01,
        "{b1}"
    );
    lab.stop_fulcrum().expect("fulcrum stops");
}
