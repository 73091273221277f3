//! A SYN flood from one spoofed /24 against a running `fulcrum run`, in
//! the namespace lab: with a cap on each source prefix's new flows, the
//! flood's /24 is held to its allowance while the real client's new
//! connections all succeed and its established connections stay on their
//! backends; the refused flood is counted by VIP and reason.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{BackendSpec, Lab},
    packet::{Frame, tcp_flags::SYN},
    spoof,
    status::{edit_web4, sessions, status, vip, wait_for, web4},
    traffic,
};

/// web4's cap on each source /24's new flows, a second: its burst alone
/// covers the real client's connections (its own /24 is capped too).
const SOURCE_CAP: u64 = 200;

/// The real client's connections during the flood.
const REAL: usize = 200;

/// Spoofed SYNs of one round of the flood.
const FLOOD: usize = 40_000;

#[test]
fn a_flood_from_one_spoofed_prefix_is_capped_and_everyone_else_gets_through() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let mut held = sessions(&lab, &["b1", "b2", "b3"]);
    let first = status(&lab);
    let new_flows_before = vip(&first, "web4")["new_flows"].as_u64().unwrap();
    // The operator caps each source prefix, by editing the file.
    edit_web4(
        &lab,
        &format!("limits = {{ source_new_flows_per_s = {SOURCE_CAP} }}"),
    );

    // The flood: SYNs from every host of 198.18.99.0/24, every port, sent
    // raw from the client's host while the client connects for real.
    let frames: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| {
            let source = format!("198.18.99.{}:{}", i % 254 + 1, 1024 + i % 60000);
            Frame::tcp(&source, &web4().to_string(), SYN)
                .dst_mac(Lab::lb_mac())
                .bytes()
        })
        .collect();
    let started = Instant::now();
    // The flood goes on, round after round, until the real client is done.
    let done = AtomicBool::new(false);
    let (sent, real) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let mut sent = 0;
            while !done.load(Ordering::Relaxed) {
                sent += spoof::send_raw(lab.client(), "eth0", &frames)?;
            }
            anyhow::Ok(sent)
        });
        let real = traffic::tcp_connections(lab.client(), web4(), REAL, 4);
        done.store(true, Ordering::Relaxed);
        (flood.join().expect("flood thread"), real)
    });
    let elapsed = started.elapsed();
    let sent = sent.expect("the flood is sent") as u64;
    let real = real.expect("connections");
    eprintln!("flood: {sent} spoofed SYNs in {elapsed:.2?}; the real client: {real:?}");
    assert!(sent >= FLOOD as u64, "the flood went out: {sent}");
    assert_eq!(real.failures, 0, "every real connection succeeds: {real:?}");
    assert_eq!(real.answered(), REAL as u64);
    for session in &mut held {
        let backend = session.ask().expect("an established connection answers");
        assert_eq!(backend, session.backend, "it stays on its backend");
    }

    // What the data plane says: the flood's /24 got its allowance (a
    // burst of one second's worth, then the rate), the rest was refused.
    let allowance = SOURCE_CAP * (elapsed.as_secs() + 2);
    let (after, _) = wait_for(&lab, Duration::from_secs(10), |s| {
        vip(s, "web4")["refused"]["source_limit"].as_u64() > Some(0)
    });
    let refused = vip(&after, "web4")["refused"]["source_limit"]
        .as_u64()
        .unwrap();
    let new_flows = vip(&after, "web4")["new_flows"].as_u64().unwrap() - new_flows_before;
    let admitted = new_flows.saturating_sub(real.answered());
    eprintln!("refused {refused}, admitted {admitted} of the flood (allowance {allowance})");
    assert!(
        admitted <= allowance,
        "the flood's /24 took {admitted} new flows, more than {allowance}"
    );
    assert!(
        refused + admitted >= sent * 9 / 10,
        "the flood's SYNs are accounted for: {refused} refused, {admitted} admitted of {sent}"
    );
}
