//! The connection table under pressure, in the real XDP program: a SYN
//! flood of four times the table's size after a table swap, idle UDP
//! expiry, a set full of established flows, and a flow hash nobody can aim
//! without the seed.

use lb_common::{
    flow_hash::FlowSeed,
    maps::{CONN_TABLE_ENTRIES, FLOW_WAYS, Reason},
};
use lb_tests::{
    fixture::{Fixture, TEST_SEED, xdp_action},
    flood::syn_flood,
    packet::{Frame, tcp_flags::*},
};
use lb_userspace::dataplane::flows;

const WEB4: &str = "198.18.0.100:80";
const DNS4: &str = "198.18.0.100:53";

/// Sends `frame` and returns the backend id its output goes to.
fn forwarded_to(fixture: &mut Fixture, frame: &Frame) -> u32 {
    let run = fixture.run(&frame.bytes()).expect("test run");
    assert_eq!(run.action, xdp_action::TX, "frame was not forwarded");
    fixture
        .state
        .vips
        .iter()
        .flat_map(|v| &v.backends)
        .find(|b| b.mac.0 == run.output[..6])
        .map(|b| b.backend_id)
        .expect("output MAC belongs to a backend")
}

#[test]
fn established_flows_survive_a_syn_flood_of_four_times_the_table() {
    let mut fixture = Fixture::standard();
    fixture.set_epoch(1000);
    let flood = 4 * CONN_TABLE_ENTRIES as usize;
    let outcome = syn_flood(&mut fixture, 10_000, flood);
    println!("{outcome:?}");
    assert!(
        outcome.would_move >= outcome.established / 3,
        "the swap must send many established flows elsewhere, or survival proves nothing: {outcome:?}"
    );
    assert_eq!(
        outcome.flood_forwarded, flood,
        "flood SYNs are forwarded (the backends answer them)"
    );
    assert!(
        outcome.survival() >= 0.99,
        "only {:.2}% of established flows kept their backend: {outcome:?}",
        outcome.survival() * 100.0
    );
    assert!(
        outcome.evicted > flood as u64 / 2,
        "the flood's unproven entries take each other's ways, counted: {outcome:?}"
    );
}

#[test]
fn idle_udp_flows_expire_and_are_hashed_again() {
    let mut fixture = Fixture::standard();
    let idle = fixture.dataplane.config().expect("config").udp_idle_s;
    assert_eq!(idle, 60, "the default UDP idle timeout");
    fixture.set_epoch(5000);
    let udp = Frame::udp("198.18.2.7:5353", DNS4);
    let tcp = Frame::tcp("198.18.2.7:41000", WEB4, SYN);
    forwarded_to(&mut fixture, &udp);
    forwarded_to(&mut fixture, &udp);
    forwarded_to(&mut fixture, &tcp);
    forwarded_to(&mut fixture, &Frame::tcp("198.18.2.7:41000", WEB4, ACK));

    fixture.set_epoch(5000 + idle);
    let before = fixture.snapshot();
    forwarded_to(&mut fixture, &udp);
    let at_limit = fixture.snapshot();
    assert_eq!(
        at_limit.reason_delta(&before, Reason::ConnHit),
        1,
        "not idle past the limit yet"
    );

    fixture.set_epoch(5000 + 2 * idle + 1);
    let before = fixture.snapshot();
    forwarded_to(&mut fixture, &udp);
    forwarded_to(&mut fixture, &Frame::tcp("198.18.2.7:41000", WEB4, ACK));
    let after = fixture.snapshot();
    assert_eq!(
        after.reason_delta(&before, Reason::ConnExpired),
        1,
        "the UDP flow expired"
    );
    assert_eq!(
        after.reason_delta(&before, Reason::ConnMiss),
        1,
        "and was hashed again"
    );
    assert_eq!(
        after.reason_delta(&before, Reason::ConnHit),
        1,
        "the TCP flow did not expire"
    );
    let dns4 = fixture.state.vips[1].vip_id;
    assert_eq!(
        after.vips[&dns4].new_flows - before.vips[&dns4].new_flows,
        1,
        "an expired flow counts as a new flow"
    );
    let entry = fixture
        .dataplane
        .connection(&udp.flow())
        .expect("table")
        .expect("its entry again");
    assert_eq!(entry.seen, 5000 + 2 * idle + 1);
}

/// Web4 clients (`address:port`) whose flows all fall in one
/// connection-table set under the fixture's seed.
fn flows_in_one_set(fixture: &Fixture, count: usize) -> Vec<String> {
    let config = fixture.dataplane.config().expect("config");
    let set_of = |client: &str| flows::locate(&Frame::tcp(client, WEB4, SYN).flow(), &config).0;
    let candidates = (1..=250u32)
        .flat_map(|host| (10_000..14_000u32).map(move |port| format!("198.18.3.{host}:{port}")));
    let target = set_of("198.18.3.1:10000");
    let clients: Vec<String> = candidates
        .filter(|client| set_of(client) == target)
        .take(count)
        .collect();
    assert_eq!(clients.len(), count, "enough flows share a set");
    clients
}

#[test]
fn a_set_full_of_established_flows_keeps_them_and_new_flows_are_still_forwarded() {
    let mut fixture = Fixture::standard();
    fixture.set_epoch(100);
    let clients = flows_in_one_set(&fixture, FLOW_WAYS + 2);
    let ports: Vec<usize> = (0..clients.len()).collect();
    let frame = |i: usize, flags| Frame::tcp(&clients[i], WEB4, flags);
    let mut pinned = Vec::new();
    for &port in &ports[..FLOW_WAYS] {
        forwarded_to(&mut fixture, &frame(port, SYN));
        pinned.push(forwarded_to(&mut fixture, &frame(port, ACK)));
    }
    let extra = ports[FLOW_WAYS];
    let before = fixture.snapshot();
    forwarded_to(&mut fixture, &frame(extra, SYN));
    forwarded_to(&mut fixture, &frame(extra, ACK));
    let after = fixture.snapshot();
    assert_eq!(
        after.reason_delta(&before, Reason::ConnInsertFailed),
        2,
        "no way for a ninth flow while eight are established"
    );
    assert_eq!(after.reason_delta(&before, Reason::ConnEvicted), 0);
    for (&port, &was) in ports[..FLOW_WAYS].iter().zip(&pinned) {
        assert_eq!(forwarded_to(&mut fixture, &frame(port, ACK)), was);
    }
    // One established flow closes: its way is the one a new flow takes.
    forwarded_to(&mut fixture, &frame(ports[3], FIN | ACK));
    let before = fixture.snapshot();
    forwarded_to(&mut fixture, &frame(extra, SYN));
    let after = fixture.snapshot();
    assert_eq!(after.reason_delta(&before, Reason::ConnEvicted), 1);
    assert!(
        fixture
            .dataplane
            .connection(&frame(extra, SYN).flow())
            .unwrap()
            .is_some()
    );
    assert!(
        fixture
            .dataplane
            .connection(&frame(ports[3], ACK).flow())
            .unwrap()
            .is_none()
    );
    forwarded_to(&mut fixture, &frame(extra, ACK));
    // Flows idle past the TCP timeout give their ways up too.
    let tcp_idle = fixture.dataplane.config().unwrap().tcp_idle_s;
    fixture.set_epoch(100 + tcp_idle + 1);
    let before = fixture.snapshot();
    forwarded_to(&mut fixture, &frame(ports[FLOW_WAYS + 1], SYN));
    let after = fixture.snapshot();
    assert_eq!(after.reason_delta(&before, Reason::ConnEvicted), 1);
    assert_eq!(after.reason_delta(&before, Reason::ConnInsertFailed), 0);
}

/// An attacker who knows a seed (the old compile-time one, or any guess)
/// crafts flows that all land on one backend under it. Under the data
/// plane's own seed they spread as the weights say.
#[test]
fn flows_crafted_for_another_seed_spread_evenly() {
    let mut fixture = Fixture::standard();
    assert_eq!(fixture.dataplane.config().unwrap().seed, TEST_SEED);
    let guessed = FlowSeed([0x9e37_79b9_7f4a_7c15, 0]);
    let web4 = fixture.state.vips[0].clone();
    let b1 = web4.backends[0].backend_id;
    let crafted: Vec<Frame> = (0..60_000u32)
        .map(|i| {
            let client = format!("198.18.64.{}:{}", i % 250 + 1, 1024 + i / 250);
            Frame::tcp(&client, WEB4, SYN)
        })
        .filter(|f| {
            let aimed = fixture.state.backend_for(&f.flow(), &guessed);
            aimed.map(|b| b.backend_id) == Some(b1)
        })
        .take(4000)
        .collect();
    assert_eq!(
        crafted.len(),
        4000,
        "enough flows aim at b1 under the guessed seed"
    );
    let mut hits = std::collections::BTreeMap::<u32, usize>::new();
    for frame in &crafted {
        *hits.entry(forwarded_to(&mut fixture, frame)).or_default() += 1;
    }
    let total: u32 = web4.backends.iter().map(|b| b.weight).sum();
    for backend in &web4.backends {
        let share = hits.get(&backend.backend_id).copied().unwrap_or(0) as f64 / 4000.0;
        let expected = f64::from(backend.weight) / f64::from(total);
        // Four thousand draws: one standard deviation is under 0.8 points.
        assert!(
            (share - expected).abs() < 0.04,
            "{}: {share:.3} of the crafted flows, expected {expected:.3}: {hits:?}",
            backend.label
        );
    }
}
