//! The SYN-flood experiment that both the kernel test and the bench run:
//! establish flows on a VIP, swap its table so that many of them would
//! hash elsewhere, flood the VIP with distinct spoofed SYNs, then see how
//! many established flows still reach their original backend.

use aya::{TestRun as _, TestRunOptions};
use lb_common::maps::Reason;
use lb_userspace::{
    config::Config,
    dataplane::state::{DesiredState, UnknownMac},
};

use crate::{
    fixture::{Fixture, STANDARD_CONFIG, TEST_SEED, xdp_action},
    packet::{Frame, tcp_flags::*},
};

const WEB4: &str = "198.18.0.100:80";

/// What the flood did.
#[derive(Clone, Copy, Debug)]
pub struct FloodOutcome {
    /// Flows established (SYN, then ACK) before the swap.
    pub established: usize,
    /// How many of them the new table sends elsewhere: the flows only
    /// their connection entries keep in place.
    pub would_move: usize,
    /// Established flows whose next packet still reached their backend.
    pub survived: usize,
    /// Spoofed SYNs sent.
    pub flood: usize,
    /// Flood SYNs forwarded (not dropped).
    pub flood_forwarded: usize,
    /// Entries the flood's SYNs took from other flows (`conn_evicted`).
    pub evicted: u64,
    /// Flood SYNs that found no way they could take (`conn_insert_failed`).
    pub untracked: u64,
    /// Mean kernel time per flood SYN, in nanoseconds.
    pub ns_per_syn: f64,
}

impl FloodOutcome {
    /// The fraction of established flows that kept their backend.
    pub fn survival(&self) -> f64 {
        self.survived as f64 / self.established as f64
    }
}

/// The standard state with web4's b3 (half of web4's weight) drained, its
/// ids kept: about half of web4's flows hash elsewhere under it.
pub fn b3_drained(previous: &DesiredState) -> DesiredState {
    let b3 = r#"name = "b3", address = "198.18.1.3", weight = 2"#;
    assert!(STANDARD_CONFIG.contains(b3));
    let text = STANDARD_CONFIG.replacen(b3, &b3.replace("weight = 2", "weight = 0"), 1);
    let config = Config::parse(&text).expect("the drained config parses");
    DesiredState::build_from(&config, Some(previous), |b| {
        b.mac.ok_or(UnknownMac {
            address: b.address,
            why: "no MAC in the test config",
        })
    })
    .expect("the drained state builds")
}

/// The client end of established flow `i`.
fn established_client(i: usize) -> String {
    format!(
        "198.18.{}.{}:{}",
        16 + i / 250,
        i % 250 + 1,
        40000 + i % 1000
    )
}

/// Sends `frame` once and returns the output's destination MAC, if the
/// program forwarded it.
fn forwarded_mac(fixture: &mut Fixture, frame: &[u8]) -> Option<[u8; 6]> {
    let run = fixture.run(frame).expect("test run");
    (run.action == xdp_action::TX).then(|| run.output[..6].try_into().expect("a MAC"))
}

/// Runs the experiment with `established` flows and `flood` spoofed SYNs.
pub fn syn_flood(fixture: &mut Fixture, established: usize, flood: usize) -> FloodOutcome {
    assert!(established <= 10_000 && flood <= 1 << 24);
    let clients: Vec<String> = (0..established).map(established_client).collect();
    let mut backends = Vec::with_capacity(established);
    for client in &clients {
        forwarded_mac(fixture, &Frame::tcp(client, WEB4, SYN).bytes()).expect("SYN forwarded");
        let mac =
            forwarded_mac(fixture, &Frame::tcp(client, WEB4, ACK).bytes()).expect("ACK forwarded");
        backends.push(mac);
    }
    let next = b3_drained(&fixture.state);
    fixture.dataplane.install(&next).expect("the swap installs");
    let would_move = clients
        .iter()
        .zip(&backends)
        .filter(|(client, mac)| {
            let flow = Frame::tcp(client, WEB4, ACK).flow();
            next.backend_for(&flow, &TEST_SEED)
                .is_some_and(|b| b.mac.0 != **mac)
        })
        .count();
    fixture.state = next;

    // The flood: distinct sources from 198.19.0.0/16 and ports, one run each,
    // rewriting one frame in place.
    let before = fixture.snapshot();
    let mut frame = Frame::tcp("198.19.0.0:1024", WEB4, SYN).bytes();
    let mut output = vec![0u8; frame.len() + 512];
    let (mut forwarded, mut nanos) = (0usize, 0u128);
    let program = fixture.dataplane.program().expect("program");
    for i in 0..flood {
        // IPv4 source at 26..30, TCP source port at 34..36.
        frame[28] = (i >> 8) as u8;
        frame[29] = i as u8;
        frame[34..36].copy_from_slice(&(1024 + (i >> 16) as u16).to_be_bytes());
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut output),
                repeat: 1,
                ..Default::default()
            })
            .expect("flood test run");
        forwarded += usize::from(result.return_value == xdp_action::TX);
        nanos += result.duration.as_nanos();
    }
    let after = fixture.snapshot();
    let survived = clients
        .iter()
        .zip(&backends)
        .filter(|(client, mac)| {
            forwarded_mac(fixture, &Frame::tcp(client, WEB4, ACK).bytes()) == Some(**mac)
        })
        .count();
    FloodOutcome {
        established,
        would_move,
        survived,
        flood,
        flood_forwarded: forwarded,
        evicted: after.reason_delta(&before, Reason::ConnEvicted),
        untracked: after.reason_delta(&before, Reason::ConnInsertFailed),
        ns_per_syn: nanos as f64 / flood as f64,
    }
}
