//! `fulcrum top` in a real terminal: tmux runs it in a 120x40 pane against
//! the namespace lab's daemon. The screen shows every VIP and backend, rates
//! above zero while traffic flows, and the share bars; a daemon that goes
//! away is an error on the screen until it is back; a resize redraws it;
//! `q` and Ctrl-C end it with status 0 and the terminal given back (the
//! main screen, not raw mode); no daemon at all is an error before the
//! screen is taken.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{BackendSpec, Lab, VIP_NAMES, fulcrum_binary},
    wait,
};

const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];
const PATIENCE: Duration = Duration::from_secs(20);

/// A tmux server of this test's own (a private socket), running one shell
/// command in a 120x40 pane that stays visible after the command ends.
/// Dropping it kills the server, also when the test fails.
struct Tmux {
    server: String,
    /// The server's socket, which `kill-server` leaves behind.
    socket: Option<PathBuf>,
}

impl Tmux {
    /// Starts `command` in a detached session.
    fn start(command: &str) -> Self {
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let mut tmux = Self {
            server: format!(
                "fulcrum-top-test-{}-{}",
                std::process::id(),
                SERVERS.fetch_add(1, Ordering::Relaxed)
            ),
            socket: None,
        };
        // remain-on-exit before the session: even a command that ends at
        // once leaves its pane to read.
        let mut args = vec!["-f", "/dev/null", "start-server", ";"];
        args.extend(["set-option", "-g", "remain-on-exit", "on", ";"]);
        args.extend(["new-session", "-d", "-s", "top", "-x", "120", "-y", "40"]);
        args.extend([command, ";", "display-message", "-p", "#{socket_path}"]);
        let socket = tmux.run(&args);
        tmux.socket = Some(PathBuf::from(socket.trim()));
        tmux
    }

    /// Runs a tmux command on this server; returns its stdout.
    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(["-u", "-L", &self.server])
            .args(args)
            .output()
            .expect("tmux runs (is it installed?)");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What the pane shows.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// All the pane printed, wrapped lines joined: when a pane ends, tmux
    /// scrolls its first line into the history to say so at the bottom.
    fn printed(&self) -> String {
        self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "top"])
    }

    /// Waits until the pane shows what `done` looks for; returns it.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        wait::until(
            PATIENCE,
            || {
                let screen = self.screen();
                Ok(if done(&screen) {
                    Ok(screen)
                } else {
                    Err(screen)
                })
            },
            |screen| Ok(format!("no {what}:\n{screen}")),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The screens shown while `work` runs and after it, captured every
    /// 200 ms until `enough` holds of them (rates are of the last interval,
    /// so they show a little after the traffic), or `PATIENCE` after
    /// `work` ends.
    fn screens_during<T>(
        &self,
        work: impl FnOnce() -> T,
        enough: impl Fn(&[String]) -> bool + Sync,
    ) -> (T, Vec<String>) {
        let ended = OnceLock::new();
        thread::scope(|scope| {
            let capturer = scope.spawn(|| {
                let mut screens = vec![self.screen()];
                while ended
                    .get()
                    .is_none_or(|ended: &Instant| !enough(&screens) && ended.elapsed() < PATIENCE)
                {
                    thread::sleep(Duration::from_millis(200));
                    screens.push(self.screen());
                }
                screens
            });
            let result = work();
            ended.get_or_init(Instant::now);
            (result, capturer.join().expect("the capturing thread"))
        })
    }

    fn send(&self, key: &str) {
        self.run(&["send-keys", "-t", "top", key]);
    }

    /// Waits for the pane's command to end and checks that the terminal
    /// was given back: not on the alternate screen, and not in raw mode
    /// (what `stty -a` printed after top); returns the pane's screen.
    fn ended(&self) -> String {
        let state = wait::until(
            PATIENCE,
            || {
                let state = self.run(&[
                    "display-message",
                    "-p",
                    "-t",
                    "top",
                    "#{pane_dead} #{alternate_on}",
                ]);
                Ok(if state.starts_with('1') {
                    Ok(state)
                } else {
                    Err(state)
                })
            },
            |state| Ok(format!("the pane's command is still running ({state})")),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.printed()));
        let screen = self.printed();
        assert_eq!(state.trim(), "1 0", "ended, on the main screen:\n{screen}");
        let modes: Vec<&str> = screen.split_whitespace().collect();
        assert!(
            modes.contains(&"icanon") && modes.contains(&"echo"),
            "the terminal is out of raw mode:\n{screen}"
        );
        assert!(!screen.contains("panicked"), "{screen}");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.server, "kill-server"])
            .output();
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The pane's command: top against `socket`, then its exit status and the
/// terminal's modes as top left them.
fn top_command(socket: &Path) -> String {
    let binary = fulcrum_binary().expect("the fulcrum binary");
    let quoted = |path: &Path| {
        let path = path.display().to_string();
        assert!(!path.contains('\''), "{path}");
        format!("'{path}'")
    };
    format!(
        "{} top --socket {}; echo \"top exited $?\"; stty -a",
        quoted(&binary),
        quoted(socket)
    )
}

/// Whether a rate as top prints it (`0`, `12.5`, `1.2k`, `3.0MB`, `-`) is
/// above zero.
fn positive(rate: &str) -> bool {
    rate.trim_end_matches(['k', 'M', 'G', 'B'])
        .parse::<f64>()
        .is_ok_and(|rate| rate > 0.0)
}

/// The rates a screen shows, as (VIP, backend or "" for the VIP's own,
/// packets/s, new flows/s).
fn rates(screen: &str) -> Vec<(String, String, String, String)> {
    let mut vip = String::new();
    let mut rates = Vec::new();
    for line in screen.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // The VIP's title rule: ` web4 198.18.100.1:80/tcp ─────`.
            [name, ..] if VIP_NAMES.contains(name) && line.contains('─') => {
                vip = name.to_string();
            }
            ["now", packets, "pkt/s", _, flows, ..] => {
                rates.push((
                    vip.clone(),
                    String::new(),
                    packets.to_string(),
                    flows.to_string(),
                ));
            }
            [name, _address, _weight, _health, packets, _bytes, flows, ..]
                if BACKENDS.contains(name) =>
            {
                rates.push((
                    vip.clone(),
                    name.to_string(),
                    packets.to_string(),
                    flows.to_string(),
                ));
            }
            _ => {}
        }
    }
    rates
}

fn lab() -> Lab {
    Lab::start(&BackendSpec::equal(3)).expect("lab starts")
}

fn everything_drawn(screen: &str) -> bool {
    VIP_NAMES.iter().all(|vip| screen.contains(vip))
        && rates(screen).len() == VIP_NAMES.len() * (1 + BACKENDS.len())
}

/// Whether `screens` show the traffic: the VIPs are driven one after the
/// other, so each shows its rates in some frame, its own and every
/// backend's; and the last frame draws each backend's share (observed over
/// expected, a bar for the flows it took over the window, a marker where
/// its table share ends). Else, what is missing.
fn traffic_shown(screens: &[String]) -> Result<(), String> {
    let shown: Vec<_> = screens.iter().flat_map(|s| rates(s)).collect();
    for vip in VIP_NAMES {
        for backend in [""].into_iter().chain(BACKENDS) {
            if !shown.iter().any(|(v, b, packets, flows)| {
                v == vip && b == backend && positive(packets) && positive(flows)
            }) {
                return Err(format!(
                    "{vip} {backend:?}: no frame with packets and new flows per second above zero"
                ));
            }
        }
    }
    let last = screens.last().map_or("", String::as_str);
    let rows: Vec<&str> = last
        .lines()
        .filter(|l| BACKENDS.iter().any(|b| l.starts_with(b)))
        .collect();
    if rows.len() != VIP_NAMES.len() * BACKENDS.len() {
        return Err(format!("{} backend rows", rows.len()));
    }
    for row in rows {
        if !row.contains("/33%") {
            return Err(format!("expected share 33%: {row}"));
        }
        if !row.contains('┃') {
            return Err(format!("the expected share's marker: {row}"));
        }
        if !row.contains(['█', '▉', '▊', '▋', '▌', '▍', '▎', '▏']) {
            return Err(format!("the observed share's bar: {row}"));
        }
    }
    if !last.contains("verdicts/s:") {
        return Err("no verdicts/s".into());
    }
    Ok(())
}

#[test]
fn top_draws_every_vip_and_backend_with_live_rates_and_share_bars_and_q_quits() {
    let lab = lab();
    let tmux = Tmux::start(&top_command(lab.socket()));
    let first = tmux.wait_for("frame with every VIP and backend", everything_drawn);
    assert!(first.contains("fulcrum top: eth0 attached"), "{first}");
    assert!(first.contains("q quit"), "{first}");
    // Rates from the second answer on.
    tmux.wait_for("frame with rates", |s| {
        everything_drawn(s) && rates(s).iter().all(|(.., packets, _)| packets != "-")
    });

    let (traffic, screens) = tmux.screens_during(
        || lab.drive(200, 200, 30000),
        |screens| traffic_shown(screens).is_ok(),
    );
    for (vip, tally) in &traffic.expect("traffic") {
        assert_eq!(tally.failures, 0, "{vip}: every flow answered");
    }
    if let Err(why) = traffic_shown(&screens) {
        panic!(
            "{why}; last frame:\n{}",
            screens.last().map_or("", String::as_str)
        );
    }
    tmux.send("q");
    let after = tmux.ended();
    assert!(after.contains("top exited 0"), "{after}");
}

#[test]
fn top_shows_a_daemon_gone_until_it_is_back_follows_a_resize_and_ctrl_c_quits() {
    let lab = lab();
    let tmux = Tmux::start(&top_command(lab.socket()));
    tmux.wait_for("frame with every VIP and backend", everything_drawn);

    lab.stop_fulcrum().expect("fulcrum stops");
    let gone = tmux.wait_for("error on the screen", |s| {
        s.contains("no answer from the daemon")
    });
    assert!(gone.contains("no fulcrum daemon answers on"), "{gone}");
    assert!(gone.contains("web4"), "the last answer stays: {gone}");
    lab.start_fulcrum().expect("fulcrum starts again");
    tmux.wait_for("frame without the error", |s| {
        !s.contains("no answer from the daemon") && everything_drawn(s)
    });

    // A smaller terminal: redrawn in 80 columns, scrolled with the arrows.
    tmux.run(&["resize-window", "-t", "top", "-x", "80", "-y", "20"]);
    let small = tmux.wait_for("frame in 80x20", |s| s.contains("scroll (VIPs 1-2 of 4)"));
    assert!(small.lines().all(|l| l.chars().count() <= 80), "{small}");
    tmux.send("Down");
    tmux.wait_for("frame scrolled down", |s| {
        s.contains("scroll (VIPs 2-3 of 4)") && !s.contains("web4")
    });

    tmux.send("C-c");
    let after = tmux.ended();
    assert!(after.contains("top exited 0"), "{after}");
}

#[test]
fn top_without_a_daemon_is_an_error_before_the_screen_is_taken() {
    let socket = Path::new("/nonexistent/sock");
    let expected = "fulcrum top: no fulcrum daemon answers on /nonexistent/sock";
    let output = Command::new(fulcrum_binary().expect("the fulcrum binary"))
        .args(["top", "--socket"])
        .arg(socket)
        .output()
        .expect("fulcrum runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
    assert!(stderr.contains("is `fulcrum run` running?"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing drawn");

    // In a real terminal: the message on the main screen, in cooked mode.
    let tmux = Tmux::start(&top_command(socket));
    let screen = tmux.ended();
    assert!(screen.contains(expected), "{screen}");
    assert!(screen.contains("top exited 1"), "{screen}");

    for interval in ["0", "60001"] {
        let output = Command::new(fulcrum_binary().expect("the fulcrum binary"))
            .args(["top", "--interval-ms", interval, "--socket"])
            .arg(socket)
            .output()
            .expect("fulcrum runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{interval} is not in 1..=60000")),
            "{stderr}"
        );
    }
}

/// `--format json` is a stream: one status document a line, every
/// interval; without a daemon, one JSON error and status 1.
#[test]
fn top_in_json_streams_one_status_a_line() {
    use std::io::{BufRead as _, BufReader};
    let lab = lab();
    let mut child = Command::new(fulcrum_binary().expect("the fulcrum binary"))
        .args([
            "top",
            "--format",
            "json",
            "--interval-ms",
            "100",
            "--socket",
        ])
        .arg(lab.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("fulcrum top runs");
    let mut lines = BufReader::new(child.stdout.take().expect("its stdout")).lines();
    for _ in 0..3 {
        let line = lines.next().expect("a line").expect("UTF-8");
        let status: lb_userspace::daemon::wire::StatusAnswer =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let names: Vec<&str> = status.report.vips.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, VIP_NAMES, "{line}");
    }
    child.kill().expect("stopping the top we started");
    let _ = child.wait();

    let output = Command::new(fulcrum_binary().expect("the fulcrum binary"))
        .args(["top", "--format", "json", "--socket", "/nonexistent/sock"])
        .output()
        .expect("fulcrum runs");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let error: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("no fulcrum daemon answers"),
        "{error}"
    );
}
