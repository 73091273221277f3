//! A lab daemon's `fulcrum status --format json`, read as JSON: its VIPs
//! and backends by name, waits on what it says, and long-lived sessions
//! held open to chosen backends.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    lab::{Lab, TCP_PORT, VIP4},
    traffic::Session,
    wait,
};

/// The lab's IPv4 TCP VIP, `web4`.
pub fn web4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), TCP_PORT)
}

/// The daemon's status.
pub fn status(lab: &Lab) -> Value {
    let (code, stdout, stderr) = lab
        .cli(&["status", "--format", "json"])
        .expect("fulcrum status runs");
    assert_eq!(code, 0, "status failed: {stdout} {stderr}");
    serde_json::from_str(&stdout).expect("status prints JSON")
}

/// VIP `name` of a status.
pub fn vip<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .expect("the VIP")
}

/// Backend `name` of VIP `vip_name` of a status.
pub fn backend<'a>(status: &'a Value, vip_name: &str, name: &str) -> &'a Value {
    vip(status, vip_name)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .expect("the backend")
}

/// Waits until `ready` holds for the status, or `limit` passes; returns
/// the status and how long it took.
pub fn wait_for(lab: &Lab, limit: Duration, ready: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let started = Instant::now();
    let now = wait::until(
        limit,
        || {
            let now = status(lab);
            Ok(if ready(&now) { Ok(now) } else { Err(now) })
        },
        |now| Ok(format!("status: {now:#}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (now, started.elapsed())
}

/// Long-lived connections to web4 until every backend of `backends` has
/// at least two.
pub fn sessions(lab: &Lab, backends: &[&str]) -> Vec<Session> {
    let mut open = Vec::new();
    for _ in 0..200 {
        if backends
            .iter()
            .all(|b| open.iter().filter(|s: &&Session| s.backend == *b).count() >= 2)
        {
            return open;
        }
        open.push(Session::open(lab.client(), web4()).expect("a connection"));
    }
    panic!("200 connections did not reach every backend twice");
}

/// The lab's config file with `line` added to web4, as an operator
/// writes it.
pub fn web4_edited(lab: &Lab, line: &str) -> String {
    let text = std::fs::read_to_string(lab.config_path()).expect("the config");
    let edited = text.replacen(
        "name = \"web4\"\n",
        &format!("name = \"web4\"\n{line}\n"),
        1,
    );
    assert_ne!(edited, text, "web4 is in the config");
    edited
}

/// Adds `line` to web4 by editing the lab's config file, and waits until
/// the daemon has applied the edit.
pub fn edit_web4(lab: &Lab, line: &str) {
    let generation = status(lab)["generation"].as_u64().expect("a generation");
    std::fs::write(lab.config_path(), web4_edited(lab, line)).expect("the edit");
    wait_for(lab, Duration::from_secs(10), |s| {
        s["generation"].as_u64() > Some(generation)
    });
}
