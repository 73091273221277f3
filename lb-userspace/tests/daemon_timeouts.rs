//! Every verb that talks to the daemon gives up on one that accepts the
//! connection and never answers (stuck, or not a fulcrum at all): after
//! `--timeout`, one line on stderr that names the socket and the timeout,
//! and exit status 1.

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

/// `fulcrum args... --socket SOCKET --timeout 1`, started.
fn start(args: &[&str], socket: &Path) -> Child {
    guarded(fulcrum())
        .args(args)
        .arg("--socket")
        .arg(socket)
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
        .map(|args| (args, start(args, &socket)))
        .collect();
    for (args, child) in running {
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
}
