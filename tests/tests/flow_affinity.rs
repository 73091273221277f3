//! Flow affinity in the real XDP program: a flow stays on its backend for
//! its whole life, and when a VIP's table is swapped mid-stream, flows move
//! only when their backend is gone, and then only to the new table's choice.
//! The tests of tables run under every table algorithm. The VIP address
//! filter follows every install.

use lb_common::maps::{Reason, VipFilter};
use lb_tests::{
    fixture::{Fixture, STANDARD_CONFIG, TEST_SEED, standard_config, xdp_action},
    packet::{Frame, tcp_flags::*},
};
use lb_userspace::{dataplane::state::DesiredState, table::algorithm::Algorithm};

const WEB4: &str = "198.18.0.100:80";

/// Sends `frame` and returns the backend id whose MAC the output carries.
fn forwarded_to(fixture: &mut Fixture, frame: &Frame) -> u32 {
    let run = fixture.run(&frame.bytes()).expect("test run");
    assert_eq!(run.action, xdp_action::TX, "frame was not forwarded");
    let vip = fixture
        .state
        .vip_for(&frame.flow())
        .expect("frame is for a VIP");
    vip.backends
        .iter()
        .find(|b| b.mac.0 == run.output[..6])
        .map(|b| b.backend_id)
        .expect("output MAC belongs to one of the VIP's backends")
}

fn client(port: u16, flags: u8) -> Frame {
    Frame::tcp(&format!("198.18.2.{}:{port}", port % 200 + 1), WEB4, flags)
}

#[test]
fn a_flow_stays_on_its_backend_under_every_algorithm() {
    let mut tables = Vec::new();
    for algorithm in Algorithm::ALL {
        let mut fixture = Fixture::standard_with(algorithm);
        a_flow_stays_on_its_backend(&mut fixture);
        tables.push(fixture.state.vips[0].table.table.clone());
    }
    assert_ne!(
        tables[0], tables[1],
        "the algorithms build different tables"
    );
}

fn a_flow_stays_on_its_backend(fixture: &mut Fixture) {
    for i in 0..64u16 {
        let port = 41000 + 2 * i;
        let first = forwarded_to(fixture, &client(port, SYN));
        let predicted = fixture
            .state
            .backend_for(&client(port, SYN).flow(), &TEST_SEED)
            .unwrap();
        assert_eq!(first, predicted.backend_id, "kernel and userspace disagree");
        for flags in [ACK, ACK | PSH, ACK, FIN | ACK] {
            assert_eq!(forwarded_to(fixture, &client(port, flags)), first);
        }
        let udp = Frame::udp(&format!("198.18.2.9:{port}"), "198.18.0.100:53");
        let udp_first = forwarded_to(fixture, &udp);
        for _ in 0..4 {
            assert_eq!(forwarded_to(fixture, &udp), udp_first);
        }
    }
}

/// Sends one ACK per established flow and checks that the flows that were
/// on `gone` went to `next`'s choice while every other flow stayed put.
fn only_flows_of_moved(
    fixture: &mut Fixture,
    ports: &[u16],
    before: &[u32],
    gone: u32,
    next: &DesiredState,
) {
    let mut moved = 0;
    for (&port, &was) in ports.iter().zip(before) {
        let now = forwarded_to(fixture, &client(port, ACK));
        if was == gone {
            let choice = next
                .backend_for(&client(port, ACK).flow(), &TEST_SEED)
                .unwrap();
            assert_eq!(
                now, choice.backend_id,
                "a moved flow left the new table's choice"
            );
            moved += 1;
        } else {
            assert_eq!(now, was, "a flow on a remaining backend moved");
        }
    }
    assert!(moved > 0, "no flow was on the backend that went away");
}

#[test]
fn draining_keeps_flows_and_removal_moves_them_to_the_new_choice() {
    for algorithm in Algorithm::ALL {
        draining_then_removal(&mut Fixture::standard_with(algorithm));
    }
}

fn draining_then_removal(fixture: &mut Fixture) {
    let ports: Vec<u16> = (0..300).map(|i| 42000 + 2 * i).collect();
    let before: Vec<u32> = ports
        .iter()
        .map(|&p| forwarded_to(fixture, &client(p, SYN)))
        .collect();
    let b3 = fixture.state.vips[0].backends[2].backend_id;
    assert!(before.contains(&b3), "some flows start on b3");

    // Drain b3 (weight 0): established flows stay, new flows avoid it.
    let drained = lb_tests::flood::b3_drained(&fixture.state);
    fixture.dataplane.install(&drained).unwrap();
    for (&port, &was) in ports.iter().zip(&before) {
        assert_eq!(forwarded_to(fixture, &client(port, ACK)), was);
        let fresh = client(port + 1000, SYN);
        let went = forwarded_to(fixture, &fresh);
        assert_ne!(went, b3, "a new flow reached the drained backend");
        assert_eq!(
            went,
            drained
                .backend_for(&fresh.flow(), &TEST_SEED)
                .unwrap()
                .backend_id
        );
    }

    // Remove b3: its flows move, each to the new table's choice; the
    // others stay where they were.
    fixture.dataplane.remove_backend(b3).unwrap();
    only_flows_of_moved(fixture, &ports, &before, b3, &drained);
    // Once moved, a flow stays on its new backend.
    for (&port, &was) in ports.iter().zip(&before) {
        if was == b3 {
            let again = forwarded_to(fixture, &client(port, ACK));
            let choice = drained
                .backend_for(&client(port, ACK).flow(), &TEST_SEED)
                .unwrap();
            assert_eq!(again, choice.backend_id);
        }
    }
}

/// The standard config under `algorithm` with web4's b1 removed.
fn without_b1(algorithm: Algorithm) -> lb_userspace::config::Config {
    let b1 = r#"  { name = "b1", address = "198.18.1.1", weight = 1, mac = "02:00:00:00:01:01" },
"#;
    assert!(STANDARD_CONFIG.contains(b1));
    let text = standard_config(algorithm, &STANDARD_CONFIG.replacen(b1, "", 1));
    lb_userspace::config::Config::parse(&text).unwrap()
}

#[test]
fn removing_a_backend_through_install_keeps_every_other_flow() {
    for algorithm in Algorithm::ALL {
        removing_b1_through_install(&mut Fixture::standard_with(algorithm), algorithm);
    }
}

fn removing_b1_through_install(fixture: &mut Fixture, algorithm: Algorithm) {
    let ports: Vec<u16> = (0..300).map(|i| 44000 + 2 * i).collect();
    let before: Vec<u32> = ports
        .iter()
        .map(|&p| forwarded_to(fixture, &client(p, SYN)))
        .collect();
    let b1 = fixture.state.vips[0].backends[0].backend_id;
    assert!(before.contains(&b1), "some flows start on b1");
    let next = DesiredState::build_from(&without_b1(algorithm), Some(&fixture.state), |b| {
        Ok(b.mac.unwrap())
    })
    .unwrap();
    fixture.dataplane.install(&next).unwrap();
    only_flows_of_moved(fixture, &ports, &before, b1, &next);
    assert_eq!(fixture.dataplane.installed(), Some(&next));
}

#[test]
fn a_vip_moved_to_a_new_address_is_forwarded_there_and_its_old_address_passes() {
    let mut fixture = Fixture::standard();
    let (old, new) = ("198.18.0.101:443", "198.18.0.111:443");
    // ACKs: they meet the address filter first (a SYN goes to the probe).
    let ack = |to: &str| Frame::tcp("198.18.2.1:46000", to, ACK).bytes();
    let passes_as_not_vip = |fixture: &mut Fixture, to: &str| {
        let before = fixture.snapshot();
        let run = fixture.run(&ack(to)).expect("test run");
        let after = fixture.snapshot();
        run.action == xdp_action::PASS && after.reason_delta(&before, Reason::PassNotVip) == 1
    };
    assert!(passes_as_not_vip(&mut fixture, new), "no VIP at {new} yet");
    assert_eq!(fixture.run(&ack(old)).unwrap().action, xdp_action::TX);
    let moved = lb_userspace::config::Config::parse(&STANDARD_CONFIG.replacen(
        r#"address = "198.18.0.101""#,
        r#"address = "198.18.0.111""#,
        1,
    ))
    .unwrap();
    let next =
        DesiredState::build_from(&moved, Some(&fixture.state), |b| Ok(b.mac.unwrap())).unwrap();
    fixture.dataplane.install(&next).unwrap();
    assert_eq!(fixture.run(&ack(new)).unwrap().action, xdp_action::TX);
    assert!(passes_as_not_vip(&mut fixture, old), "{old} is no VIP now");
    // The kernel's filter holds exactly the installed VIPs' addresses.
    let mut expected = VipFilter::default();
    for vip in &next.vips {
        expected.insert(&vip.key.addr);
    }
    assert_eq!(fixture.dataplane.vip_filter(0).unwrap(), expected);
}

#[test]
fn a_state_that_renumbers_backends_is_refused() {
    let mut fixture = Fixture::standard();
    // Built from nothing, the ids shift: b2 would get b1's id.
    let renumbered =
        DesiredState::build(&without_b1(Algorithm::default()), |b| Ok(b.mac.unwrap())).unwrap();
    let err = fixture.dataplane.install(&renumbered).unwrap_err();
    assert!(
        err.to_string().contains("backend id 1 was 198.18.1.1:80"),
        "{err}"
    );
    let web4 = "198.18.0.100:80";
    let frame = Frame::tcp("198.18.2.1:45000", web4, SYN);
    let went = forwarded_to(&mut fixture, &frame);
    let expected = fixture
        .state
        .backend_for(&frame.flow(), &TEST_SEED)
        .unwrap()
        .backend_id;
    assert_eq!(went, expected, "the refused state changed nothing");
}

/// The standard config under `algorithm` with web4's b1 replaced by a
/// new backend b9.
fn b1_replaced_by_b9(algorithm: Algorithm) -> lb_userspace::config::Config {
    let b1 = r#"{ name = "b1", address = "198.18.1.1", weight = 1, mac = "02:00:00:00:01:01" }"#;
    let b9 = r#"{ name = "b9", address = "198.18.1.9", weight = 1, mac = "02:00:00:00:01:09" }"#;
    assert!(STANDARD_CONFIG.contains(b1));
    let text = standard_config(algorithm, &STANDARD_CONFIG.replacen(b1, b9, 1));
    lb_userspace::config::Config::parse(&text).unwrap()
}

#[test]
fn a_reused_backend_slot_inherits_no_flows_and_no_counters() {
    for algorithm in Algorithm::ALL {
        reused_slot(&mut Fixture::standard_with(algorithm), algorithm);
    }
}

fn reused_slot(fixture: &mut Fixture, algorithm: Algorithm) {
    let b1 = fixture.state.vips[0].backends[0].backend_id;
    let ports: Vec<u16> = (0..300).map(|i| 46000 + 2 * i).collect();
    let on_b1: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| forwarded_to(fixture, &client(p, SYN)) == b1)
        .collect();
    assert!(!on_b1.is_empty(), "some flows start on b1");
    assert!(fixture.dataplane.counters().unwrap().backend(b1).packets > 0);

    // b1 leaves; later b9 arrives and gets b1's freed slot.
    let gone = DesiredState::build_from(&without_b1(algorithm), Some(&fixture.state), |b| {
        Ok(b.mac.unwrap())
    })
    .unwrap();
    fixture.dataplane.install(&gone).unwrap();
    let next = DesiredState::build_from(&b1_replaced_by_b9(algorithm), Some(&gone), |b| {
        Ok(b.mac.unwrap())
    })
    .unwrap();
    let b9 = next.vips[0]
        .backends
        .iter()
        .find(|b| b.label == "b9")
        .unwrap();
    assert_eq!(b9.backend_id, b1, "b9 reuses b1's slot");
    fixture.dataplane.install(&next).unwrap();
    assert_eq!(
        fixture.dataplane.counters().unwrap().backend(b1),
        Default::default(),
        "b9 starts with zeroed counters, not b1's"
    );

    // b1's old flows are hashed into the new table, never handed to b9
    // through their stale connection entries.
    let mut elsewhere = 0;
    for port in on_b1 {
        let frame = client(port, ACK);
        let run = fixture.run(&frame.bytes()).expect("test run");
        assert_eq!(run.action, xdp_action::TX);
        let choice = next.backend_for(&frame.flow(), &TEST_SEED).unwrap();
        assert_eq!(
            run.output[..6],
            choice.mac.0,
            "flow from port {port} went to its table choice {}",
            choice.label
        );
        elsewhere += usize::from(choice.backend_id != b9.backend_id);
    }
    assert!(
        elsewhere > 0,
        "some old flows hash away from b9, so a stale entry would show"
    );
}

#[test]
fn a_flow_records_when_it_was_seen_and_when_its_client_closed_it() {
    use lb_common::maps::{FLOW_CLOSING, FLOW_SYN, FLOW_UNPROVEN};
    let mut fixture = Fixture::standard();
    let epoch = |fixture: &mut Fixture, epoch: u32| fixture.set_epoch(epoch);
    let flow = client(43000, SYN);
    epoch(&mut fixture, 100);
    let backend = forwarded_to(&mut fixture, &flow);
    let entry = |fixture: &Fixture| {
        fixture
            .dataplane
            .connection(&flow.flow())
            .expect("the connection table")
            .expect("an entry")
    };
    assert_eq!(
        (entry(&fixture).seen, entry(&fixture).flags),
        (100, FLOW_UNPROVEN | FLOW_SYN),
        "a SYN alone does not prove a flow"
    );
    epoch(&mut fixture, 105);
    forwarded_to(&mut fixture, &client(43000, ACK));
    assert_eq!(
        (entry(&fixture).seen, entry(&fixture).flags),
        (105, FLOW_SYN),
        "every packet refreshes it, and the second proves it"
    );
    forwarded_to(&mut fixture, &client(43000, FIN | ACK));
    assert_eq!(entry(&fixture).flags & FLOW_CLOSING, FLOW_CLOSING);
    // Late segments after the FIN still reach the same backend.
    assert_eq!(forwarded_to(&mut fixture, &client(43000, ACK)), backend);
    // A new connection on the same 5-tuple starts afresh.
    epoch(&mut fixture, 110);
    forwarded_to(&mut fixture, &client(43000, SYN));
    assert_eq!(
        (entry(&fixture).seen, entry(&fixture).flags),
        (110, FLOW_UNPROVEN | FLOW_SYN)
    );
}
