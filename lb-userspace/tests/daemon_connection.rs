//! Which daemon the verbs ask, and for how long. Every verb that talks to
//! the daemon gives up on one that accepts the connection and never
//! answers (stuck, or not a fulcrum at all): after `--timeout`, one line on
//! stderr that names the socket and the timeout, and exit status 1. That
//! line also tells which socket a verb asked: `apply FILE` and `plan FILE`
//! ask the daemon FILE's `[api] socket` names, unless `--socket` says
//! otherwise.

mod common;

use std::{os::unix::net::UnixListener, path::Path, process::Child};

use common::{Scratch, fulcrum, guarded};

/// A Unix socket that accepts every connection, holds it open and never
/// answers, for as long as the test runs.
fn silent_daemon(socket: &Path) {
    let listener = UnixListener::bind(socket).expect("the socket binds");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
}

/// `fulcrum args... --timeout 1`, started.
fn start(args: &[&str]) -> Child {
    guarded(fulcrum())
        .args(args)
        .args(["--timeout", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fulcrum starts")
}

#[test]
fn every_verb_gives_up_on_a_daemon_that_never_answers() {
    let scratch = Scratch::new("silent-daemon");
    let socket = scratch.0.join("api.sock");
    silent_daemon(&socket);
    // What the daemon would be sent does not matter: it never answers.
    let config = scratch.file("fulcrum.toml", "");
    let config = config.to_str().expect("a UTF-8 path");
    let sock = socket.to_str().expect("a UTF-8 path");
    let verbs: [&[&str]; 12] = [
        &["status"],
        &["plan", config],
        &["apply", config],
        &["backend", "drain", "web", "b1"],
        &["backend", "set-weight", "web", "b1", "2"],
        &["tables"],
        &["compare", sock, config],
        &["explain", "tcp", "198.18.0.1:40000", "198.18.100.1:80"],
        &["detach"],
        // Streams: the timeout bounds their start.
        &["trace"],
        &["top"],
        // JSON readers get their error as a document, and the same line.
        &["status", "--format", "json"],
    ];
    // All at once: each waits its own second.
    let running: Vec<_> = verbs
        .iter()
        .map(|args| (args, start(&[args, &["--socket", sock][..]].concat())))
        .collect();
    for (args, child) in running {
        gave_up_on(args, child, &socket);
    }
}

/// Checks that `child` (running `args`) gave up on the daemon on `socket`.
fn gave_up_on(args: &[&str], child: Child, socket: &Path) {
    let output = child.wait_with_output().expect("fulcrum ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    let want = format!(
        "no answer from the daemon on {} within 1 s (--timeout)",
        socket.display()
    );
    assert!(stderr.contains(&want), "{args:?}: {stderr}");
}

#[test]
fn apply_and_plan_ask_the_daemon_their_config_names() {
    let scratch = Scratch::new("config-socket");
    let named = scratch.0.join("named.sock");
    let given = scratch.0.join("given.sock");
    silent_daemon(&named);
    silent_daemon(&given);
    let text = format!("[api]\nsocket = {:?}\n", named.display().to_string());
    let config = scratch.file("fulcrum.toml", &text);
    let config = config.to_str().expect("a UTF-8 path");
    let given_arg = given.to_str().expect("a UTF-8 path");
    let cases: [(&[&str], &Path); 4] = [
        (&["apply", config], &named),
        (&["plan", config], &named),
        (&["apply", config, "--socket", given_arg], &given),
        (&["plan", config, "--socket", given_arg], &given),
    ];
    let running: Vec<_> = cases
        .iter()
        .map(|(args, socket)| (args, start(args), socket))
        .collect();
    for (args, child, socket) in running {
        gave_up_on(args, child, socket);
    }
    // Planned offline, no daemon is asked.
    for offline in [
        &["plan", config, "--against", config][..],
        &["plan", config, "--from-nothing"],
    ] {
        let output = start(offline).wait_with_output().expect("fulcrum ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{offline:?}: {stderr}");
    }
}
