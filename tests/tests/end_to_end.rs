//! End to end, as a user would see it: real TCP connections and UDP flows
//! from a client namespace to IPv4 and IPv6 VIPs served by `fulcrum run` in
//! a load-balancer namespace, answered by three backends weighted 1:1:2.

use std::{path::Path, process::Command, sync::mpsc};

use lb_tests::lab::{BackendSpec, Lab, traffic_problems};
use lb_userspace::monitor::report::Report;

/// Connections per TCP VIP. Source ports come from the kernel, as for real
/// clients, so shares vary run to run: at 4000 flows a 3-point bound is
/// about 4 standard deviations for every backend.
const TCP_CONNECTIONS: usize = 4000;
/// Flows per UDP VIP (source ports 20000.. so every flow is new).
const UDP_FLOWS: u16 = 2000;
/// Allowed distance between a backend's share and its weight share.
const SHARE_BOUND: f64 = 0.03;

#[test]
fn traffic_follows_weights_and_counters_agree() {
    let backends: Vec<BackendSpec> = [("b1", 1), ("b2", 1), ("b3", 2)]
        .into_iter()
        .map(|(name, weight)| BackendSpec {
            name: name.into(),
            weight,
        })
        .collect();
    let lab = Lab::start(&backends).expect("lab starts");
    assert!(lab.lb_has_xdp().unwrap(), "fulcrum attached XDP to the LB");
    let traffic = lab
        .drive(TCP_CONNECTIONS, UDP_FLOWS, 20000)
        .expect("traffic runs");
    // Late segments (a retransmitted FIN) land before the first report.
    lab.await_quiet(std::time::Duration::from_secs(10))
        .expect("the traffic ends");
    // A veth has native XDP: the mode the kernel runs is in every view.
    let samples = lab.scrape().expect("a scrape");
    let native = [("mode", "native")];
    assert_eq!(
        samples.get("fulcrum_dataplane_xdp_mode", &native),
        Some(1.0)
    );
    // And where the journal is, for the alerts to name.
    let journal = lab.journal().display().to_string();
    let path = [("path", journal.as_str())];
    assert_eq!(samples.get("fulcrum_journal_info", &path), Some(1.0));
    let (_, text, _) = lab.cli(&["status"]).expect("status");
    assert!(text.contains("(attached, native XDP)"), "{text}");
    lab.request_counters().expect("SIGUSR1");
    let reports = lab.stop_fulcrum().expect("fulcrum stops and reports");
    assert_eq!(reports.len(), 2, "one report on SIGUSR1, one on exit");
    let report = &reports[1];
    assert_eq!(reports[0].xdp_mode.as_deref(), Some("native"));
    // The counters, not the window's shares, which move with time.
    let counters = |r: &Report| -> Vec<(String, u64, u64, u64)> {
        r.vips
            .iter()
            .flat_map(|v| {
                std::iter::once((v.name.clone(), v.packets, v.bytes, v.new_flows)).chain(
                    v.backends
                        .iter()
                        .map(|b| (b.name.clone(), b.packets, b.bytes, b.new_flows)),
                )
            })
            .collect()
    };
    assert_eq!(
        counters(&reports[0]),
        counters(report),
        "no traffic between the two reports, so they agree"
    );
    assert!(
        lab.lb_has_xdp().unwrap(),
        "SIGTERM leaves the data plane attached and forwarding"
    );
    lab.detach().expect("fulcrum detach");
    assert!(!lab.lb_has_xdp().unwrap(), "fulcrum detach detached it");
    eprintln!("{}", report.to_text());

    let mut problems = traffic_problems(
        &traffic,
        &backends,
        (TCP_CONNECTIONS, UDP_FLOWS),
        SHARE_BOUND,
    );
    for (vip, tally) in &traffic {
        let kernel = report
            .vips
            .iter()
            .find(|v| v.name == *vip)
            .expect("report covers every VIP");
        for backend in &backends {
            let seen = *tally.answers.get(&backend.name).unwrap_or(&0);
            let counted = kernel
                .backends
                .iter()
                .find(|b| b.name == backend.name)
                .expect("report covers every backend")
                .new_flows;
            // Every UDP flow is new exactly once. A TCP SYN the client had
            // to retransmit is hashed (and counted) again: allow 1%.
            let slack = if vip.starts_with("web") {
                TCP_CONNECTIONS as u64 / 100
            } else {
                0
            };
            if counted < seen || counted > seen + slack {
                problems.push(format!(
                    "{vip}/{}: kernel counted {counted} new flows, client saw {seen}",
                    backend.name
                ));
            }
        }
    }
    for (reason, count) in &report.reasons {
        if reason.starts_with("drop") && *count > 0 {
            problems.push(format!("kernel dropped {count} packets: {reason}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_lab_is_removed_even_when_a_test_fails() {
    let (tx, rx) = mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let backends = ["b1", "b2"].map(|name| BackendSpec {
            name: name.into(),
            weight: 1,
        });
        let lab = Lab::start(&backends).expect("lab starts");
        tx.send((lab.id().to_string(), lab.fulcrum_pid().unwrap()))
            .unwrap();
        panic!("deliberate failure while the lab runs");
    })
    .join();
    assert!(outcome.is_err(), "the inner test was meant to fail");
    let (id, pid) = rx.recv().unwrap();
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains(&id), "namespaces left behind:\n{listed}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "fulcrum (pid {pid}) still running"
    );
}
