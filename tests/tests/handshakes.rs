//! The handshake counters in the real XDP program (BPF_PROG_TEST_RUN):
//! what each sequence of a client's packets adds to its backend's and its
//! VIP's `syns`, `syn_retries`, `handshakes` and `early_resets`, for L2
//! DSR and encapsulating backends, IPv4 and IPv6; and that UDP and
//! established traffic add nothing.

use lb_common::maps::{EARLY_RESET_S, TrafficCounters};
use lb_tests::{
    fixture::{ENCAP_CONFIG, Fixture, Snapshot, xdp_action},
    packet::{Frame, tcp_flags::*},
};

/// One segment of a client's flow: its TCP flags, and seconds the clock
/// moves first.
#[derive(Clone, Copy)]
struct Step {
    flags: u8,
    later_s: u32,
}

const fn tcp(flags: u8) -> Step {
    Step { flags, later_s: 0 }
}

const fn after(later_s: u32, flags: u8) -> Step {
    Step { flags, later_s }
}

/// Handshake counters: syns, syn retries, handshakes, early resets.
type Handshakes = [u64; 4];

fn handshakes(counters: &TrafficCounters) -> Handshakes {
    [
        counters.syns,
        counters.syn_retries,
        counters.handshakes,
        counters.early_resets,
    ]
}

/// What moved between `before` and `after`, per backend id (only those
/// that moved) and for the VIPs together.
fn moved(before: &Snapshot, after: &Snapshot) -> (Vec<(u32, Handshakes)>, Handshakes) {
    let delta = |a: &TrafficCounters, b: &TrafficCounters| {
        let (a, b) = (handshakes(a), handshakes(b));
        [b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3]]
    };
    let backends = after
        .backends
        .iter()
        .map(|(id, counters)| (*id, delta(&before.backends[id], counters)))
        .filter(|(_, d)| *d != [0; 4])
        .collect();
    let vips = after
        .vips
        .iter()
        .map(|(id, counters)| delta(&before.vips[id], counters))
        .fold([0; 4], |sum, d| {
            [sum[0] + d[0], sum[1] + d[1], sum[2] + d[2], sum[3] + d[3]]
        });
    (backends, vips)
}

/// Sequences of a client's packets and the counts they must add.
fn sequences() -> Vec<(&'static str, Vec<Step>, Handshakes)> {
    vec![
        (
            "SYN, ACK: a handshake",
            vec![tcp(SYN), tcp(ACK)],
            [1, 0, 1, 0],
        ),
        (
            "SYN three times, then ACK: two retries, one handshake",
            vec![tcp(SYN), after(1, SYN), after(2, SYN), tcp(ACK)],
            [1, 2, 1, 0],
        ),
        (
            "SYN, then the client's RST: no handshake",
            vec![tcp(SYN), tcp(RST)],
            [1, 0, 0, 0],
        ),
        (
            "SYN, ACK, RST at once: an early reset",
            vec![tcp(SYN), tcp(ACK), tcp(RST | ACK)],
            [1, 0, 1, 1],
        ),
        (
            "SYN, ACK, RST after the window: not early",
            vec![tcp(SYN), tcp(ACK), after(EARLY_RESET_S, RST | ACK)],
            [1, 0, 1, 0],
        ),
        (
            "SYN, ACK, FIN, RST: a close, not a reset",
            vec![tcp(SYN), tcp(ACK), tcp(FIN | ACK), tcp(RST | ACK)],
            [1, 0, 1, 0],
        ),
        (
            "SYN, then many ACKs: one handshake only",
            vec![tcp(SYN), tcp(ACK), tcp(ACK), tcp(PSH | ACK), tcp(ACK)],
            [1, 0, 1, 0],
        ),
        (
            "a flow the table did not know (ACK, ACK): nothing",
            vec![tcp(ACK), tcp(ACK)],
            [0, 0, 0, 0],
        ),
        (
            "the 5-tuple reused after a handshake: two attempts",
            vec![tcp(SYN), tcp(ACK), after(5, SYN), tcp(ACK)],
            [2, 0, 2, 0],
        ),
        (
            "a SYN again after the idle timeout: a new attempt",
            vec![tcp(SYN), after(1000, SYN)],
            [2, 0, 0, 0],
        ),
    ]
}

/// Runs every sequence from `client` (an address and a first port) to
/// `vip` (a TCP VIP of `fixture`'s) and returns what went wrong.
fn check(fixture: &mut Fixture, (client, vip): (&str, &str)) -> Vec<String> {
    let mut problems = Vec::new();
    let mut epoch = 100_000;
    for (index, (what, steps, expected)) in sequences().into_iter().enumerate() {
        let src = format!("{client}:{}", 41_000 + index);
        let before = fixture.snapshot();
        for step in &steps {
            epoch += step.later_s;
            fixture.set_epoch(epoch);
            let frame = Frame::tcp(&src, vip, step.flags);
            let run = fixture.run(&frame.bytes()).expect("test run");
            if run.action != xdp_action::TX {
                problems.push(format!("{vip} {what}: a packet was not forwarded"));
            }
        }
        let (backends, vips) = moved(&before, &fixture.snapshot());
        if vips != expected {
            problems.push(format!(
                "{vip} {what}: the VIPs' counters moved by {vips:?}, expected {expected:?}"
            ));
        }
        let charged = match backends.as_slice() {
            [] => [0; 4],
            [(_, moved)] => *moved,
            more => {
                problems.push(format!("{vip} {what}: several backends charged: {more:?}"));
                continue;
            }
        };
        if charged != expected {
            problems.push(format!(
                "{vip} {what}: its backend's counters moved by {charged:?}, expected {expected:?}"
            ));
        }
        epoch += 10_000;
    }
    problems
}

#[test]
fn each_sequence_counts_its_handshakes_on_its_backend() {
    let mut fixture = Fixture::standard();
    let mut problems = check(&mut fixture, ("198.18.2.7", "198.18.0.100:80"));
    problems.extend(check(&mut fixture, ("[2001:2::2:7]", "[2001:2::100]:80")));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn encapsulated_flows_count_their_handshakes_too() {
    let mut fixture = Fixture::with_config(ENCAP_CONFIG);
    let mut problems = check(&mut fixture, ("198.18.2.7", "198.18.0.110:80"));
    problems.extend(check(&mut fixture, ("[2001:2::2:7]", "[2001:2::110]:80")));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn udp_flows_count_no_handshakes() {
    let mut fixture = Fixture::standard();
    let before = fixture.snapshot();
    for port in 5000..5010 {
        let frame = Frame::udp(&format!("198.18.2.7:{port}"), "198.18.0.100:53");
        for _ in 0..3 {
            let run = fixture.run(&frame.bytes()).expect("test run");
            assert_eq!(run.action, xdp_action::TX, "UDP is forwarded");
        }
    }
    let after = fixture.snapshot();
    let (backends, vips) = moved(&before, &after);
    assert!(backends.is_empty(), "UDP charged a backend: {backends:?}");
    assert_eq!(vips, [0; 4], "UDP moved the VIPs' handshake counters");
    let new_flows: u64 = after
        .vips
        .iter()
        .map(|(id, c)| c.new_flows - before.vips[id].new_flows)
        .sum();
    assert_eq!(new_flows, 10, "the datagrams still count as new flows");
}
