//! Source rules in the real XDP program, through BPF_PROG_TEST_RUN: the
//! longest matching prefix decides, an allow list refuses the sources it
//! does not cover, both families, a VIP without rules beside VIPs with
//! them, and established flows refused once a rule covers them. Each drop
//! is counted by VIP, reason and rule, and a rule's count runs on across
//! applies (which write the bank not in use, and only what changed).

use std::time::Instant;

use lb_common::maps::{AdmissionDrop, Reason};
use lb_tests::{
    fixture::{Fixture, xdp_action},
    packet::{Frame, tcp_flags::*},
};
use lb_userspace::{config::Config, dataplane::state::DesiredState};

const WEB4: &str = "198.18.0.100:80";
const WEB6: &str = "[2001:2::100]:80";
const OPEN4: &str = "198.18.0.101:80";

/// Three VIPs: web4 allows 198.18.64.0/18 but not 198.18.70.0/24, except
/// 198.18.70.128/25; web6 denies 2001:2:66::/48; open4 has no rules.
fn config(web4_rules: &str) -> String {
    format!(
        r#"
table_size = 251

[[vip]]
name = "web4"
address = "198.18.0.100"
port = 80
protocol = "tcp"
{web4_rules}
backend = [
  {{ name = "b1", address = "198.18.1.1", mac = "02:00:00:00:01:01" }},
  {{ name = "b2", address = "198.18.1.2", mac = "02:00:00:00:01:02" }},
]

[[vip]]
name = "web6"
address = "2001:2::100"
port = 80
protocol = "tcp"
deny_sources = ["2001:2:66::/48"]
backend = [{{ name = "b6", address = "2001:2::1:1", mac = "02:00:00:00:06:01" }}]

[[vip]]
name = "open4"
address = "198.18.0.101"
port = 80
protocol = "tcp"
backend = [{{ name = "b1", address = "198.18.1.1", mac = "02:00:00:00:01:01" }}]
"#
    )
}

const WEB4_RULES: &str = r#"allow_sources = ["198.18.64.0/18", "198.18.70.128/25"]
deny_sources = ["198.18.70.0/24"]"#;

/// Installs `text` over the fixture's state, as an apply does.
fn apply(fixture: &mut Fixture, text: &str) {
    let config = Config::parse(text).expect("test config parses");
    let next = DesiredState::build_from(&config, Some(&fixture.state), |b| Ok(b.mac.unwrap()))
        .expect("test config builds");
    fixture.dataplane.install(&next).expect("installs");
    fixture.state = next;
}

/// Runs `frame`; returns its action and whether `DropDenied` moved.
fn verdict(fixture: &mut Fixture, frame: &Frame) -> (String, bool) {
    let before = fixture.snapshot();
    let run = fixture.run(&frame.bytes()).expect("test run");
    let after = fixture.snapshot();
    let denied = after.reason_delta(&before, Reason::DropDenied) == 1;
    (xdp_action::name(run.action), denied)
}

/// Drops VIP `name` counted for `drop`.
fn refused(fixture: &Fixture, name: &str, drop: AdmissionDrop) -> u64 {
    let vip = fixture
        .state
        .vips
        .iter()
        .find(|v| v.label == name)
        .expect("VIP installed");
    let counters = fixture.dataplane.counters().expect("counters");
    counters.refused(vip.vip_id).drops[drop as usize]
}

/// Packets deny rule `prefix` of VIP `name` dropped.
fn rule_drops(fixture: &mut Fixture, name: &str, prefix: &str) -> Option<u64> {
    let vip_id = fixture.state.vips.iter().find(|v| v.label == name)?.vip_id;
    let prefix = prefix.parse().ok()?;
    fixture
        .dataplane
        .rule_drops()
        .expect("rule counters")
        .into_iter()
        .find(|(id, p, _)| *id == vip_id && *p == prefix)
        .map(|(_, _, count)| count)
}

#[test]
fn the_longest_rule_decides_in_both_families_and_drops_are_counted() {
    let mut fixture = Fixture::with_config(&config(WEB4_RULES));
    let tx = || ("XDP_TX".to_string(), false);
    let dropped = || ("XDP_DROP".to_string(), true);
    let cases = [
        ("allowed by the /18", "198.18.65.1:40000", WEB4, tx()),
        (
            "denied by the longer /24",
            "198.18.70.5:40000",
            WEB4,
            dropped(),
        ),
        (
            "allowed again by the longer /25",
            "198.18.70.200:40000",
            WEB4,
            tx(),
        ),
        (
            "covered by no allow rule",
            "198.18.128.1:40000",
            WEB4,
            dropped(),
        ),
        (
            "IPv6, denied by the /48",
            "[2001:2:66::1]:40000",
            WEB6,
            dropped(),
        ),
        ("IPv6, outside the /48", "[2001:2:67::1]:40000", WEB6, tx()),
        (
            "a VIP without rules admits the source web4 refuses",
            "198.18.128.1:40000",
            OPEN4,
            tx(),
        ),
    ];
    let mut problems = Vec::new();
    for (what, src, dst, want) in cases {
        let got = verdict(&mut fixture, &Frame::tcp(src, dst, SYN));
        if got != want {
            problems.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(refused(&fixture, "web4", AdmissionDrop::Denied), 1);
    assert_eq!(refused(&fixture, "web4", AdmissionDrop::NotAllowed), 1);
    assert_eq!(refused(&fixture, "web6", AdmissionDrop::Denied), 1);
    assert_eq!(refused(&fixture, "open4", AdmissionDrop::Denied), 0);
    assert_eq!(rule_drops(&mut fixture, "web4", "198.18.70.0/24"), Some(1));
    assert_eq!(rule_drops(&mut fixture, "web6", "2001:2:66::/48"), Some(1));
}

#[test]
fn a_rule_applied_later_refuses_established_flows_and_counts_run_on() {
    let mut fixture = Fixture::with_config(&config(WEB4_RULES));
    let flow = "198.18.65.1:40000";
    assert_eq!(
        verdict(&mut fixture, &Frame::tcp(flow, WEB4, SYN)).0,
        "XDP_TX",
        "the SYN is admitted"
    );
    let ack = Frame::tcp(flow, WEB4, ACK).payload(b"GET /");
    assert_eq!(
        verdict(&mut fixture, &ack).0,
        "XDP_TX",
        "its flow is admitted"
    );
    verdict(&mut fixture, &Frame::tcp("198.18.70.5:40000", WEB4, SYN));
    // A deny rule for the client's /24: its established flow is refused
    // too, and the rule kept from before keeps its count.
    let tighter = WEB4_RULES.replace(
        r#"deny_sources = ["198.18.70.0/24"]"#,
        r#"deny_sources = ["198.18.70.0/24", "198.18.65.0/24"]"#,
    );
    apply(&mut fixture, &config(&tighter));
    assert_eq!(verdict(&mut fixture, &ack), ("XDP_DROP".into(), true));
    assert_eq!(rule_drops(&mut fixture, "web4", "198.18.65.0/24"), Some(1));
    assert_eq!(rule_drops(&mut fixture, "web4", "198.18.70.0/24"), Some(1));
    // Without rules (written into the bank the first state used), web4
    // admits everyone again, established flows and new ones.
    apply(&mut fixture, &config(""));
    assert_eq!(verdict(&mut fixture, &ack), ("XDP_TX".into(), false));
    let stranger = Frame::tcp("198.18.128.1:40000", WEB4, SYN);
    assert_eq!(verdict(&mut fixture, &stranger), ("XDP_TX".into(), false));
    assert_eq!(rule_drops(&mut fixture, "web4", "198.18.70.0/24"), None);
    // And back: the rules return into the other bank, over what it held.
    apply(&mut fixture, &config(&tighter));
    assert_eq!(verdict(&mut fixture, &ack), ("XDP_DROP".into(), true));
    assert_eq!(verdict(&mut fixture, &stranger), ("XDP_DROP".into(), true));
    assert_eq!(
        rule_drops(&mut fixture, "web6", "2001:2:66::/48"),
        Some(0),
        "web6's rule was never hit"
    );
}

/// Three capped VIPs: each source /24 may open 50 flows a second on
/// capped4, flows4 takes 20 new flows a second, pps6 30 packets. The
/// backends have the load balancer's own MAC, so that a repeated test run
/// (which runs each repeat on the frame the last one left) meets the same
/// path every time.
const LIMITS: &str = r#"
table_size = 251

[[vip]]
name = "capped4"
address = "198.18.0.110"
port = 80
protocol = "tcp"
limits = { source_new_flows_per_s = 50 }
backend = [{ name = "b1", address = "198.18.1.1", mac = "02:fc:00:00:00:01" }]

[[vip]]
name = "flows4"
address = "198.18.0.111"
port = 80
protocol = "tcp"
limits = { new_flows_per_s = 20 }
backend = [{ name = "b1", address = "198.18.1.1", mac = "02:fc:00:00:00:01" }]

[[vip]]
name = "pps6"
address = "2001:2::103"
port = 80
protocol = "tcp"
limits = { packets_per_s = 30 }
backend = [{ name = "b6", address = "2001:2::1:1", mac = "02:fc:00:00:00:01" }]
"#;

/// Runs `frame` `times` times (one kernel call); returns how many the
/// VIP `name` forwarded and how many it refused for `drop`.
fn burst(
    fixture: &mut Fixture,
    name: &str,
    frame: &Frame,
    times: u32,
    drop: AdmissionDrop,
) -> (u64, u64) {
    let vip_id = fixture
        .state
        .vips
        .iter()
        .find(|v| v.label == name)
        .expect("VIP installed")
        .vip_id;
    let before = fixture.snapshot();
    let refused_before = refused(fixture, name, drop);
    fixture
        .run_repeated(&frame.bytes(), times)
        .expect("test run");
    let after = fixture.snapshot();
    let forwarded = after.vips[&vip_id].packets - before.vips[&vip_id].packets;
    (forwarded, refused(fixture, name, drop) - refused_before)
}

#[test]
fn limits_cap_new_flows_per_source_and_per_vip_and_packets_but_not_established_flows() {
    let mut fixture = Fixture::with_config(LIMITS);
    let syn = |src: &str, dst: &str| Frame::tcp(src, dst, SYN);
    let capped = "198.18.0.110:80";
    let start = Instant::now();
    // One /24 opens a thousand flows at once: a second's worth (a burst of
    // 50) passes; the rest are refused, counted as source_limit.
    let (passed, limited) = burst(
        &mut fixture,
        "capped4",
        &syn("198.18.99.1:1000", capped),
        1000,
        AdmissionDrop::SourceLimit,
    );
    assert!((50..=52).contains(&passed), "{passed} passed");
    assert_eq!(passed + limited, 1000);
    // Another host of that /24 is refused too; another /24 is not.
    // Time goes on between kernel calls: the bucket refills 50 a second.
    let refill = |since: Instant| (since.elapsed().as_secs_f64() * 50.0).ceil() as u64 + 1;
    let (passed, limited) = burst(
        &mut fixture,
        "capped4",
        &syn("198.18.99.200:1000", capped),
        100,
        AdmissionDrop::SourceLimit,
    );
    let allowed = refill(start);
    assert!(
        passed <= allowed && passed + limited == 100,
        "the same /24 is over its cap: {passed} passed, {allowed} at most"
    );
    let (passed, limited) = burst(
        &mut fixture,
        "capped4",
        &syn("198.18.98.1:1000", capped),
        10,
        AdmissionDrop::SourceLimit,
    );
    assert_eq!((passed, limited), (10, 0), "another /24 has its own cap");
    // The VIP-wide cap on new flows: 20 pass, and the flow the first SYN
    // opened goes on, though the cap is spent.
    let flows = "198.18.0.111:80";
    let (passed, limited) = burst(
        &mut fixture,
        "flows4",
        &syn("198.18.97.1:2000", flows),
        500,
        AdmissionDrop::FlowLimit,
    );
    assert!(
        (20..=21).contains(&passed) && passed + limited == 500,
        "{passed} passed, {limited} limited"
    );
    let ack = Frame::tcp("198.18.97.1:2000", flows, ACK).payload(b"GET /");
    let (passed, limited) = burst(&mut fixture, "flows4", &ack, 100, AdmissionDrop::FlowLimit);
    assert_eq!(
        (passed, limited),
        (100, 0),
        "an established flow never meets the cap on new flows"
    );
    // The cap on packets counts every packet, established ones too.
    let pps = "[2001:2::103]:80";
    let since = Instant::now();
    let (passed, _) = burst(
        &mut fixture,
        "pps6",
        &syn("[2001:2:97::1]:3000", pps),
        1,
        AdmissionDrop::PacketLimit,
    );
    assert_eq!(passed, 1);
    let ack = Frame::tcp("[2001:2:97::1]:3000", pps, ACK).payload(b"GET /");
    let (passed, limited) = burst(&mut fixture, "pps6", &ack, 1000, AdmissionDrop::PacketLimit);
    let allowed = 29 + (since.elapsed().as_secs_f64() * 30.0).ceil() as u64 + 1;
    assert!(
        (29..=allowed).contains(&passed) && passed + limited == 1000,
        "{passed} passed, {limited} limited"
    );
    let snapshot = fixture.snapshot();
    assert!(snapshot.reasons[Reason::DropLimited.name()] >= 1000 + 470 + 960);
}
