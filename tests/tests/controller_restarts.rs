//! The data plane outlives its controller. `kill -9` of `fulcrum run`, five
//! times (the last restart being an upgrade to another build), while long-lived TCP connections stay open and new connections
//! and UDP flows keep coming: no connection fails, no open connection
//! changes backend, and the counters keep rising instead of resetting,
//! because every restart adopts the pinned data plane, and swaps its own
//! build of the XDP program into the pinned link (the upgrade path: new
//! data-plane code on the same maps, no detach). And 50 applies
//! killed at random points: the kernel always holds one whole config, and
//! after the restart the file on disk is that config.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use lb_tests::{
    lab::{
        BackendSpec, Lab, Launch, TCP_PORT, UDP_PORT, VIP4, fulcrum_binary, fulcrum_upgrade_binary,
    },
    traffic::{self, Session, Tally},
    wait,
};
use lb_userspace::monitor::report::Report;

const KILLS: usize = 5;
const SESSIONS: usize = 12;

fn new_flows(reports: &[Report]) -> u64 {
    let last = reports.last().expect("a counter report");
    last.vips.iter().map(|v| v.new_flows).sum()
}

#[test]
fn kill_9_of_the_controller_loses_nothing() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let web4 = SocketAddr::new(IpAddr::V4(VIP4), TCP_PORT);
    let dns4 = SocketAddr::new(IpAddr::V4(VIP4), UDP_PORT);
    let mut sessions: Vec<Session> = (0..SESSIONS)
        .map(|_| Session::open(lab.client(), web4))
        .collect::<anyhow::Result<_>>()
        .expect("long-lived connections open");
    let stop = AtomicBool::new(false);
    let mut flows_seen = Vec::new();
    let mut programs = Vec::new();
    let (tally, rounds) = std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            let mut tally = Tally::default();
            let mut rounds = 0u16;
            while !stop.load(Ordering::Relaxed) {
                tally.merge(traffic::tcp_connections(lab.client(), web4, 40, 2)?);
                tally.merge(traffic::udp_flows(
                    lab.client(),
                    dns4,
                    20,
                    20000 + rounds * 20,
                )?);
                rounds += 1;
            }
            anyhow::Ok((tally, rounds))
        });
        for kill in 0..KILLS {
            std::thread::sleep(Duration::from_millis(300));
            lab.request_counters().expect("SIGUSR1");
            let reports = lab.kill_fulcrum().expect("kill -9");
            flows_seen.push(new_flows(&reports));
            assert!(lab.lb_has_xdp().unwrap(), "kill {kill}: still attached");
            for session in &mut sessions {
                let answer = session.ask().expect("an open connection answers");
                assert_eq!(
                    answer, session.backend,
                    "kill {kill}: no controller running"
                );
            }
            // The last restart is an upgrade, to another build of fulcrum.
            let log = if kill + 1 == KILLS {
                let upgrade = fulcrum_upgrade_binary().expect("the upgrade build");
                let log = lab
                    .start_fulcrum_from(&upgrade)
                    .expect("the upgrade starts");
                assert!(
                    log.iter().any(|l| l.contains("(upgrade-test) starting")),
                    "the other build runs: {log:?}"
                );
                log
            } else {
                lab.start_fulcrum().expect("fulcrum restarts")
            };
            assert!(
                log.iter().any(|l| l.contains("adopted the data plane")),
                "kill {kill}: the restart adopts: {log:?}"
            );
            let program = log
                .iter()
                .find_map(|l| l.split("XDP program (id ").nth(1))
                .and_then(|rest| rest.split(')').next())
                .unwrap_or_else(|| panic!("kill {kill}: the restart swaps its program in: {log:?}"))
                .to_string();
            assert!(
                !programs.contains(&program),
                "kill {kill}: a new program each time"
            );
            programs.push(program);
        }
        stop.store(true, Ordering::Relaxed);
        background
            .join()
            .expect("traffic thread")
            .expect("traffic runs")
    });
    assert!(
        rounds as usize >= KILLS,
        "traffic ran throughout: {rounds} rounds"
    );
    assert_eq!(
        tally.failures,
        0,
        "{} of {} attempts failed (first: {:?})",
        tally.failures,
        tally.answered() + tally.failures,
        tally.first_error
    );
    for session in &mut sessions {
        assert_eq!(session.ask().expect("still open"), session.backend);
    }
    lab.request_counters().expect("SIGUSR1");
    flows_seen.push(new_flows(&lab.stop_fulcrum().expect("fulcrum stops")));
    assert!(
        flows_seen.windows(2).all(|w| w[0] < w[1]),
        "new-flow counters keep rising across restarts: {flows_seen:?}"
    );
    eprintln!(
        "{KILLS} kills: {} connections and flows answered, 0 failed; {SESSIONS} \
         long-lived connections kept their backend; new flows counted: {flows_seen:?}; \
         programs swapped in: {programs:?}",
        tally.answered()
    );
    lab.detach().expect("fulcrum detach");
    assert!(!lab.lb_has_xdp().unwrap());
}

/// The first VIP's table shares for a config text, as validation builds them.
#[test]
fn a_restart_with_a_broken_edit_in_the_file_keeps_the_installed_config_and_says_so() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    let web4 = SocketAddr::new(IpAddr::V4(VIP4), TCP_PORT);
    let mut session = Session::open(lab.client(), web4).expect("a session");
    let good = std::fs::read_to_string(lab.config_path()).expect("config");
    let generation = |lab: &Lab| {
        let (code, stdout, stderr) = lab.cli(&["status", "--format", "json"]).expect("status");
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<Report>(&stdout)
            .expect("a report")
            .generation
    };
    let before = generation(&lab);
    // An edit that is not TOML: refused, and left in the file.
    let broken = format!("{good}\n[[vip]\nname = \"half");
    std::fs::write(lab.config_path(), &broken).expect("write");
    lab.await_log("file: REFUSED", Duration::from_secs(10))
        .expect("the edit is refused");
    lab.kill_fulcrum().expect("kill -9");
    let log = lab
        .start_fulcrum()
        .expect("the daemon starts with a broken file beside a running data plane");
    let said = |text: &str| log.iter().any(|l| l.contains(text));
    assert!(
        said("is invalid") && said("which stays in force until the file is fixed"),
        "{log:?}"
    );
    assert!(said("adopted the data plane"), "{log:?}");
    lab.await_log("start: REFUSED", Duration::from_secs(10))
        .expect("the file's edit is refused at start");
    assert_eq!(generation(&lab), before, "nothing was installed");
    assert_eq!(session.ask().expect("the session answers"), session.backend);
    assert_eq!(
        std::fs::read_to_string(lab.config_path()).expect("config"),
        broken,
        "the operator's edit is still in the file"
    );
    let file_in_force = |lab: &Lab| {
        lab.scrape()
            .expect("metrics")
            .get("fulcrum_config_file_in_force", &[])
    };
    assert_eq!(file_in_force(&lab), Some(0.0));
    // A file with no end (here /dev/zero) is reported, not read whole.
    std::fs::remove_file(lab.config_path()).expect("remove");
    std::os::unix::fs::symlink("/dev/zero", lab.config_path()).expect("symlink");
    lab.await_log("larger than 1048576 bytes", Duration::from_secs(10))
        .expect("the endless file is reported");
    let pid = lab.fulcrum_pid().expect("fulcrum runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    assert!(rss_kb < 256 * 1024, "the daemon holds {rss_kb} kB");
    std::fs::remove_file(lab.config_path()).expect("remove the link");
    // Reverting the edit puts the file in force again, with no change.
    std::fs::write(lab.config_path(), &good).expect("write");
    wait::until(
        Duration::from_secs(10),
        || {
            let seen = file_in_force(&lab);
            Ok(if seen == Some(1.0) { Ok(()) } else { Err(seen) })
        },
        |seen| Ok(format!("the reverted file is not seen in force: {seen:?}")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(generation(&lab), before);
    // Fixing the file applies it.
    let fixed = good.replacen("weight = 1", "weight = 2", 1);
    std::fs::write(lab.config_path(), &fixed).expect("write");
    lab.await_log("file: applied and verified", Duration::from_secs(10))
        .expect("the fixed file is applied");
    assert_eq!(generation(&lab), before + 1);
}

fn table_shares(text: &str) -> Vec<u32> {
    let validation = lb_userspace::policy::validate::validate(text);
    validation.tables[0]
        .as_ref()
        .expect("a table")
        .slots
        .clone()
}

/// The first VIP's (`web4`) table shares the daemon reports, in slots.
fn installed_shares(lab: &Lab, table_size: f64) -> Vec<u32> {
    let (code, stdout, stderr) = lab.cli(&["status", "--format", "json"]).expect("status");
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    status["vips"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| (b["expected_share"].as_f64().unwrap() * table_size).round() as u32)
        .collect()
}

/// A small deterministic generator (no dependency): the seed is printed,
/// so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn applies_killed_at_random_points_leave_old_or_new_never_a_mix() {
    const APPLIES: usize = 50;
    let lab = Lab::start(&BackendSpec::equal(4)).expect("lab starts");
    let even = std::fs::read_to_string(lab.config_path()).unwrap();
    // The other state: b1 of every VIP at weight 2 (within every guard).
    let heavy = even.replace(
        "name = \"b1\"\naddress = \"198.18.0.11\"\nweight = 1",
        "name = \"b1\"\naddress = \"198.18.0.11\"\nweight = 2",
    );
    assert_ne!(even, heavy);
    let dir = lab.config_path().with_extension("variants");
    std::fs::create_dir_all(&dir).unwrap();
    let variants = [
        (even.clone(), dir.join("even.toml")),
        (heavy.clone(), dir.join("heavy.toml")),
    ];
    for (text, path) in &variants {
        std::fs::write(path, text).unwrap();
    }
    let shares = [table_shares(&even), table_shares(&heavy)];
    let table_size = f64::from(shares[0].iter().sum::<u32>());
    // Kill points spread over the time one apply takes from the CLI's start.
    let mut window = Duration::ZERO;
    for (_, path) in variants.iter().rev() {
        let started = std::time::Instant::now();
        let status = Command::new(fulcrum_binary().unwrap())
            .arg("apply")
            .arg(path)
            .arg("--socket")
            .arg(lab.socket())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "a plain apply works");
        window = window.max(started.elapsed());
    }
    let window_us = (window.as_micros() as u64 * 3 / 2).max(1000);
    eprintln!("one apply takes {window:?}; kills fall within {window_us} us of its start");
    let seed = std::process::id() as u64 ^ 0x5eed;
    eprintln!("random kill points from seed {seed}");
    let mut random = Lcg(seed);
    let mut outcomes = [0usize; 2];
    for round in 0..APPLIES {
        let now = std::fs::read_to_string(lab.config_path()).unwrap();
        let target = usize::from(now == even);
        let mut apply = Command::new(fulcrum_binary().unwrap())
            .args(["apply"])
            .arg(&variants[target].1)
            .arg("--socket")
            .arg(lab.socket())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fulcrum apply starts");
        std::thread::sleep(Duration::from_micros(random.below(window_us)));
        lab.kill_fulcrum().expect("kill -9");
        let _ = apply.wait();
        let log = lab.start_fulcrum().expect("fulcrum restarts and adopts");
        assert!(
            log.iter().any(|l| l.contains("adopted the data plane")),
            "round {round}: {log:?}"
        );
        let on_disk = std::fs::read_to_string(lab.config_path()).unwrap();
        assert!(
            on_disk == even || on_disk == heavy,
            "round {round}: the file is one of the two configs, not a mix"
        );
        let installed = installed_shares(&lab, table_size);
        let held = shares.iter().position(|s| *s == installed);
        assert!(
            held.is_some(),
            "round {round}: the kernel holds {installed:?}, neither {:?} nor {:?}",
            shares[0],
            shares[1]
        );
        assert_eq!(
            Some(usize::from(on_disk == heavy)),
            held,
            "round {round}: after the restart the file and the kernel agree"
        );
        outcomes[usize::from(held == Some(target))] += 1;
    }
    eprintln!(
        "{APPLIES} applies killed at random points: {} landed, {} did not; every time the \
         kernel held one whole config and the file matched it",
        outcomes[1], outcomes[0]
    );
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "kills fell both before and after the switch: {outcomes:?}"
    );
    lab.stop_fulcrum().expect("fulcrum stops");
    lab.detach().expect("detach");
}

/// What `status --format json` and `/metrics` say of the pins' survival.
fn pins_survival(lab: &Lab) -> (Option<bool>, Option<f64>) {
    let (code, out, err) = lab
        .cli(&["status", "--format", "json"])
        .expect("fulcrum status runs");
    assert_eq!(code, 0, "status failed: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
    let metric = lab
        .scrape()
        .expect("metrics scrape")
        .get("fulcrum_pins_survive_restart", &[]);
    (status["pin_survival"]["survives"].as_bool(), metric)
}

#[test]
fn a_data_plane_that_would_die_with_the_daemon_is_said_to_at_start_in_status_and_metrics() {
    let lab = Lab::start(&BackendSpec::equal(3)).expect("lab starts");
    // On the host's bpffs (`nsenter --net`), the pins outlive the daemon.
    assert_eq!(pins_survival(&lab), (Some(true), Some(1.0)));
    lab.stop_fulcrum().expect("fulcrum stops");
    lab.detach().expect("detach");

    // `ip netns exec` gives fulcrum a mount namespace of its own, with no
    // bpffs: the one fulcrum mounts there goes with the process.
    let log = lab
        .start_fulcrum_as(Launch::PrivateMounts, &fulcrum_binary().expect("binary"))
        .expect("fulcrum starts under ip netns exec");
    assert!(
        log.iter()
            .any(|l| l.contains("WARNING the data plane dies with this process")),
        "no warning at start:\n{}",
        log.join("\n")
    );
    assert_eq!(pins_survival(&lab), (Some(false), Some(0.0)));
    let (_, text, _) = lab.cli(&["status"]).expect("status");
    assert!(
        text.contains("WARNING the data plane dies with the daemon"),
        "status text:\n{text}"
    );

    // And it does: after kill -9 the interface has no XDP program.
    lab.kill_fulcrum().expect("kill -9");
    wait::until(
        Duration::from_secs(10),
        || Ok(if lab.lb_has_xdp()? { Err(()) } else { Ok(()) }),
        |()| Ok("the data plane outlived a daemon judged to take it along".into()),
    )
    .expect("the data plane goes with the daemon");
}
