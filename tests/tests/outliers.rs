//! Passive health in the namespace lab, against a running `fulcrum run`
//! and clients that keep connecting: a backend whose health checks pass
//! while its service leaves every client's SYN unanswered is ejected from
//! the table on its handshakes alone, its peers untouched and every held
//! connection intact, and comes back after its ejection; when two of four
//! misbehave only `max_ejection_percent` of the weight is ejected, and
//! when all of them do, nobody is.

use std::time::{Duration, Instant};

use lb_tests::{
    lab::{BackendSpec, Lab},
    status::{backend, sessions, status, vip, wait_for, web4},
    traffic::{self, Tally},
};
use serde_json::Value;

/// Fast checks, outlier intervals of 4 s judged on 10 attempts, ejections
/// of 6 s.
const SETTINGS: &str = "\n[health_check]\ninterval_ms = 300\ntimeout_ms = 200\nrise = 2\nfall = 2\n\
     [outlier]\ninterval_s = 4\nmin_syns = 10\nbase_ejection_s = 6\n";

/// The outlier detector's interval.
const INTERVAL: Duration = Duration::from_secs(4);

/// An outlier is ejected within two intervals of the fault (the first may
/// hold healthy attempts), a tick of the controller and the gate.
const EJECTION: Duration = Duration::from_secs(4 * 2 + 2 + 3);

/// 24 clients, each connecting at most every 100 ms and giving up after
/// one SYN retransmission: 4 attempts a second or more on each of four
/// backends, whether they answer or not.
const CLIENTS: traffic::Clients = traffic::Clients {
    workers: 24,
    patience: Duration::from_millis(1500),
    pace: Duration::from_millis(100),
};

/// Runs `body` while `CLIENTS` keep connecting to web4; returns what
/// they met.
fn with_clients(lab: &Lab, body: impl FnOnce()) -> Tally {
    traffic::while_connecting(lab.client(), web4(), CLIENTS, body)
}

fn ejected(status: &Value, name: &str) -> bool {
    backend(status, "web4", name)["ejected"] == true
}

fn share(status: &Value, name: &str) -> f64 {
    backend(status, "web4", name)["expected_share"]
        .as_f64()
        .expect("a share")
}

#[test]
fn a_backend_that_answers_checks_but_not_clients_is_ejected_and_returns() {
    let lab = Lab::start_with(&BackendSpec::equal(4), SETTINGS).expect("lab starts");
    let mut open = sessions(&lab, &["b1", "b2", "b3", "b4"]);
    let mut seen = Value::Null;
    let mut took = Duration::ZERO;
    let met = with_clients(&lab, || {
        // The clients reach every backend first.
        wait_for(&lab, EJECTION, |s| {
            vip(s, "web4")["outliers"]
                .as_str()
                .is_some_and(|v| v.starts_with("judged"))
        });
        let fault = Instant::now();
        lab.drop_clients(3, true).expect("b4 drops its clients");
        let (now, after) = wait_for(&lab, EJECTION, |s| ejected(s, "b4"));
        eprintln!(
            "b4 ejected {:?} after its SYNs went unanswered",
            fault.elapsed()
        );
        (seen, took) = (now, after);
    });
    eprintln!("while b4 dropped its clients: {met:?}");
    let b4 = backend(&seen, "web4", "b4");
    assert_eq!(b4["health"], "up", "its checks still pass: {b4}");
    assert_eq!(b4["taken_down"], false, "{b4}");
    assert_eq!(share(&seen, "b4"), 0.0, "out of the table: {b4}");
    for name in ["b1", "b2", "b3"] {
        assert!(!ejected(&seen, name), "{name} untouched");
        assert!((share(&seen, name) - 1.0 / 3.0).abs() < 0.01, "{name}");
    }
    assert!(took <= EJECTION);
    let samples = lab.scrape().expect("a scrape");
    let gauge =
        |family: &str, name: &str| samples.get(family, &[("vip", "web4"), ("backend", name)]);
    assert_eq!(
        (
            gauge("fulcrum_backend_ejected", "b4"),
            gauge("fulcrum_backend_ejected", "b1")
        ),
        (Some(1.0), Some(0.0))
    );
    let journal = std::fs::read_to_string(lab.journal()).expect("the journal");
    let entry = journal
        .lines()
        .find(|l| {
            l.contains("\"source\":\"outlier\"") && l.contains("eject 198.18.0.14:80 (handshakes")
        })
        .unwrap_or_else(|| panic!("the ejection is journalled with its figures: {journal}"));
    assert!(entry.contains("ejection 1, for 6 s"), "{entry}");
    lab.await_log(
        "WARNING outlier: VIP 198.18.100.1:80/tcp backend 198.18.0.14:80",
        Duration::ZERO,
    )
    .expect("the log says so");
    // Every new connection succeeds, on the others; held ones are intact.
    let tally = traffic::tcp_connections(lab.client(), web4(), 100, 4).expect("connections");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert_eq!(tally.answers.get("b4"), None, "{tally:?}");
    for session in open.iter_mut().filter(|s| s.backend != "b4") {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("still open"), name);
    }

    // The service is back: after its ejection b4 takes new flows again.
    lab.drop_clients(3, false).expect("b4 serves its clients");
    let (back, after) = wait_for(&lab, Duration::from_secs(6 + 5), |s| {
        !ejected(s, "b4") && share(s, "b4") > 0.2
    });
    eprintln!("b4 back {after:?} later");
    assert!(!ejected(&back, "b1"));
    let tally = traffic::tcp_connections(lab.client(), web4(), 200, 4).expect("connections");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert!(
        tally.share("b4") > 0.1,
        "b4 takes new flows again: {tally:?}"
    );
    assert!(
        journal_has(&lab, "back 198.18.0.14:80 (after 6 s)"),
        "the return is journalled"
    );
    // Its own held connections stayed on it throughout: an ejection
    // keeps established flows.
    for session in &mut open {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("still open"), name);
    }
    lab.stop_fulcrum().expect("fulcrum stops");
}

fn journal_has(lab: &Lab, text: &str) -> bool {
    std::fs::read_to_string(lab.journal())
        .expect("the journal")
        .lines()
        .any(|l| l.contains("\"source\":\"outlier\"") && l.contains(text))
}

#[test]
fn ejections_stop_at_the_limit_and_a_vip_wide_failure_ejects_nobody() {
    let lab = Lab::start_with(&BackendSpec::equal(4), SETTINGS).expect("lab starts");
    with_clients(&lab, || {
        wait_for(&lab, EJECTION, |s| {
            vip(s, "web4")["outliers"]
                .as_str()
                .is_some_and(|v| v.starts_with("judged"))
        });
        // Two of four misbehave: 25% of the weight is one backend.
        for index in [2, 3] {
            lab.drop_clients(index, true).expect("drops its clients");
        }
        wait_for(&lab, EJECTION, |s| ejected(s, "b3") || ejected(s, "b4"));
        lab.await_log("above max_ejection_percent (25%)", EJECTION)
            .expect("the one left in says why");
        let now = status(&lab);
        let out: Vec<&str> = ["b1", "b2", "b3", "b4"]
            .into_iter()
            .filter(|b| ejected(&now, b))
            .collect();
        assert_eq!(out.len(), 1, "one of four, no more: {out:?}");
        // Now every backend misbehaves: the VIP fails as a whole.
        for index in [0, 1] {
            lab.drop_clients(index, true).expect("drops its clients");
        }
        let (failing, _) = wait_for(&lab, INTERVAL * 3 + Duration::from_secs(6), |s| {
            vip(s, "web4")["outliers"]
                .as_str()
                .is_some_and(|v| v.starts_with("nobody judged an outlier"))
                && ["b1", "b2", "b3", "b4"].iter().all(|b| !ejected(s, b))
        });
        eprintln!("{}", vip(&failing, "web4")["outliers"]);
        // It stays so while the detector judges two more intervals.
        let judged = failing["outlier_intervals"]
            .as_u64()
            .expect("intervals judged");
        let (later, _) = wait_for(&lab, INTERVAL * 3, |s| {
            s["outlier_intervals"].as_u64() >= Some(judged + 2)
        });
        assert!(
            ["b1", "b2", "b3", "b4"].iter().all(|b| !ejected(&later, b)),
            "{later:#}"
        );
        assert_eq!(
            later["generation"], failing["generation"],
            "no change since"
        );
    });
    lab.stop_fulcrum().expect("fulcrum stops");
}
