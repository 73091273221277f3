//! `fulcrum trace` end to end: the daemon streams the data plane's
//! decisions for one VIP while real connections run, each event names the
//! backend the client saw and `fulcrum explain` predicts, and the session
//! ends (tracing off) when the client stops reading.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use lb_tests::{
    lab::{BackendSpec, Lab, TCP_PORT, VIP4},
    traffic::Session,
};
use serde_json::Value;

/// Events asked for.
const COUNT: usize = 20;

#[test]
fn a_trace_of_one_vip_shows_what_the_clients_saw() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let web4 = SocketAddr::new(VIP4.into(), TCP_PORT);
    let (events, sessions) = std::thread::scope(|scope| {
        let trace = scope.spawn(|| {
            lab.cli(&[
                "trace",
                "--vip",
                "web4",
                "--count",
                &COUNT.to_string(),
                "--format",
                "json",
            ])
        });
        // The traffic starts once the session is open.
        await_log(&lab, "trace: session 1 on");
        let mut sessions = HashMap::new();
        // UDP to another VIP meanwhile: not traced.
        let _ = lb_tests::traffic::udp_flows(
            lab.client(),
            SocketAddr::new(VIP4.into(), lb_tests::lab::UDP_PORT),
            20,
            30000,
        );
        for _ in 0..COUNT {
            let mut session = Session::open(lab.client(), web4).expect("a connection");
            session.ask().expect("an answer");
            let source = session.source().expect("source");
            sessions.insert(source, session.backend.clone());
        }
        let (code, stdout, stderr) = trace.join().expect("trace thread").expect("fulcrum trace");
        assert_eq!(code, 0, "fulcrum trace: {stderr}");
        (stdout, sessions)
    });
    let events: Vec<Value> = events
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(events.len(), COUNT, "{events:#?}");
    for event in &events {
        assert_eq!(event["vip"], "web4", "{event}");
        assert_eq!(event["action"], "tx", "{event}");
        let source = event["source"].as_str().expect("a source");
        let seen = sessions
            .get(&source.parse::<SocketAddr>().expect("an address"))
            .unwrap_or_else(|| panic!("no client connection from {source}: {event}"));
        assert_eq!(event["backend"].as_str(), Some(seen.as_str()), "{event}");
        let (code, explained, stderr) = lab
            .cli(&[
                "explain",
                "tcp",
                source,
                &web4.to_string(),
                "--format",
                "json",
            ])
            .expect("fulcrum explain");
        assert_eq!(code, 0, "{stderr}");
        let explained: Value = serde_json::from_str(&explained).expect("explain's JSON");
        assert_eq!(
            explained["backend"], event["backend"],
            "{event} vs {explained}"
        );
        let via = event["via"].as_str().expect("via");
        assert!(via == "table" || via == "connection-table", "{event}");
    }
    // The client went: the daemon closes the session and turns tracing off.
    await_log(&lab, "trace: session 1 off");

    // A client killed mid-stream (as a crash would): the same, within the
    // second the daemon takes to notice.
    let mut client = std::process::Command::new(lb_tests::lab::fulcrum_binary().expect("fulcrum"))
        .args(["trace", "--socket"])
        .arg(lab.socket())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fulcrum trace starts");
    await_log(&lab, "trace: session 2 on");
    client.kill().expect("kill the client we started");
    client.wait().expect("reaped");
    await_log(&lab, "trace: session 2 off");
}

/// Waits up to 5 s for a line of the daemon's log containing `text`.
fn await_log(lab: &Lab, text: &str) {
    if let Err(e) = lab.await_log(text, Duration::from_secs(5)) {
        panic!("{e:#}");
    }
}
