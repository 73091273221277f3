//! Health checks in the namespace lab, against a running `fulcrum run`
//! with fast checks, and long-lived TCP connections open to every backend
//! throughout: a dead backend leaves the table and comes back, no
//! connection to another backend breaks, and two dead of three put the VIP
//! in panic (every backend kept) instead of piling it onto the third. UDP
//! flows pinned to a dead backend reach a live one on their next datagram.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{BackendSpec, Lab, UDP_PORT, VIP_NAMES, VIP4},
    status::{backend, sessions, status, vip, wait_for, web4},
    traffic,
};
use serde_json::Value;

/// Checks every 300 ms, down after 2 failures, up after 2 successes.
const FAST_CHECKS: &str =
    "\n[health_check]\ninterval_ms = 300\ntimeout_ms = 200\nrise = 2\nfall = 2\n";
/// interval x fall + interval, as the issue bounds detection, plus the
/// time for the change to go through the gate.
const DETECTION: Duration = Duration::from_millis(300 * 2 + 300 + 1500);

/// Each of `vips` is in panic with b1 and b2 down, and keeps every
/// backend.
fn b1_b2_down_in_panic_all_kept(s: &Value, vips: &[&str]) -> bool {
    vips.iter().all(|v| {
        vip(s, v)["health"]["panic"] == true
            && ["b1", "b2"]
                .iter()
                .all(|b| backend(s, v, b)["health"] == "down")
            && ["b1", "b2", "b3"]
                .iter()
                .all(|b| backend(s, v, b)["taken_down"] == false)
    })
}

#[test]
fn a_dead_backend_leaves_the_table_and_comes_back_without_breaking_others() {
    let lab = Lab::start_with(&BackendSpec::equal(3), FAST_CHECKS).expect("lab starts");
    let mut open = sessions(&lab, &["b1", "b2", "b3"]);
    // UDP flows pinned to b2 in the connection table.
    let dns4 = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    let pinned: Vec<u16> = (30000..30060)
        .filter(|&port| {
            let tally = traffic::udp_flows(lab.client(), dns4, 1, port).expect("a UDP flow");
            tally.answers.contains_key("b2")
        })
        .collect();
    assert!(!pinned.is_empty(), "some UDP flows land on b2");

    // (a) b2's service dies.
    let stopped = Instant::now();
    lab.stop_backend(1);
    let (down, _) = wait_for(&lab, DETECTION, |s| {
        ["web4", "dns4"]
            .iter()
            .all(|v| backend(s, v, "b2")["taken_down"] == true)
    });
    eprintln!(
        "b2 out of the table {:?} after it stopped",
        stopped.elapsed()
    );
    let b2 = backend(&down, "web4", "b2");
    assert_eq!(b2["health"], "down", "{b2}");
    assert_eq!(b2["expected_share"], 0.0, "{b2}");
    let samples = lab.scrape().expect("a scrape");
    let taken_down = |name| {
        samples.get(
            "fulcrum_backend_taken_down",
            &[("vip", "web4"), ("backend", name)],
        )
    };
    assert_eq!((taken_down("b2"), taken_down("b1")), (Some(1.0), Some(0.0)));
    for name in ["b1", "b3"] {
        let share = backend(&down, "web4", name)["expected_share"]
            .as_f64()
            .unwrap();
        assert!((share - 0.5).abs() < 0.01, "{name}: {share}");
    }
    assert_eq!(vip(&down, "web4")["health"]["panic"], false);
    // Every new connection succeeds, on the others.
    let tally = traffic::tcp_connections(lab.client(), web4(), 200, 4).expect("connections");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert_eq!(tally.answers.get("b2"), None, "{tally:?}");
    // No connection to another backend broke.
    for session in open.iter_mut().filter(|s| s.backend != "b2") {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("still open"), name);
    }
    // The UDP flows pinned to b2 go back through the table on their next
    // datagram (the same 5-tuple), and reach a live backend.
    for &port in &pinned {
        let tally = traffic::udp_flows(lab.client(), dns4, 1, port).expect("a UDP flow");
        assert_eq!(tally.failures, 0, "port {port}: {tally:?}");
        assert!(!tally.answers.contains_key("b2"), "port {port}: {tally:?}");
    }
    let journal = std::fs::read_to_string(lab.journal()).expect("the journal");
    assert!(
        journal
            .lines()
            .any(|l| l.contains("\"source\":\"health\"") && l.contains("down 198.18.0.12:80")),
        "the health change is journalled: {journal}"
    );

    // A restart of the daemon keeps b2 out: the record says it is down,
    // and it must pass `rise` checks to come back.
    lab.kill_fulcrum().expect("kill -9");
    lab.start_fulcrum().expect("fulcrum restarts");
    // The new daemon's own check of b2 has failed: from then on, only
    // `rise` passing checks could bring it back.
    let (restarted, _) = wait_for(&lab, DETECTION, |s| {
        backend(s, "web4", "b2")["check_error"].is_string()
    });
    assert_eq!(
        backend(&restarted, "web4", "b2")["taken_down"],
        true,
        "still out after the restart"
    );
    let journal = std::fs::read_to_string(lab.journal()).expect("the journal");
    assert!(
        !journal.contains("back 198.18.0.12:80"),
        "the restart never put b2 back while it failed: {journal}"
    );

    // (b) b2 comes back: after `rise` checks it has its share again.
    lab.start_backend(1).expect("b2 restarts");
    let (back, _) = wait_for(&lab, DETECTION, |s| {
        backend(s, "web4", "b2")["taken_down"] == false
            && backend(s, "web4", "b2")["health"] == "up"
    });
    let share = backend(&back, "web4", "b2")["expected_share"]
        .as_f64()
        .unwrap();
    assert!((share - 1.0 / 3.0).abs() < 0.01, "{share}");
    let tally = traffic::tcp_connections(lab.client(), web4(), 300, 4).expect("connections");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert!(
        tally.share("b2") > 0.2,
        "b2 takes new flows again: {tally:?}"
    );
    for session in open.iter_mut().filter(|s| s.backend != "b2") {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("still open"), name);
    }
    lab.stop_fulcrum().expect("fulcrum stops");
}

#[test]
fn two_dead_of_three_is_panic_not_concentration() {
    let lab = Lab::start_with(&BackendSpec::equal(3), FAST_CHECKS).expect("lab starts");
    let mut open = sessions(&lab, &["b1", "b2", "b3"]);
    lab.stop_backend(0);
    lab.stop_backend(1);
    let (panic, _) = wait_for(&lab, DETECTION * 2, |s| {
        b1_b2_down_in_panic_all_kept(s, &["web4"])
    });
    // The table is the configured one: b3 keeps its third, no more.
    for name in ["b1", "b2", "b3"] {
        let share = backend(&panic, "web4", name)["expected_share"]
            .as_f64()
            .unwrap();
        assert!((share - 1.0 / 3.0).abs() < 0.01, "{name}: {share}");
    }
    // Connections to the dead ones are refused (fail open), and b3 takes
    // its third of the attempts, not all of them.
    let tally = traffic::tcp_connections(lab.client(), web4(), 300, 4).expect("connections");
    let b3 = tally.answers.get("b3").copied().unwrap_or(0) as f64 / 300.0;
    assert!(
        (0.2..0.45).contains(&b3),
        "b3 takes its share of new flows, no more: {tally:?}"
    );
    for session in open.iter_mut().filter(|s| s.backend == "b3") {
        assert_eq!(session.ask().expect("still open"), "b3");
    }
    assert!(
        lab.fulcrum_log()
            .iter()
            .any(|l| l.contains("WARNING panic: VIP web4")),
        "the alarm is in the log: {:?}",
        lab.fulcrum_log()
    );
    let (_, text, _) = lab.cli(&["status"]).expect("status");
    assert!(text.contains("PANIC: VIP web4"), "{text}");
    let samples = lab.scrape().expect("a scrape");
    assert_eq!(
        samples.get("fulcrum_vip_panic", &[("vip", "web4")]),
        Some(1.0)
    );
    assert_eq!(
        samples.get(
            "fulcrum_backend_healthy",
            &[("vip", "web4"), ("backend", "b1")]
        ),
        Some(0.0)
    );
    assert_eq!(
        samples.get(
            "fulcrum_backend_taken_down",
            &[("vip", "web4"), ("backend", "b1")]
        ),
        Some(0.0),
        "in panic a dead backend is kept"
    );
    lab.stop_fulcrum().expect("fulcrum stops");
}

#[test]
fn a_flapping_backend_changes_the_table_no_more_than_damping_allows() {
    let settings = "\n[health_check]\ninterval_ms = 150\ntimeout_ms = 100\nrise = 1\nfall = 1\n\
                    max_changes_per_minute = 4\n";
    let lab = Lab::start_with(&BackendSpec::equal(3), settings).expect("lab starts");
    // b3 goes down and up six times. Each turn waits for its checks to
    // see it and for the daemon to answer: the table follows (b3 out when
    // down, in when up) or the change is held back and counted.
    let damped = |s: &Value| vip(s, "web4")["health"]["changes"]["damped"].as_u64();
    let b3_judged = |health: &'static str, out: bool, damped_before: Option<u64>| {
        move |s: &Value| {
            let b3 = backend(s, "web4", "b3");
            b3["health"] == health && (b3["taken_down"] == out || damped(s) > damped_before)
        }
    };
    for _ in 0..6 {
        let before = damped(&status(&lab));
        lab.stop_backend(2);
        wait_for(
            &lab,
            Duration::from_secs(10),
            b3_judged("down", true, before),
        );
        let before = damped(&status(&lab));
        lab.start_backend(2).expect("b3 restarts");
        wait_for(
            &lab,
            Duration::from_secs(10),
            b3_judged("up", false, before),
        );
    }
    let now = status(&lab);
    let changes = &vip(&now, "web4")["health"]["changes"];
    let applied = changes["applied"].as_u64().unwrap();
    assert!(
        (1..=4).contains(&applied),
        "at most 4 table changes in the minute: {changes}"
    );
    assert!(
        changes["damped"].as_u64().unwrap() >= 1,
        "the rest were held back and counted: {changes}"
    );
    let samples = lab.scrape().expect("a scrape");
    let damped = [("vip", "web4"), ("result", "damped")];
    assert!(samples.get("fulcrum_vip_health_changes_total", &damped) >= Some(1.0));
    lab.stop_fulcrum().expect("fulcrum stops");
}

#[test]
fn a_slow_health_endpoint_shows_in_the_check_latency_before_it_fails() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    const PORT: u16 = 8081;
    let settings = format!(
        "\n[health_check]\nkind = \"http\"\nport = {PORT}\nhttp_path = \"/health\"\n\
         interval_ms = 400\ntimeout_ms = 300\nrise = 2\nfall = 2\n"
    );
    let lab = Lab::start_with(&BackendSpec::equal(3), &settings).expect("lab starts");
    let stop = Arc::new(AtomicBool::new(false));
    let delays: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let endpoints: Vec<_> = delays
        .iter()
        .enumerate()
        .map(|(i, delay)| {
            traffic::health_endpoint(lab.backend_host(i).0, PORT, delay, &stop)
                .expect("a health endpoint")
        })
        .collect();
    let fast = |s: &Value| {
        let b1 = backend(s, "web4", "b1");
        b1["health"] == "up" && b1["check_ms"].as_f64().is_some_and(|ms| ms < 50.0)
    };
    wait_for(&lab, Duration::from_secs(5), fast);
    // b1's endpoint slows to 150 ms: its latency rises, it stays up.
    delays[0].store(150, Ordering::Relaxed);
    let (slow, _) = wait_for(&lab, Duration::from_secs(5), |s| {
        backend(s, "web4", "b1")["check_avg_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 100.0)
    });
    let b1 = backend(&slow, "web4", "b1");
    assert_eq!(b1["health"], "up", "{b1}");
    assert_eq!(b1["taken_down"], false, "{b1}");
    let samples = lab.scrape().expect("a scrape");
    let latency = samples
        .get(
            "fulcrum_backend_check_seconds",
            &[("vip", "web4"), ("backend", "b1")],
        )
        .expect("the latency metric");
    assert!(latency > 0.1, "{latency}");
    // Slower than the timeout: it fails, and leaves the table.
    delays[0].store(500, Ordering::Relaxed);
    let (down, _) = wait_for(&lab, Duration::from_secs(5), |s| {
        backend(s, "web4", "b1")["taken_down"] == true
    });
    let error = backend(&down, "web4", "b1")["check_error"].clone();
    assert!(error.to_string().contains("timed out"), "{error}");
    stop.store(true, Ordering::Relaxed);
    for endpoint in endpoints {
        let _ = endpoint.join();
    }
    lab.stop_fulcrum().expect("fulcrum stops");
}

#[test]
fn draining_keeps_connections_and_wait_returns_when_they_close() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let mut open = sessions(&lab, &["b1", "b2", "b3"]);
    let on_b2 = open.iter().filter(|s| s.backend == "b2").count() as u64;
    let before = status(&lab);
    let active = backend(&before, "web4", "b2")["active_flows"]
        .as_u64()
        .unwrap();
    assert!(
        active >= on_b2,
        "status counts b2's {on_b2} open connections: {active}"
    );

    // Drain b2 and wait for it, in the background.
    let drain = std::process::Command::new(lb_tests::lab::fulcrum_binary().unwrap())
        .args([
            "backend",
            "drain",
            "web4",
            "b2",
            "--wait",
            "--timeout",
            "60",
        ])
        .arg("--socket")
        .arg(lab.socket())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fulcrum backend drain --wait");
    wait_for(&lab, Duration::from_secs(10), |s| {
        backend(s, "web4", "b2")["expected_share"] == 0.0
    });
    // b2's connections live on; new ones never reach it.
    for session in open.iter_mut() {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("still open"), name);
    }
    let tally = traffic::tcp_connections(lab.client(), web4(), 200, 4).expect("connections");
    assert_eq!(tally.failures, 0, "{tally:?}");
    assert_eq!(tally.answers.get("b2"), None, "{tally:?}");
    let draining = status(&lab);
    assert!(
        backend(&draining, "web4", "b2")["active_flows"]
            .as_u64()
            .unwrap()
            >= on_b2,
        "b2's connections are still counted"
    );

    // The clients close their connections to b2: the wait ends.
    open.retain(|s| s.backend != "b2");
    let output = drain.wait_with_output().expect("drain ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("b2: 0 active flows"), "{stderr}");
    assert!(stderr.contains("b2 is drained"), "{stderr}");
    for session in open.iter_mut() {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("others still open"), name);
    }
    lab.stop_fulcrum().expect("fulcrum stops");
}

#[test]
fn a_restart_in_the_middle_of_a_panic_keeps_the_panic_and_the_table() {
    let lab = Lab::start_with(&BackendSpec::equal(3), FAST_CHECKS).expect("lab starts");
    let mut open = sessions(&lab, &["b1", "b2", "b3"]);
    // b1's and b2's checks fail while their services keep serving the
    // connections held to them.
    lab.blind_checks(0, true).expect("b1's checks fail");
    lab.blind_checks(1, true).expect("b2's checks fail");
    // Every VIP: the checks of both families fail.
    let (panic, _) = wait_for(&lab, DETECTION * 2, |s| {
        b1_b2_down_in_panic_all_kept(s, &VIP_NAMES)
    });
    let digests = |s: &Value| -> Vec<Value> {
        VIP_NAMES
            .iter()
            .map(|v| vip(s, v)["table_digest"].clone())
            .collect()
    };
    let (digest, generation) = (digests(&panic), panic["generation"].clone());

    let journalled = std::fs::read_to_string(lab.journal())
        .expect("the journal")
        .lines()
        .count();
    lab.kill_fulcrum().expect("kill -9");
    let log = lab.start_fulcrum().expect("fulcrum restarts");
    // The new daemon starts from the recorded failures: in panic at once.
    assert!(
        log.iter().any(|l| l.contains("WARNING panic: VIP")),
        "{}",
        log.join("\n")
    );
    let early = status(&lab);
    assert_eq!(vip(&early, "web4")["health"]["panic"], true, "{early:#}");
    // Once every backend is judged by the new daemon's own checks, the
    // VIP is still in panic and its table never changed.
    let (settled, _) = wait_for(&lab, DETECTION * 2, |s| {
        VIP_NAMES
            .iter()
            .all(|v| vip(s, v)["health"]["settling"].is_null())
    });
    assert!(
        b1_b2_down_in_panic_all_kept(&settled, &VIP_NAMES),
        "{settled:#}"
    );
    assert_eq!(digests(&settled), digest);
    assert_eq!(settled["generation"], generation, "no table changed");
    for session in &mut open {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("still open"), name);
    }
    let journal = std::fs::read_to_string(lab.journal()).expect("the journal");
    let since: Vec<&str> = journal.lines().skip(journalled).collect();
    assert!(
        !since.iter().any(|l| l.contains("\"source\":\"health\"")),
        "no health-driven change since the restart: {since:#?}"
    );

    // b1's checks pass again: the panic ends, and b2 (proven dead by the
    // new daemon's checks) leaves the table; no held connection to b1 or
    // b3 breaks.
    lab.blind_checks(0, false).expect("b1's checks pass");
    wait_for(&lab, DETECTION * 2, |s| {
        vip(s, "web4")["health"]["panic"] == false
            && backend(s, "web4", "b2")["taken_down"] == true
            && backend(s, "web4", "b1")["taken_down"] == false
    });
    for session in open.iter_mut().filter(|s| s.backend != "b2") {
        let name = session.backend.clone();
        assert_eq!(session.ask().expect("still open"), name);
    }
    lab.stop_fulcrum().expect("fulcrum stops");
}
