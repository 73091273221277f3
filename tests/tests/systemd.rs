//! Under systemd: the shipped unit says what the daemon does (ready once
//! serving, reload through the gate, no restart for a refused config or a
//! detach) and passes `systemd-analyze verify`; the daemon speaks the
//! readiness protocol on `$NOTIFY_SOCKET` as the unit expects: `READY=1`
//! only once the first config is verified and the program attached,
//! `STOPPING=1` when it stops, and nothing but exit status 78 when its
//! config is refused.

use std::{os::unix::net::UnixDatagram, path::Path, process::Command, time::Duration};

use lb_tests::{
    fixture::require_root,
    lab::{BackendSpec, Lab, Run, fulcrum_binary},
    scratch::Scratch,
};

/// The unit as shipped.
const UNIT: &str = include_str!("../../deploy/systemd/fulcrum.service");

/// The values of `key=` in the unit, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// A datagram socket at `path` for the daemon to tell.
fn listen(path: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(path).expect("a notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a timeout");
    socket
}

/// The next message on `socket`.
fn next(socket: &UnixDatagram) -> String {
    let mut buffer = [0u8; 512];
    let n = socket.recv(&mut buffer).expect("a message from the daemon");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn the_unit_says_what_the_daemon_does_and_verifies() {
    assert_eq!(values(UNIT, "Type"), ["notify"]);
    assert_eq!(
        values(UNIT, "ExecReload"),
        ["/usr/bin/fulcrum apply /etc/fulcrum/fulcrum.toml"],
        "a reload goes through the gate, and fails when it refuses"
    );
    assert_eq!(values(UNIT, "RestartPreventExitStatus"), ["78 0"]);
    assert_eq!(values(UNIT, "Restart"), ["always"]);
    // systemd itself reads it, with this build as the binary (the man page
    // is the package's, not installed here).
    let scratch = Scratch::new("unit");
    let binary = fulcrum_binary().expect("the fulcrum binary");
    let unit: String = UNIT
        .replace("/usr/bin/fulcrum", &binary.display().to_string())
        .lines()
        .filter(|line| !line.starts_with("Documentation="))
        .map(|line| format!("{line}\n"))
        .collect();
    let path = scratch.0.join("fulcrum.service");
    std::fs::write(&path, unit).expect("the unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian's systemd; `cargo xtask setup` installs it)");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn ready_only_once_serving_and_stopping_when_it_stops() {
    require_root();
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    // Taken over by a daemon started the way systemd starts it.
    lab.stop_fulcrum().expect("fulcrum stops");
    let scratch = Scratch::new("notify");
    let path = scratch.0.join("notify.sock");
    let socket = listen(&path);
    let path = path.display().to_string();
    let env = [("NOTIFY_SOCKET", path.as_str())];
    let run = Run {
        env: &env,
        ..Run::default()
    };
    let binary = fulcrum_binary().expect("the fulcrum binary");
    lab.start_fulcrum_with(&run, &binary)
        .expect("fulcrum starts");
    let ready = next(&socket);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(
        ready.contains("STATUS=serving on eth0, generation "),
        "{ready:?}"
    );
    assert!(lab.lb_has_xdp().unwrap(), "ready means attached");
    let (code, status, _) = lab.cli(&["status"]).expect("status");
    assert_eq!(code, 0, "ready means answering: {status}");
    lab.stop_fulcrum().expect("fulcrum stops");
    assert_eq!(next(&socket), "STOPPING=1");
}

#[test]
fn a_refused_config_exits_78_and_never_says_ready() {
    require_root();
    let scratch = Scratch::new("refused");
    let config = scratch.0.join("fulcrum.toml");
    std::fs::write(
        &config,
        "interface = \"lo\"\n[[vip]]\naddress = \"198.18.100.1\"\nport = 80\n\
         protocol = \"tcp\"\nbackend = [{ address = \"198.18.0.11\" }]\n",
    )
    .expect("a config");
    let path = scratch.0.join("notify.sock");
    let socket = listen(&path);
    let output = Command::new(fulcrum_binary().expect("the fulcrum binary"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--state-root")
        .arg(scratch.0.join("state"))
        .env("NOTIFY_SOCKET", &path)
        .output()
        .expect("fulcrum runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("[too-few-backends]"), "{stderr}");
    // It has exited: whatever it sent is queued.
    socket.set_nonblocking(true).expect("non-blocking");
    let mut buffer = [0u8; 512];
    let sent = socket.recv(&mut buffer);
    assert!(
        sent.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "told systemd {:?}",
        sent.map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned())
    );
}
