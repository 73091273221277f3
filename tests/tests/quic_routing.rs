//! QUIC routing by connection ID in the real XDP program, through
//! BPF_PROG_TEST_RUN: a short header's server ID sends it to its backend
//! whatever its 4-tuple (the client moved) and whatever the connection
//! table holds; long headers, unknown IDs, unroutable and foreign
//! codepoints, cut datagrams and a down backend's ID go by the connection
//! table and the 4-tuple hash, each counted for the VIP (and a backend
//! held out for want of a MAC is routed nothing); a UDP VIP
//! without QUIC routing ignores CIDs; both families; a changed ID moves
//! with the apply that changes it.

use lb_common::maps::{QuicOutcome, Reason};
use lb_tests::{
    fixture::{Fixture, xdp_action},
    packet::Frame,
};
use lb_userspace::{config::Config, dataplane::state::DesiredState};

const Q4: &str = "198.18.0.120:443";
const U4: &str = "198.18.0.121:443";
const Q6: &str = "[2001:2::120]:443";

/// Three VIPs: q4 routes QUIC by a 2-octet server ID (b1 0a01, b2 0a02,
/// b3 derived), u4 is the same service without QUIC routing, q6 routes
/// IPv6 (b6 0b06, b7 0b07) under config rotation codepoint 1.
fn config(b2_id: &str) -> String {
    format!(
        r#"
table_size = 251

[[vip]]
name = "q4"
address = "198.18.0.120"
port = 443
protocol = "udp"
quic = {{ server_id_len = 2 }}
backend = [
  {{ name = "b1", address = "198.18.1.1", mac = "02:00:00:00:01:01", server_id = "0a01" }},
  {{ name = "b2", address = "198.18.1.2", mac = "02:00:00:00:01:02", server_id = "{b2_id}" }},
  {{ name = "b3", address = "198.18.1.3", mac = "02:00:00:00:01:03" }},
]

[[vip]]
name = "u4"
address = "198.18.0.121"
port = 443
protocol = "udp"
backend = [
  {{ name = "b1", address = "198.18.1.1", mac = "02:00:00:00:01:01" }},
  {{ name = "b2", address = "198.18.1.2", mac = "02:00:00:00:01:02" }},
  {{ name = "b3", address = "198.18.1.3", mac = "02:00:00:00:01:03" }},
]

[[vip]]
name = "q6"
address = "2001:2::120"
port = 443
protocol = "udp"
quic = {{ server_id_len = 2, config_id = 1 }}
backend = [
  {{ name = "b6", address = "2001:2::1:6", mac = "02:00:00:00:06:06", server_id = "0b06" }},
  {{ name = "b7", address = "2001:2::1:7", mac = "02:00:00:00:06:07", server_id = "0b07" }},
]
"#
    )
}

/// A short-header packet whose destination CID starts with `first` and
/// carries `id` as its server ID, then a nonce, a packet number and a
/// payload as long as a real one's.
fn short(first: u8, id: [u8; 2]) -> Vec<u8> {
    let mut datagram = vec![0x41, first, id[0], id[1], 0x45, 0x04, 0xcc, 0x4f, 0x01];
    datagram.extend_from_slice(&[0x5a; 32]);
    datagram
}

/// A long-header Initial whose destination CID names `id` (as a client's
/// second flight would): the 4-tuple decides all the same.
fn initial(id: [u8; 2]) -> Vec<u8> {
    let mut datagram = vec![0xc3, 0, 0, 0, 1, 8, 0x07, id[0], id[1], 1, 2, 3, 4, 5, 0];
    datagram.extend_from_slice(&[0x5a; 48]);
    datagram
}

/// Installs `text` over the fixture's state, as an apply does, with the
/// backends `down` found dead.
fn apply(fixture: &mut Fixture, text: &str, down: &[(String, std::net::SocketAddr)]) {
    let mut config = Config::parse(text).expect("test config parses");
    config.take_down(down);
    let mut next = DesiredState::build_from(&config, Some(&fixture.state), |b| Ok(b.mac.unwrap()))
        .expect("test config builds");
    next.mark_down(down);
    fixture.dataplane.install(&next).expect("installs");
    fixture.state = next;
}

/// Where `frame` went: the backend whose MAC the program wrote, or the
/// action when it forwarded nothing.
fn sent_to(fixture: &mut Fixture, frame: &Frame) -> String {
    let run = fixture.run(&frame.bytes()).expect("test run");
    if xdp_action::name(run.action) != "XDP_TX" {
        return xdp_action::name(run.action);
    }
    let mac = &run.output[..6];
    fixture
        .state
        .vips
        .iter()
        .flat_map(|v| &v.backends)
        .find(|b| b.mac.0 == mac)
        .map_or_else(|| format!("unknown MAC {mac:02x?}"), |b| b.label.clone())
}

/// The backend VIP `dst`'s lookup table gives the 4-tuple of `frame`.
fn hashed(fixture: &Fixture, frame: &Frame) -> String {
    let seed = fixture.dataplane.config().expect("config map").seed;
    fixture
        .state
        .backend_for(&frame.flow(), &seed)
        .map(|b| b.label.clone())
        .expect("a VIP's flow")
}

/// VIP `name`'s QUIC packets counted for `outcome`.
fn counted(fixture: &Fixture, name: &str, outcome: QuicOutcome) -> u64 {
    let vip = fixture
        .state
        .vips
        .iter()
        .find(|v| v.label == name)
        .expect("VIP installed");
    let counters = fixture.dataplane.counters().expect("counters");
    counters.quic(vip.vip_id).packets[outcome as usize]
}

fn from(port: u16) -> String {
    format!("198.18.7.1:{port}")
}

#[test]
fn a_short_header_reaches_its_server_from_any_address() {
    let mut fixture = Fixture::with_config(&config("0a02"));
    // The same connection seen from 64 source ports (a client that moves):
    // its server ID sends every packet to b2, where the 4-tuple hash would
    // spread them over all three.
    let mut spread = std::collections::BTreeSet::new();
    for port in 40000..40064 {
        let frame = Frame::udp(&from(port), Q4).payload(&short(0x07, [0x0a, 0x02]));
        spread.insert(hashed(&fixture, &frame));
        assert_eq!(sent_to(&mut fixture, &frame), "b2", "port {port}");
    }
    assert_eq!(
        spread.len(),
        3,
        "the 4-tuples alone would spread: {spread:?}"
    );
    assert_eq!(counted(&fixture, "q4", QuicOutcome::Routed), 64);
    let b1 = Frame::udp(&from(40000), Q4).payload(&short(0x07, [0x0a, 0x01]));
    assert_eq!(sent_to(&mut fixture, &b1), "b1");
    // IPv6, under codepoint 1.
    for port in [5000, 6000, 7000] {
        let frame =
            Frame::udp(&format!("[2001:2:7::1]:{port}"), Q6).payload(&short(0x27, [0x0b, 0x07]));
        assert_eq!(sent_to(&mut fixture, &frame), "b7");
    }
    assert_eq!(counted(&fixture, "q6", QuicOutcome::Routed), 3);
    // A flow the connection table holds for another backend: the server ID
    // still decides (the server named is the one that holds the keys).
    let port = (41000..42000)
        .find(|&p| {
            let frame = Frame::udp(&from(p), Q4);
            hashed(&fixture, &frame) == "b1"
        })
        .expect("some port hashes to b1");
    let pinned = Frame::udp(&from(port), Q4).payload(&initial([0x0a, 0x01]));
    assert_eq!(
        sent_to(&mut fixture, &pinned),
        "b1",
        "the Initial's 4-tuple"
    );
    let named = Frame::udp(&from(port), Q4).payload(&short(0x07, [0x0a, 0x02]));
    assert_eq!(sent_to(&mut fixture, &named), "b2");
}

#[test]
fn what_names_no_server_goes_by_the_four_tuple_and_is_counted() {
    let mut fixture = Fixture::with_config(&config("0a02"));
    let mut cut = short(0x07, [0x0a, 0x02]);
    cut.truncate(1 + 1 + 16 - 1);
    let rows: [(&str, &str, Vec<u8>, QuicOutcome); 7] = [
        (
            "a long header",
            Q4,
            initial([0x0a, 0x02]),
            QuicOutcome::LongHeader,
        ),
        (
            "an unknown server ID",
            Q4,
            short(0x07, [0xff, 0xee]),
            QuicOutcome::UnknownServer,
        ),
        (
            "the unroutable codepoint",
            Q4,
            short(0xe7, [0x0a, 0x02]),
            QuicOutcome::Unroutable,
        ),
        (
            "another config's codepoint",
            Q4,
            short(0x47, [0x0a, 0x02]),
            QuicOutcome::OtherConfig,
        ),
        (
            "a datagram too short for an ID",
            Q4,
            cut,
            QuicOutcome::Truncated,
        ),
        ("an empty datagram", Q4, Vec::new(), QuicOutcome::Truncated),
        (
            "IPv6, codepoint 0 where the VIP's is 1",
            Q6,
            short(0x07, [0x0b, 0x07]),
            QuicOutcome::OtherConfig,
        ),
    ];
    let mut problems = Vec::new();
    for (what, vip, datagram, outcome) in rows {
        let vip_name = if vip == Q4 { "q4" } else { "q6" };
        let source = if vip == Q4 {
            from(43000)
        } else {
            "[2001:2:7::1]:43000".to_string()
        };
        // Many 4-tuples, each on its own hashed backend.
        for port in 0..16u16 {
            let source = source.replace("43000", &(43000 + port).to_string());
            let frame = Frame::udp(&source, vip).payload(&datagram);
            let want = hashed(&fixture, &frame);
            let before = counted(&fixture, vip_name, outcome);
            let got = sent_to(&mut fixture, &frame);
            if got != want {
                problems.push(format!("{what}, port {port}: sent to {got}, hashed {want}"));
            }
            if counted(&fixture, vip_name, outcome) != before + 1 {
                problems.push(format!("{what}: not counted as {}", outcome.name()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // A UDP VIP without QUIC routing reads no CID, counts nothing.
    for port in 44000..44016 {
        let frame = Frame::udp(&from(port), U4).payload(&short(0x07, [0x0a, 0x02]));
        assert_eq!(sent_to(&mut fixture, &frame), hashed(&fixture, &frame));
    }
    assert_eq!(counted(&fixture, "u4", QuicOutcome::Routed), 0);
    assert_eq!(counted(&fixture, "u4", QuicOutcome::LongHeader), 0);
    // A datagram whose UDP length runs past the packet is dropped by the
    // header walk, before any QUIC reading, and counted there.
    let before = fixture.snapshot();
    let bad = Frame::udp(&from(45000), Q4)
        .payload(&short(0x07, [0x0a, 0x02]))
        .udp_length(200);
    assert_eq!(sent_to(&mut fixture, &bad), "XDP_DROP");
    assert_eq!(
        fixture
            .snapshot()
            .reason_delta(&before, Reason::DropMalformed),
        1
    );
}

#[test]
fn a_down_server_and_a_changed_id_follow_the_apply() {
    let mut fixture = Fixture::with_config(&config("0a02"));
    let named = |port: u16, id: [u8; 2]| Frame::udp(&from(port), Q4).payload(&short(0x07, id));
    assert_eq!(sent_to(&mut fixture, &named(46000, [0x0a, 0x02])), "b2");
    // b2 found dead: its ID no longer routes, its packets are hashed over
    // the live backends, and counted as a down server's.
    let down = vec![(
        "198.18.0.120:443/udp".to_string(),
        "198.18.1.2:443".parse().unwrap(),
    )];
    apply(&mut fixture, &config("0a02"), &down);
    for port in 46000..46016 {
        let frame = named(port, [0x0a, 0x02]);
        let got = sent_to(&mut fixture, &frame);
        assert!(got == "b1" || got == "b3", "port {port}: {got}");
    }
    assert_eq!(counted(&fixture, "q4", QuicOutcome::ServerDown), 16);
    // Back up under a new ID (written into the other bank): the old ID is
    // unknown, the new one routes.
    apply(&mut fixture, &config("0a09"), &[]);
    assert_eq!(sent_to(&mut fixture, &named(46100, [0x0a, 0x09])), "b2");
    let before = counted(&fixture, "q4", QuicOutcome::UnknownServer);
    sent_to(&mut fixture, &named(46100, [0x0a, 0x02]));
    assert_eq!(
        counted(&fixture, "q4", QuicOutcome::UnknownServer),
        before + 1
    );
    // And back to the first ID, over what that bank held.
    apply(&mut fixture, &config("0a02"), &[]);
    assert_eq!(sent_to(&mut fixture, &named(46200, [0x0a, 0x02])), "b2");
    assert_eq!(sent_to(&mut fixture, &named(46200, [0x0a, 0x01])), "b1");
    // Held out for want of a MAC (weight 0, the all-zero MAC, as the gate
    // installs it): its ID is not routed, to no MAC at all.
    let held_out = config("0a02").replace(
        r#"address = "198.18.1.2", mac = "02:00:00:00:01:02""#,
        r#"address = "198.18.1.2", weight = 0, mac = "00:00:00:00:00:00""#,
    );
    apply(&mut fixture, &held_out, &[]);
    let before = counted(&fixture, "q4", QuicOutcome::UnknownServer);
    for port in 46300..46308 {
        let got = sent_to(&mut fixture, &named(port, [0x0a, 0x02]));
        assert!(got == "b1" || got == "b3", "port {port}: {got}");
    }
    assert_eq!(
        counted(&fixture, "q4", QuicOutcome::UnknownServer),
        before + 8
    );
}
