//! Backends on other networks, end to end: a client, the load balancer and
//! two backends each on a subnet of its own behind a router namespace. The
//! real `fulcrum run` encapsulates (4in4, 4in6, 6in4 and GUE 6in6) to the
//! router's MAC; the backends decapsulate with `fulcrum decap` and answer
//! the client directly. The path from the router to the client carries
//! less than the links (1400 bytes against 1500), so large transfers work
//! only if path MTU discovery works through the VIP both ways.

use std::net::{IpAddr, SocketAddr};

use lb_tests::{
    lab::{BackendSpec, CLIENT_PATH_MTU, Lab, TCP_PORT, VIP4, VIP6, traffic_problems},
    traffic,
};

/// Connections per TCP VIP: at 4000 flows a 3-point bound on a share is
/// about 4 standard deviations.
const TCP_CONNECTIONS: usize = 4000;
/// Flows per UDP VIP (source ports 20000.., each new).
const UDP_FLOWS: u16 = 2000;
/// Allowed distance between a backend's share and its weight share.
const SHARE_BOUND: f64 = 0.03;
/// Transfers per family and direction, and their size: enough flows that
/// an ICMP error sent to the wrong backend would stall some of them.
const TRANSFERS: usize = 12;
const TRANSFER_BYTES: usize = 1 << 20;

/// Two backends weighted 1:2, which the default guards would refuse.
const GUARDS: &str = "\n[guards]\nmax_backend_share = 0.7\n";

fn backends() -> Vec<BackendSpec> {
    [("b1", 1), ("b2", 2)]
        .into_iter()
        .map(|(name, weight)| BackendSpec {
            name: name.into(),
            weight,
        })
        .collect()
}

#[test]
fn encapsulated_traffic_reaches_backends_behind_a_router() {
    let backends = backends();
    let lab = Lab::start_routed(&backends, GUARDS).expect("routed lab starts");
    assert!(lab.lb_has_xdp().unwrap(), "fulcrum attached XDP to the LB");
    let started = lab.fulcrum_log().join("\n");
    assert!(
        !started.contains("outer-source-elsewhere"),
        "the outer sources are the load balancer's, yet:\n{started}"
    );
    let traffic = lab
        .drive(TCP_CONNECTIONS, UDP_FLOWS, 20000)
        .expect("traffic runs");
    let mut problems = traffic_problems(
        &traffic,
        &backends,
        (TCP_CONNECTIONS, UDP_FLOWS),
        SHARE_BOUND,
    );
    for index in 0..backends.len() {
        let counters = lab.decap_counters(index).expect("decap status");
        let decapsulated = counters
            .iter()
            .find(|(name, _)| name == "decapsulated")
            .map_or(0, |(_, n)| *n);
        eprintln!("backend {index} decapsulation counters: {counters:?}");
        if decapsulated == 0 {
            problems.push(format!("backend {index} decapsulated nothing"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn path_mtu_discovery_works_through_the_vip_both_ways() {
    let backends = backends();
    let lab = Lab::start_routed(&backends, GUARDS).expect("routed lab starts");
    let mut problems = Vec::new();
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let vip = SocketAddr::new(vip, TCP_PORT);
        let mut served = std::collections::BTreeMap::<String, usize>::new();
        // Uploads first (a backend that learned the client's smaller path
        // advertises a smaller MSS): the client's full-size packets do not
        // fit once encapsulated; the load balancer answers them as too big.
        for _ in 0..TRANSFERS {
            if let Err(e) = traffic::upload(lab.client(), vip, TRANSFER_BYTES) {
                problems.push(format!("upload to {vip}: {e:#}"));
            }
        }
        // Downloads: the backends' full-size replies meet the client's
        // smaller path; the router's "fragmentation needed" / "packet too
        // big" goes to the VIP, and the load balancer must pass it to the
        // backend that owns the flow.
        for _ in 0..TRANSFERS {
            match traffic::download(lab.client(), vip, TRANSFER_BYTES) {
                Ok(backend) => *served.entry(backend).or_default() += 1,
                Err(e) => problems.push(format!("download from {vip}: {e:#}")),
            }
        }
        eprintln!("{vip}: downloads served by {served:?}");
    }
    lab.request_counters().expect("SIGUSR1");
    let reports = lab.stop_fulcrum().expect("fulcrum stops and reports");
    let report = reports.last().expect("a report");
    let reason = |name: &str| report.reasons.get(name).copied().unwrap_or(0);
    eprintln!(
        "icmp_to_backend {}, tx_too_big {}, path MTU to the client {CLIENT_PATH_MTU}",
        reason("icmp_to_backend"),
        reason("tx_too_big")
    );
    if reason("icmp_to_backend") == 0 {
        problems.push("no ICMP error reached a backend through the load balancer".into());
    }
    if reason("tx_too_big") == 0 {
        problems.push("the load balancer answered no packet as too big".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_outer_source_prefix_elsewhere_is_warned_about() {
    let lab = Lab::start_routed(&backends(), GUARDS).expect("routed lab starts");
    let config = std::fs::read_to_string(lab.config_path()).expect("config");
    let moved = config.replace("2001:2:0:64::/64", "2001:2:0:65::/64");
    assert_ne!(
        moved, config,
        "the lab's config names its IPv6 outer source"
    );
    let path = lab.config_path().with_file_name("moved.toml");
    std::fs::write(&path, moved).expect("config written");
    let (code, stdout, stderr) = lab
        .cli(&["apply", path.to_str().expect("a path")])
        .expect("fulcrum apply runs");
    assert_eq!(code, 0, "a warning does not refuse: {stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("outer-source-elsewhere"),
        "no warning about 2001:2:0:65::/64: {stdout}{stderr}"
    );
}
