//! Monitoring against a running `fulcrum run` in the namespace lab: the
//! `/metrics` scrape agrees with the kernel's counters and with `status`,
//! keeps counting across a daemon restart, and counts refusals; and the
//! imbalance detector flags clients whose flows all hash to one backend
//! (source ports chosen with the kernel's own hash), in `status`, in the
//! log and in the metrics, while even traffic is never flagged; and a real
//! Prometheus, running the project's alert rules against the daemon,
//! fires the imbalance alert for that skew and nothing for even traffic.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::maps::PROTO_UDP;
use lb_tests::{
    lab::{BackendSpec, Lab, METRICS, UDP_PORT, VIP_NAMES, VIP4},
    prometheus::{Prometheus, rules_file},
    scrape::{Samples, dashboard_metrics},
    status::status,
    traffic, wait,
};
use lb_userspace::{
    config::{Config, MacAddr},
    dataplane::state::{DesiredState, flow_key},
};
use serde_json::Value;

/// Metrics a daemon exports only with `[announce]`.
const ANNOUNCE_ONLY: [&str; 2] = ["fulcrum_vip_announced", "fulcrum_announce_ok"];

fn counter(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .get(name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape"))
}

#[test]
fn metrics_agree_with_the_kernel_and_survive_a_restart() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let traffic = lab.drive(60, 60, 20000).expect("traffic");
    for (vip, tally) in &traffic {
        assert_eq!(tally.failures, 0, "{vip}: every flow answered");
    }
    let before = lab.scrape().expect("a scrape");
    let report = status(&lab);

    // Every VIP and backend counter equals what status read from the maps,
    // and the backends' new flows add up to their VIP's.
    for vip in report["vips"].as_array().unwrap() {
        let name = vip["name"].as_str().unwrap();
        assert!(VIP_NAMES.contains(&name));
        let v = [("vip", name)];
        for (metric, field) in [
            ("fulcrum_vip_packets_total", "packets"),
            ("fulcrum_vip_bytes_total", "bytes"),
            ("fulcrum_vip_new_flows_total", "new_flows"),
        ] {
            assert_eq!(
                counter(&before, metric, &v),
                vip[field].as_f64().unwrap(),
                "{metric} of {name}"
            );
        }
        assert!(counter(&before, "fulcrum_vip_new_flows_total", &v) >= 60.0);
        let mut flows = 0.0;
        for backend in vip["backends"].as_array().unwrap() {
            let b = [
                ("vip", name),
                ("backend", backend["name"].as_str().unwrap()),
            ];
            let new_flows = counter(&before, "fulcrum_backend_new_flows_total", &b);
            assert_eq!(new_flows, backend["new_flows"].as_f64().unwrap());
            flows += new_flows;
            let expected = counter(&before, "fulcrum_backend_expected_share", &b);
            assert!((expected - 1.0 / 3.0).abs() < 0.01, "{name}: {expected}");
            assert_eq!(counter(&before, "fulcrum_backend_imbalanced", &b), 0.0);
        }
        assert_eq!(flows, counter(&before, "fulcrum_vip_new_flows_total", &v));
    }
    // The verdicts: forwarded packets are the VIPs' packets; every new flow
    // missed the connection table and was inserted.
    let total = |name: &str| -> f64 { before.series(name).iter().map(|(_, v)| v).sum() };
    let vip_packets = total("fulcrum_vip_packets_total");
    assert_eq!(
        counter(
            &before,
            "fulcrum_packets_total",
            &[("action", "tx"), ("reason", "tx")]
        ),
        vip_packets
    );
    let vip_flows = total("fulcrum_vip_new_flows_total");
    assert_eq!(
        counter(
            &before,
            "fulcrum_conn_table_inserts_total",
            &[("result", "ok")]
        ),
        vip_flows
    );
    assert!(
        counter(
            &before,
            "fulcrum_conn_table_lookups_total",
            &[("result", "hit")]
        ) > 0.0
    );
    // The connection table: its capacity, and its ways by state add up to
    // it; the lab's established flows are in it (its table is small enough
    // to be read whole).
    let capacity = counter(&before, "fulcrum_conn_table_capacity", &[]);
    assert_eq!(capacity, 262_144.0);
    assert_eq!(total("fulcrum_conn_table_ways"), capacity);
    let live = ["established", "unproven", "closing"]
        .iter()
        .map(|state| counter(&before, "fulcrum_conn_table_ways", &[("state", state)]))
        .sum::<f64>();
    assert!(live > 0.0, "the lab's flows hold ways");
    let fill = counter(&before, "fulcrum_conn_table_fill_ratio", &[]);
    assert!(
        (fill - live / capacity).abs() < 1e-9,
        "{fill} vs {live}/{capacity}"
    );
    assert_eq!(
        counter(&before, "fulcrum_conn_table_evictions_total", &[]),
        0.0
    );
    assert_eq!(counter(&before, "fulcrum_dataplane_attached", &[]), 1.0);
    assert_eq!(
        counter(&before, "fulcrum_config_generation", &[]),
        report["generation"].as_f64().unwrap()
    );
    assert_eq!(counter(&before, "fulcrum_last_apply_success", &[]), 1.0);

    // A restart keeps every counter: they live in the pinned maps.
    lab.kill_fulcrum().expect("kill -9");
    lab.start_fulcrum().expect("fulcrum restarts");
    let after = lab.scrape().expect("a scrape after the restart");
    for (labels, value) in before.series("fulcrum_backend_packets_total") {
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // Nothing lost; a late segment of the lab's traffic (a
        // retransmitted FIN) may still add one.
        let kept = counter(&after, "fulcrum_backend_packets_total", &labels);
        assert!(
            (value..=value + 2.0).contains(&kept),
            "{labels:?} across the restart: {value} before, {kept} after"
        );
    }
    lab.drive(10, 10, 21000).expect("more traffic");
    let more = lab.scrape().expect("a third scrape");
    let web4 = [("vip", "web4")];
    assert!(
        counter(&more, "fulcrum_vip_new_flows_total", &web4)
            >= counter(&before, "fulcrum_vip_new_flows_total", &web4) + 10.0,
        "the counters go on counting"
    );

    // A refused change is counted by its reason, and the last apply failed.
    let (code, _, _) = lab
        .cli(&["backend", "set-weight", "web4", "b1", "100"])
        .expect("fulcrum backend runs");
    assert_eq!(code, 1, "the seed's mistake is refused");
    let refused = lab.scrape().expect("a scrape after the refusal");
    assert_eq!(
        counter(
            &refused,
            "fulcrum_apply_decisions_total",
            &[("result", "refused")]
        ),
        1.0
    );
    assert!(
        counter(
            &refused,
            "fulcrum_apply_refusals_total",
            &[("code", "concentration")]
        ) >= 1.0
    );
    assert_eq!(counter(&refused, "fulcrum_last_apply_success", &[]), 0.0);
    assert_eq!(
        counter(&refused, "fulcrum_config_file_in_force", &[]),
        1.0,
        "a refused API change leaves the file in force"
    );

    // Every metric the shipped Grafana dashboard queries is in the scrape (the
    // refusal counters appear with the first refusal).
    let queried = dashboard_metrics();
    // Health checks start at a random point of their first interval.
    let mut first = Some(refused);
    let refused = wait::until(
        Duration::from_secs(10),
        || {
            let samples = match first.take() {
                Some(samples) => samples,
                None => lab.scrape()?,
            };
            let checked = samples.names().contains("fulcrum_backend_check_seconds");
            Ok(if checked { Ok(samples) } else { Err(()) })
        },
        |()| Ok("no health check in the metrics".into()),
    )
    .expect("a health check");
    assert!(queried.len() >= 10, "the dashboard queries {queried:?}");
    let exported = refused.names();
    // Exported with `[announce]` only: the ECMP group lab checks them.
    for name in ANNOUNCE_ONLY {
        assert!(queried.contains(name), "the dashboard shows {name}");
    }
    for name in queried
        .iter()
        .filter(|n| !ANNOUNCE_ONLY.contains(&n.as_str()))
    {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }

    lab.stop_fulcrum().expect("fulcrum stops");
}

#[test]
fn a_severed_link_is_reported_and_a_restart_attaches_again() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    lab.drive(20, 20, 20000).expect("traffic");
    let attached = |samples: &Samples| counter(samples, "fulcrum_dataplane_attached", &[]);
    assert_eq!(attached(&lab.scrape().expect("a scrape")), 1.0);

    // Detached from outside: the metric and status say so at once.
    lab.sever_link().expect("BPF_LINK_DETACH");
    assert!(
        !lab.lb_has_xdp().unwrap(),
        "nothing attached to eth0 any more"
    );
    let detached = lab.scrape().expect("a scrape");
    assert_eq!(
        attached(&detached),
        0.0,
        "the metric reads the kernel's link"
    );
    let (_, text, _) = lab.cli(&["status"]).expect("status");
    assert!(text.contains("NOT attached"), "{text}");

    // A restart attaches the pinned data plane again, on the same maps.
    lab.kill_fulcrum().expect("kill -9");
    let log = lab.start_fulcrum().expect("fulcrum restarts");
    assert!(
        log.iter()
            .any(|l| l.contains("was no longer attached to eth0")),
        "the restart says what it found: {log:?}"
    );
    assert!(lab.lb_has_xdp().unwrap(), "attached again");
    let traffic = lab.drive(20, 20, 21000).expect("traffic after the restart");
    for (vip, tally) in &traffic {
        assert_eq!(tally.failures, 0, "{vip}: every flow answered");
    }
    let after = lab.scrape().expect("a scrape");
    assert_eq!(attached(&after), 1.0);
    let web4 = [("vip", "web4")];
    assert!(
        counter(&after, "fulcrum_vip_new_flows_total", &web4)
            >= counter(&detached, "fulcrum_vip_new_flows_total", &web4) + 20.0,
        "the same counters go on counting"
    );
    lab.stop_fulcrum().expect("fulcrum stops");
}

/// Source ports from `from` on whose flows from the client to dns4 the
/// kernel's hash gives backend `target` (by the same table and hash).
fn ports_hashing_to(lab: &Lab, target: &str, from: u16, count: usize) -> Vec<u16> {
    let text = std::fs::read_to_string(lab.config_path()).unwrap();
    let config = Config::parse(&text).unwrap();
    let state = DesiredState::build(&config, |_| Ok(MacAddr([2, 0, 0, 0, 0, 1]))).unwrap();
    let seed = config.flow_hash_seed.expect("the lab sets the seed").0;
    let client = IpAddr::V4(lab.client_addrs().0);
    let vip = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    let ports: Vec<u16> = (from..u16::MAX)
        .filter(|&port| {
            let key = flow_key(SocketAddr::new(client, port), vip, PROTO_UDP);
            state
                .backend_for(&key, &seed)
                .is_some_and(|b| b.label == target)
        })
        .take(count)
        .collect();
    assert_eq!(ports.len(), count, "enough ports hash to {target}");
    ports
}

/// Sends one UDP flow to dns4 from each port, `per_second` a second.
fn paced_flows(lab: &Lab, ports: &[u16], per_second: usize) {
    let vip = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    for chunk in ports.chunks(per_second / 4) {
        let started = Instant::now();
        for &port in chunk {
            let tally = traffic::udp_flows(lab.client(), vip, 1, port).expect("a UDP flow");
            assert_eq!(tally.failures, 0, "port {port} answered");
        }
        std::thread::sleep(Duration::from_millis(250).saturating_sub(started.elapsed()));
    }
}

fn dns4_backend<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "dns4")
        .and_then(|v| v["backends"].as_array())
        .and_then(|b| b.iter().find(|b| b["name"] == name))
        .expect("dns4's backend in status")
}

/// A short window, so that the test sees the flag within seconds.
const SKEW_SETTINGS: &str =
    "\n[imbalance]\nfactor = 1.5\nwindow_s = 6\nfor_s = 2\nmin_flow_rate = 5\n";

#[test]
fn flows_that_all_hash_to_one_backend_are_flagged() {
    let lab = Lab::start_with(&BackendSpec::equal(3), SKEW_SETTINGS).expect("lab starts");

    // Even traffic: ports in a row spread over all three backends.
    let even: Vec<u16> = (30000..30000 + 200).collect();
    paced_flows(&lab, &even, 40);
    let report = status(&lab);
    for name in ["b1", "b2", "b3"] {
        let backend = dns4_backend(&report, name);
        assert_eq!(backend["imbalanced"], false, "even traffic: {backend}");
        let observed = backend["observed_share"].as_f64().unwrap();
        assert!((0.15..0.55).contains(&observed), "{name}: {observed}");
    }

    // Skewed clients: every flow hashes to b2.
    let skewed = ports_hashing_to(&lab, "b2", 40000, 400);
    let flagged = std::thread::scope(|scope| {
        let sender = scope.spawn(|| paced_flows(&lab, &skewed, 40));
        let flagged = wait::until(
            Duration::from_secs(20),
            || {
                let report = status(&lab);
                let imbalanced = dns4_backend(&report, "b2")["imbalanced"] == true;
                Ok(if imbalanced { Ok(report) } else { Err(()) })
            },
            |()| Ok("b2 not flagged under skewed traffic".into()),
        );
        sender.join().expect("the sender");
        flagged
    });
    let report = flagged.expect("b2 flagged");
    let backend = dns4_backend(&report, "b2");
    assert!(
        backend["observed_share"].as_f64().unwrap() > 0.5,
        "{backend}"
    );
    let dns4 = report["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "dns4")
        .unwrap();
    assert!(dns4["imbalance_ratio"].as_f64().unwrap() >= 1.5, "{dns4}");
    for name in ["b1", "b3"] {
        assert_eq!(dns4_backend(&report, name)["imbalanced"], false);
    }
    let samples = lab.scrape().expect("a scrape");
    let b2 = [("vip", "dns4"), ("backend", "b2")];
    assert_eq!(samples.get("fulcrum_backend_imbalanced", &b2), Some(1.0));
    let warning = lab
        .fulcrum_log()
        .into_iter()
        .find(|l| l.contains("WARNING imbalance: VIP dns4"))
        .expect("a warning in the log");
    assert!(
        warning.contains("backend b2") && warning.contains("generation 1 (start"),
        "the warning names the backend and the last change: {warning}"
    );
    let (_, text, _) = lab.cli(&["status"]).expect("status");
    assert!(text.contains("IMBALANCE: VIP dns4 backend b2"), "{text}");
    lab.stop_fulcrum().expect("fulcrum stops");
}

#[test]
fn a_real_prometheus_fires_the_imbalance_alert_for_skew_and_nothing_for_even_traffic() {
    let lab = Lab::start_with(&BackendSpec::equal(3), SKEW_SETTINGS).expect("lab starts");
    let prometheus =
        Prometheus::start(lab.lb(), METRICS, &rules_file()).expect("prometheus starts");
    // Wait for the first scrape, so that "no alert" means something.
    wait::until(
        Duration::from_secs(20),
        || {
            let up = prometheus.query_one("up{job=\"fulcrum\"}").ok().flatten();
            Ok(if up == Some(1.0) { Ok(()) } else { Err(()) })
        },
        |()| {
            Ok(format!(
                "prometheus never scraped fulcrum: {}",
                prometheus.log()
            ))
        },
    )
    .expect("a first scrape");

    // Even traffic for longer than the detector's window and for_s: no
    // alert of any kind is pending or firing.
    let even: Vec<u16> = (30000..30000 + 400).collect();
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| paced_flows(&lab, &even, 40));
        while !sender.is_finished() {
            std::thread::sleep(Duration::from_secs(1));
            let alerts = prometheus.alerts().expect("alerts");
            assert!(alerts.is_empty(), "even traffic raised {alerts:?}");
        }
    });
    // Prometheus scraped the even flows (its last scrape may be a second old).
    wait::until(
        Duration::from_secs(5),
        || {
            let seen = prometheus.query_one("sum(fulcrum_vip_new_flows_total{vip=\"dns4\"})")?;
            Ok(if seen.is_some_and(|flows| flows >= 400.0) {
                Ok(())
            } else {
                Err(seen)
            })
        },
        |seen| Ok(format!("prometheus saw {seen:?} of the 400 even flows")),
    )
    .expect("the even flows scraped");

    // Skewed clients: the alert fires, naming the VIP and the backend.
    let skewed = ports_hashing_to(&lab, "b2", 40000, 600);
    let started = Instant::now();
    let firing = std::thread::scope(|scope| {
        let sender = scope.spawn(|| paced_flows(&lab, &skewed, 40));
        wait::until(
            Duration::from_secs(20),
            || {
                let alert = prometheus.alerts()?.into_iter().find(|a| {
                    a.labels["alertname"] == "FulcrumBackendImbalanced" && a.state == "firing"
                });
                match alert {
                    Some(alert) => Ok(Ok((alert, started.elapsed()))),
                    None if sender.is_finished() => anyhow::bail!("the skew ended first"),
                    None => Ok(Err(())),
                }
            },
            |()| Ok("FulcrumBackendImbalanced did not fire".into()),
        )
    });
    let (alert, after) = firing.expect("FulcrumBackendImbalanced fired while the skew lasted");
    // The skew outweighs the even flows still in the 6 s window after about
    // 2 s; then for_s (2 s), a scrape and an evaluation (1 s each).
    eprintln!("FulcrumBackendImbalanced fired {after:?} after the skew began");
    assert!(after < Duration::from_secs(10), "fired after {after:?}");
    assert_eq!(alert.labels["vip"], "dns4", "{:?}", alert.labels);
    assert_eq!(alert.labels["backend"], "b2", "{:?}", alert.labels);
    lab.stop_fulcrum().expect("fulcrum stops");
}
