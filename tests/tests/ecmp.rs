//! Scale-out behind ECMP, end to end: two Fulcrum hosts announce the VIPs
//! over BGP (BIRD), a router spreads flows over both with its L4
//! multipath hash, and because both hosts hash with one seed and hold
//! identical tables, a flow reaches the same backend through either host:
//! also when one host goes away under open connections, and after a
//! backend change rolled out host by host.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_tests::{
    group_lab::{GROUP, GroupLab},
    lab::{BackendSpec, UDP_PORT, VIP4, VIP6},
    scrape::dashboard_metrics,
    traffic::{self, Session},
};
use serde_json::Value;

/// How long BGP may take to converge on a change.
const CONVERGE: Duration = Duration::from_secs(30);

/// Long-lived connections per VIP family.
const SESSIONS: usize = 40;

fn both_hops(lab: &GroupLab, ipv6: bool) -> Vec<IpAddr> {
    let mut hops = vec![lab.host_addr(0, ipv6), lab.host_addr(1, ipv6)];
    hops.sort();
    hops
}

/// Host `i`'s answer to `fulcrum explain` for a TCP flow.
fn explain(lab: &GroupLab, i: usize, source: SocketAddr, vip: SocketAddr) -> Value {
    let (code, stdout, stderr) = lab
        .cli(
            i,
            &[
                "explain",
                "tcp",
                &source.to_string(),
                &vip.to_string(),
                "--format",
                "json",
            ],
        )
        .expect("fulcrum explain");
    assert_eq!(code, 0, "explain on host {i}: {stderr}");
    serde_json::from_str(&stdout).expect("explain's JSON")
}

/// New flows per VIP name on host `i`.
fn new_flows(lab: &GroupLab, i: usize) -> BTreeMap<String, u64> {
    let status = lab.status(i).expect("status");
    status
        .vips
        .iter()
        .map(|v| (v.name.clone(), v.new_flows))
        .collect()
}

/// `fulcrum compare` of the two running hosts: exit code and output.
fn compare(lab: &GroupLab) -> (i32, String) {
    let (a, b) = (lab.socket(0), lab.socket(1));
    let (code, stdout, stderr) = lab
        .cli(
            0,
            &[
                "compare",
                &a.display().to_string(),
                &b.display().to_string(),
            ],
        )
        .expect("fulcrum compare");
    (code, format!("{stdout}{stderr}"))
}

/// Opens `SESSIONS` connections to the web VIP of each family; some of
/// them cross host 1.
fn open_sessions(lab: &GroupLab) -> Vec<(SocketAddr, Session)> {
    let mut sessions = Vec::new();
    for ipv6 in [false, true] {
        let vip = GroupLab::web(ipv6);
        for _ in 0..SESSIONS {
            let session = Session::open(lab.client(), vip).expect("a session opens");
            sessions.push((vip, session));
        }
    }
    let crossed_host1 = sessions
        .iter()
        .filter(|(vip, session)| {
            let source = session.source().expect("source");
            explain(lab, 1, source, *vip)["via"] == "connection-table"
        })
        .count();
    assert!(crossed_host1 > 0, "no connection crossed host 1");
    sessions
}

#[test]
fn two_hosts_announce_share_flows_and_take_over_from_each_other() {
    let lab = GroupLab::start(&BackendSpec::equal(3), "").expect("the group lab starts");
    for ipv6 in [false, true] {
        let vip = GroupLab::web(ipv6).ip();
        let took = lab
            .await_next_hops(vip, &both_hops(&lab, ipv6), CONVERGE)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
        eprintln!("{vip}: ECMP over both hosts after {took:?}");
    }

    // Both hosts announce every VIP, in one group, with one seed and
    // identical tables, and say so.
    let statuses: Vec<_> = (0..2).map(|i| lab.status(i).expect("status")).collect();
    for (i, status) in statuses.iter().enumerate() {
        let group = status.group.as_ref().expect("a group in the status");
        assert_eq!(group.name.as_deref(), Some(GROUP));
        let announce = status.announce.as_ref().expect("announcing in the status");
        assert_eq!(announce.error, None, "host {i}");
        for vip in &status.vips {
            assert_eq!(vip.announced, Some(true), "host {i} VIP {}", vip.name);
        }
    }
    assert_eq!(statuses[0].group, statuses[1].group);
    let digests = |i: usize| -> Vec<&str> {
        statuses[i]
            .vips
            .iter()
            .map(|v| v.table_digest.as_str())
            .collect()
    };
    assert_eq!(digests(0), digests(1));
    let (code, text) = compare(&lab);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("verdict: IDENTICAL"), "{text}");

    // Long-lived connections, then many short ones: both hosts take new
    // flows, and every one is answered.
    let mut sessions = open_sessions(&lab);
    let before: Vec<_> = (0..2).map(|i| new_flows(&lab, i)).collect();
    let web4 = GroupLab::web(false);
    let dns4 = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    let tcp = traffic::tcp_connections(lab.client(), web4, 400, 4).expect("tcp");
    let udp = traffic::udp_flows(lab.client(), dns4, 200, 20000).expect("udp");
    assert_eq!((tcp.answered(), tcp.failures), (400, 0), "{tcp:?}");
    assert_eq!((udp.answered(), udp.failures), (200, 0), "{udp:?}");
    let after: Vec<_> = (0..2).map(|i| new_flows(&lab, i)).collect();
    let mut spread = Vec::new();
    for i in 0..2 {
        for vip in ["web4", "dns4"] {
            let rose = after[i][vip] - before[i][vip];
            spread.push(rose);
            eprintln!("host {i} {vip}: {rose} new flows");
            assert!(
                rose > 0,
                "host {i} took no new {vip} flow: ECMP did not spread"
            );
        }
    }
    assert_eq!(spread[0] + spread[2], 400, "web4 new flows over both hosts");
    assert_eq!(spread[1] + spread[3], 200, "dns4 new flows over both hosts");

    // Every long-lived flow is where both hosts' explain says it goes;
    // host 0's connection table tells which flows crossed it.
    let mut crossed_host0 = Vec::new();
    for (index, (vip, session)) in sessions.iter().enumerate() {
        let source = session.source().expect("source");
        for i in 0..2 {
            let answer = explain(&lab, i, source, *vip);
            assert_eq!(
                answer["backend"].as_str(),
                Some(session.backend.as_str()),
                "host {i} predicts another backend for {source} -> {vip}: {answer}"
            );
            if i == 0 && answer["via"] == "connection-table" {
                crossed_host0.push(index);
            }
        }
    }
    eprintln!(
        "{} of {} long-lived connections crossed host 0",
        crossed_host0.len(),
        sessions.len()
    );
    assert!(!crossed_host0.is_empty(), "no connection crossed host 0");
    assert!(
        crossed_host0.len() < sessions.len(),
        "every connection crossed host 0"
    );

    // Host 0 goes: `fulcrum detach` withdraws its routes first.
    let (code, _, stderr) = lab.cli(0, &["detach"]).expect("fulcrum detach");
    assert_eq!(code, 0, "detach: {stderr}");
    lab.kill_fulcrum(0).expect("host 0's fulcrum exits");
    // The routes went before the data plane did: detach waits drain_s
    // after BIRD took the withdrawal.
    for ipv6 in [false, true] {
        let vip = GroupLab::web(ipv6).ip();
        assert_eq!(
            lab.next_hops(vip).expect("route"),
            vec![lab.host_addr(1, ipv6)],
            "host 0 detached while the router still sent it {vip}"
        );
    }
    for ipv6 in [false, true] {
        let vip = GroupLab::web(ipv6).ip();
        let took = lab
            .await_next_hops(vip, &[lab.host_addr(1, ipv6)], CONVERGE)
            .expect("BGP withdraws host 0's route");
        eprintln!("{vip}: host 0 withdrawn after {took:?} more");
    }
    assert!(
        lab.host_routes(0)
            .expect("birdc")
            .lines()
            .all(|l| !l.contains("fulcrum")),
        "host 0's BIRD still has Fulcrum's routes"
    );

    // Established connections carry on, on the same backend, whichever
    // host they had crossed; new ones all succeed through host 1.
    for (index, (vip, session)) in sessions.iter_mut().enumerate() {
        let answer = session
            .ask()
            .unwrap_or_else(|e| panic!("connection {index} to {vip} broke: {e:#}"));
        assert_eq!(answer, session.backend, "connection {index} moved backend");
    }
    let before = new_flows(&lab, 1);
    let tcp = traffic::tcp_connections(lab.client(), web4, 300, 4).expect("tcp");
    let udp = traffic::udp_flows(lab.client(), dns4, 100, 30000).expect("udp");
    assert_eq!((tcp.answered(), tcp.failures), (300, 0), "{tcp:?}");
    assert_eq!((udp.answered(), udp.failures), (100, 0), "{udp:?}");
    let after = new_flows(&lab, 1);
    assert_eq!(
        after["web4"] - before["web4"],
        300,
        "host 1 took every new flow"
    );
    assert_eq!(
        after["dns4"] - before["dns4"],
        100,
        "host 1 took every new flow"
    );

    // Removing the IPv6 VIPs withdraws their address, and only that.
    let text = std::fs::read_to_string(lab.config_path(1)).expect("config");
    let (vips, group) = text.split_once("\n[group]\n").expect("the group's section");
    let kept: Vec<&str> = vips
        .split("\n[[vip]]\n")
        .filter(|part| !part.contains("2001:2:0:100::1"))
        .collect();
    let path = lab.config_path(1).with_extension("v4.toml");
    // Another drain_s too: announcing settings change live.
    let group = group.replace("drain_s = 2", "drain_s = 1");
    let text = format!("{}\n[group]\n{group}", kept.join("\n[[vip]]\n"));
    std::fs::write(&path, text).expect("write");
    let (code, stdout, stderr) = lab
        .cli(1, &["apply", "--force", &path.display().to_string()])
        .expect("apply");
    assert_eq!(code, 0, "apply without the IPv6 VIPs: {stdout}{stderr}");
    lab.await_next_hops(IpAddr::V6(VIP6), &[], CONVERGE)
        .expect("the IPv6 VIPs' address withdrawn");
    let vip4 = IpAddr::V4(VIP4);
    assert_eq!(
        lab.next_hops(vip4).expect("route"),
        vec![lab.host_addr(1, false)]
    );

    // A data plane detached from under the daemon: withdrawn too.
    lab.sever_link(1).expect("detach from outside");
    let took = lab.await_next_hops(vip4, &[], CONVERGE).expect("withdrawn");
    eprintln!("a severed data plane withdrawn after {took:?}");
    let status = lab.status(1).expect("status");
    assert!(!status.attached);
    assert!(status.vips.iter().all(|v| v.announced == Some(false)));
}

/// `text` with backend `name`'s weight set to `weight` in every VIP.
fn reweighted(text: &str, name: &str, weight: u32) -> String {
    let mut out = String::new();
    let mut in_backend = false;
    for line in text.lines() {
        if line.starts_with("name = ") {
            in_backend = line == format!("name = \"{name}\"");
        }
        if in_backend && line.starts_with("weight = ") {
            out += &format!("weight = {weight}\n");
            in_backend = false;
        } else {
            out += line;
            out += "\n";
        }
    }
    out
}

/// Every VIP's table digest on host `i`, as its metrics export them.
fn exported_digests(lab: &GroupLab, i: usize) -> BTreeMap<String, f64> {
    let samples = lab.scrape(i).expect("scrape");
    samples
        .series("fulcrum_vip_table_digest")
        .into_iter()
        .map(|(labels, value)| (labels["vip"].clone(), value))
        .collect()
}

#[test]
fn a_change_rolled_out_host_by_host_ends_identical_and_a_cut_link_fails_over() {
    let lab = GroupLab::start(&BackendSpec::equal(3), "").expect("the group lab starts");
    let vip4 = IpAddr::V4(VIP4);
    lab.await_next_hops(vip4, &both_hops(&lab, false), CONVERGE)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!(exported_digests(&lab, 0), exported_digests(&lab, 1));

    // A dead controller is not a dead data plane: the pinned program
    // forwards and the route stays, through the daemon's restart too.
    // The router's paths, with when it learnt each: a withdrawal and a
    // new announcement would show as a newer time.
    let learnt = lab.router_paths(vip4).expect("the router's route");
    assert_eq!(learnt.len(), 2, "{learnt:?}");
    lab.kill_fulcrum(0).expect("kill -9 host 0's fulcrum");
    let tcp = traffic::tcp_connections(lab.client(), GroupLab::web(false), 100, 4).expect("tcp");
    assert_eq!((tcp.answered(), tcp.failures), (100, 0), "{tcp:?}");
    lab.start_fulcrum(0).expect("fulcrum restarts on host 0");
    // Once the restarted daemon's checks have settled, it has decided what
    // to announce for good: a flap would have happened by then.
    let settled = lab
        .await_status(0, Duration::from_secs(20), |report| {
            report.announce.as_ref().is_some_and(|announce| {
                !announce.vips.is_empty() && announce.vips.iter().all(|v| v.ready && !v.settling)
            })
        })
        .expect("the restarted daemon settles");
    assert_eq!(settled.vips[0].announced, Some(true));
    let now = lab.router_paths(vip4).expect("the router's route");
    let same = now.len() == learnt.len()
        && now
            .iter()
            .zip(&learnt)
            .all(|((p, t), (q, u))| p == q && (t - u).abs() < 0.5);
    assert!(
        same,
        "the route flapped across the daemon's death and restart: {learnt:?} then {now:?}"
    );

    // Host 0 first: plan, then apply, its own config file with b1 at
    // weight 2 (each host's file has its own BIRD paths).
    let changed: Vec<_> = (0..2)
        .map(|i| {
            let text = std::fs::read_to_string(lab.config_path(i)).expect("config");
            let path = lab.config_path(i).with_extension("next.toml");
            std::fs::write(&path, reweighted(&text, "b1", 2)).expect("write");
            path.display().to_string()
        })
        .collect();
    let (code, plan, stderr) = lab.cli(0, &["plan", &changed[0]]).expect("plan");
    assert_eq!(code, 0, "plan on host 0: {plan}{stderr}");
    assert!(plan.contains("flows move"), "{plan}");
    let (code, stdout, stderr) = lab.cli(0, &["apply", &changed[0]]).expect("apply");
    assert_eq!(code, 0, "apply on host 0: {stdout}{stderr}");

    // Half-way, the hosts disagree, and everything says so: compare (with
    // the slots), the status digests and the exported ones.
    let (code, text) = compare(&lab);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("verdict: DIFFERENT"), "{text}");
    assert!(text.contains("seed: the same"), "{text}");
    assert_eq!(
        text.matches("DIFFERENT: ").count(),
        4,
        "every VIP differs: {text}"
    );
    let (half0, half1) = (exported_digests(&lab, 0), exported_digests(&lab, 1));
    assert_eq!(half0.len(), 4);
    for (vip, digest) in &half0 {
        assert_ne!(
            Some(digest),
            half1.get(vip),
            "VIP {vip}'s digests agree half-way through the rollout"
        );
    }
    // A flow new to host 1 now may go elsewhere than through host 0; the
    // traffic still flows.
    let tcp = traffic::tcp_connections(lab.client(), GroupLab::web(false), 100, 4).expect("tcp");
    assert_eq!((tcp.answered(), tcp.failures), (100, 0), "{tcp:?}");

    // Then host 1: identical again, by compare and by the metrics.
    let (code, stdout, stderr) = lab.cli(1, &["apply", &changed[1]]).expect("apply");
    assert_eq!(code, 0, "apply on host 1: {stdout}{stderr}");
    let (code, text) = compare(&lab);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("verdict: IDENTICAL"), "{text}");
    let (end0, end1) = (exported_digests(&lab, 0), exported_digests(&lab, 1));
    assert_eq!(end0, end1);
    assert_ne!(end0, half1, "the change did not reach the tables");
    // The dashboard's scale-out row shows what a host of a group that
    // announces exports (the monitoring test covers the rest).
    let exported = lab.scrape(0).expect("scrape");
    let exported = exported.names();
    let shown = dashboard_metrics();
    for name in [
        "fulcrum_group_info",
        "fulcrum_vip_table_digest",
        "fulcrum_vip_announced",
        "fulcrum_announce_ok",
    ] {
        assert!(shown.contains(name), "the dashboard does not show {name}");
        assert!(
            exported.contains(name),
            "a group host does not export {name}"
        );
    }

    // Long-lived connections through both hosts; then host 1's cable is
    // pulled. Its BIRD withdraws (check link), the router's BGP session to
    // it times out, and its flows carry on through host 0.
    let mut sessions = open_sessions(&lab);
    lab.cut_link(1).expect("cut host 1's link");
    let took = lab
        .await_next_hops(vip4, &[lab.host_addr(0, false)], CONVERGE)
        .expect("the router drops host 1");
    eprintln!("host 1 gone from the router's route after {took:?}");
    for (index, (vip, session)) in sessions.iter_mut().enumerate() {
        let answer = session
            .ask()
            .unwrap_or_else(|e| panic!("connection {index} to {vip} broke: {e:#}"));
        assert_eq!(answer, session.backend, "connection {index} moved backend");
    }
    let tcp = traffic::tcp_connections(lab.client(), GroupLab::web(false), 200, 4).expect("tcp");
    assert_eq!((tcp.answered(), tcp.failures), (200, 0), "{tcp:?}");

    // Host 0 taken down as under systemd: the daemon stopped, then
    // `fulcrum detach --interface`, which withdraws first by itself.
    lab.kill_fulcrum(0).expect("stop host 0's fulcrum");
    let (code, stderr) = lab.detach_offline(0).expect("fulcrum detach --interface");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("BIRD withdrew every route"), "{stderr}");
    assert_eq!(lab.next_hops(vip4).expect("route"), Vec::<IpAddr>::new());
}

/// Health checks quick enough that an outage of a few seconds is longer
/// than `fall` intervals.
const QUICK_CHECKS: &str =
    "\n[health_check]\ninterval_ms = 300\ntimeout_ms = 200\nrise = 2\nfall = 2\n";

#[test]
fn a_host_cut_off_silently_withdraws_and_rejoins_only_once_its_checks_settle() {
    let lab = GroupLab::start(&BackendSpec::equal(3), QUICK_CHECKS).expect("the group lab starts");
    let vip4 = IpAddr::V4(VIP4);
    for ipv6 in [false, true] {
        let vip = GroupLab::web(ipv6).ip();
        lab.await_next_hops(vip, &both_hops(&lab, ipv6), CONVERGE)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    }
    let before = lab.status(1).expect("status");
    let digests = exported_digests(&lab, 1);
    let mut sessions = open_sessions(&lab);

    // Host 1's switch port stops forwarding; its link stays up. Its checks
    // all fail (panic: the table keeps everyone), the BGP sessions time
    // out, and only then does it withdraw: it is cut off.
    lab.isolate(1, true).expect("cut host 1 off");
    let took = lab
        .await_next_hops(vip4, &[lab.host_addr(0, false)], CONVERGE)
        .expect("the router drops host 1");
    eprintln!("host 1 gone from the router's route after {took:?}");
    let cut_off = lab
        .await_status(1, CONVERGE, |report| {
            let announce = report.announce.as_ref().expect("announce report");
            announce.routes.is_empty() && announce.vips.iter().all(|v| v.why.contains("cut off"))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert!(
        cut_off
            .vips
            .iter()
            .all(|v| v.health.as_ref().is_some_and(|h| h.panic)),
        "every VIP of host 1 is in panic: {:?}",
        cut_off.vips
    );
    for (index, (vip, session)) in sessions.iter_mut().enumerate() {
        let answer = session
            .ask()
            .unwrap_or_else(|e| panic!("connection {index} to {vip} broke while cut off: {e:#}"));
        assert_eq!(answer, session.backend, "connection {index} moved backend");
    }

    // Back: BGP comes up again, but host 1 is announced only once every
    // backend has passed its checks again; its table never changed.
    lab.isolate(1, false).expect("let host 1 back");
    for ipv6 in [false, true] {
        let vip = GroupLab::web(ipv6).ip();
        lab.await_next_hops(vip, &both_hops(&lab, ipv6), CONVERGE)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    }
    let log = lab.logs();
    let host1 = log.split("--- host 1:").nth(1).expect("host 1's log");
    // After the withdrawal: every VIP recovers (and settles) before any
    // route comes back.
    let since = host1
        .rfind("announce: BIRD now announces no routes")
        .map(|at| &host1[at..])
        .unwrap_or_else(|| panic!("host 1 never withdrew:\n{host1}"));
    let recovered = since
        .match_indices("it settles again")
        .map(|(at, _)| at)
        .max();
    let announced = since.find("announce: BIRD now announces 198.18");
    assert!(
        matches!((recovered, announced), (Some(r), Some(a)) if r < a)
            && since.matches("it settles again").count() == 4,
        "host 1 announced again before every VIP's checks recovered:\n{host1}"
    );
    for (index, (vip, session)) in sessions.iter_mut().enumerate() {
        let answer = session
            .ask()
            .unwrap_or_else(|e| panic!("connection {index} to {vip} broke at the rejoin: {e:#}"));
        assert_eq!(answer, session.backend, "connection {index} moved backend");
    }
    let after = lab
        .await_status(1, CONVERGE, |report| {
            report
                .vips
                .iter()
                .all(|v| v.health.as_ref().is_some_and(|h| !h.panic))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!(
        after.generation, before.generation,
        "host 1's tables changed across the outage:\n{host1}"
    );
    assert_eq!(exported_digests(&lab, 1), digests);
    let tcp = traffic::tcp_connections(lab.client(), GroupLab::web(false), 200, 4).expect("tcp");
    assert_eq!((tcp.answered(), tcp.failures), (200, 0), "{tcp:?}");
}
