//! Slow start in the namespace lab, against a running `fulcrum run`: a
//! backend that comes back from down takes a small part of its weight at
//! first and more at each step, so its share of new flows rises over
//! `slow_start_s` instead of jumping, while no connection fails.

use std::time::{Duration, Instant};

use lb_tests::{
    lab::{BackendSpec, Lab},
    status::{backend, edit_web4, wait_for, web4},
    traffic,
};
use serde_json::Value;

/// Checks every 300 ms, down after 2 failures, up after 2 successes.
const FAST_CHECKS: &str =
    "\n[health_check]\ninterval_ms = 300\ntimeout_ms = 200\nrise = 2\nfall = 2\n";

/// web4's ramp.
const SLOW_START_S: u64 = 20;

fn b3(status: &Value) -> &Value {
    backend(status, "web4", "b3")
}

/// b3's share of 300 new connections to web4, all of which must succeed.
fn new_flow_share(lab: &Lab) -> f64 {
    let tally = traffic::tcp_connections(lab.client(), web4(), 300, 4).expect("connections");
    assert_eq!(tally.failures, 0, "{tally:?}");
    tally.share("b3")
}

#[test]
fn a_returning_backend_ramps_up_its_share_of_new_flows() {
    let lab = Lab::start_with(&BackendSpec::equal(3), FAST_CHECKS).expect("lab starts");
    // The operator turns slow start on for web4, by editing the file.
    edit_web4(&lab, &format!("slow_start_s = {SLOW_START_S}"));

    lab.stop_backend(2);
    wait_for(&lab, Duration::from_secs(10), |s| {
        b3(s)["taken_down"] == true
    });
    lab.start_backend(2).expect("b3 restarts");
    let (first, _) = wait_for(&lab, Duration::from_secs(10), |s| {
        b3(s)["taken_down"] == false && b3(s)["slow_start"].is_number()
    });
    let started = Instant::now();
    let part = b3(&first)["slow_start"].as_f64().unwrap();
    let share = b3(&first)["expected_share"].as_f64().unwrap();
    eprintln!("back at {part} of its weight, {share:.3} of the table");
    assert!(part <= 0.2, "{part}");
    for name in ["b1", "b3"] {
        let weight = &backend(&first, "web4", name)["weight"];
        assert_eq!(
            weight, 1,
            "{name} shows its configured weight while b3 ramps"
        );
    }
    assert!(share < 0.1, "a small share first, not a third: {share}");
    let early = new_flow_share(&lab);

    // Halfway: more, still short of a third.
    let (half, _) = wait_for(&lab, Duration::from_secs(SLOW_START_S), |s| {
        b3(s)["slow_start"].as_f64().is_some_and(|p| p >= 0.5)
    });
    let middle = new_flow_share(&lab);
    let half_share = b3(&half)["expected_share"].as_f64().unwrap();

    // The end: its whole weight, a third of new flows.
    let (done, _) = wait_for(&lab, Duration::from_secs(SLOW_START_S + 5), |s| {
        b3(s)["slow_start"].is_null()
    });
    let took = started.elapsed();
    let late = new_flow_share(&lab);
    let full_share = b3(&done)["expected_share"].as_f64().unwrap();
    eprintln!(
        "table shares {share:.3} -> {half_share:.3} -> {full_share:.3}; new-flow shares \
         {early:.3} -> {middle:.3} -> {late:.3}; whole weight after {took:?}"
    );
    assert!(share < half_share && half_share < full_share);
    assert!((full_share - 1.0 / 3.0).abs() < 0.01, "{full_share}");
    assert!(early < 0.12, "b3 takes few new flows at first: {early}");
    assert!(early < middle && middle < late, "{early} {middle} {late}");
    assert!(late > 0.25, "a third at the end: {late}");
    assert!(
        took >= Duration::from_secs(SLOW_START_S * 8 / 10),
        "the ramp took its time: {took:?}"
    );
    let journal = std::fs::read_to_string(lab.journal()).expect("the journal");
    let steps = journal
        .lines()
        .filter(|l| l.contains("\"source\":\"slow-start\""))
        .count();
    assert!(
        (8..=10).contains(&steps),
        "one journalled change a step: {steps}"
    );
    lab.stop_fulcrum().expect("fulcrum stops");
}
