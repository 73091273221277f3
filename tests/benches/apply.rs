//! `cargo xtask bench`, the controller live: apply latency, from the
//! `fulcrum apply` invocation to the new tables swapped in and verified,
//! against a real `fulcrum run` attached in the bench's own namespace. Two
//! sizes: 1 VIP x 10 backends (target 50 ms) and 100 VIPs x 100 backends
//! (target 2 s). Each apply changes one backend's weight in every VIP.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{fixture::require_root, lab::fulcrum_binary, netns::Netns};

const APPLIES: usize = 10;

/// A config of `vips` VIPs with `backends` backends each; with `bump`, the
/// first backend of every VIP has weight 2 instead of 1.
fn config(vips: usize, backends: usize, bump: bool) -> String {
    let mut text = String::from("interface = \"eth0\"\n");
    for v in 0..vips {
        text += &format!(
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"198.19.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nbackend = [\n",
            v / 250,
            v % 250 + 1
        );
        for b in 0..backends {
            let weight = if bump && b == 0 { 2 } else { 1 };
            text += &format!(
                "  {{ address = \"198.18.{}.{}\", mac = \"02:00:00:00:{:02x}:{:02x}\", weight = {weight} }},\n",
                b / 250,
                b % 250 + 1,
                b / 256,
                b % 256
            );
        }
        text += "]\n";
    }
    text
}

/// `fulcrum run` for the bench, stopped and detached on drop.
struct Daemon {
    child: Child,
    places: Vec<String>,
    socket: PathBuf,
}

impl Daemon {
    fn start(netns: &Netns, dir: &Path, config: &Path) -> Self {
        let places = vec![
            "--pin-root".to_string(),
            format!("/sys/fs/bpf/fulcrum-bench-{}", std::process::id()),
            "--state-root".to_string(),
            dir.join("state").display().to_string(),
        ];
        let socket = dir.join("run").join("api.sock");
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns.name()))
            .arg("--")
            .arg(fulcrum_binary().expect("the fulcrum binary"))
            .arg("run")
            .args(&places)
            .arg("--socket")
            .arg(&socket)
            .arg("--journal")
            .arg(dir.join("journal.jsonl"))
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fulcrum run starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        for line in stderr.by_ref() {
            let line = line.expect("fulcrum's stderr");
            if line.contains("serving on") {
                break;
            }
            assert!(!line.contains("error"), "fulcrum run: {line}");
        }
        // Keep reading, so that the daemon's log never meets a closed pipe.
        std::thread::spawn(move || stderr.for_each(drop));
        Self {
            child,
            places,
            socket,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling the child this bench started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = Command::new(fulcrum_binary().expect("fulcrum"))
            .args(["detach", "--interface", "eth0"])
            .args(&self.places)
            .output();
        let _ = std::fs::remove_dir(&self.places[1]);
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn bench(netns: &Netns, dir: &Path, vips: usize, backends: usize, target: Duration) {
    let files = [dir.join("a.toml"), dir.join("b.toml")];
    std::fs::write(&files[0], config(vips, backends, false)).expect("config a");
    std::fs::write(&files[1], config(vips, backends, true)).expect("config b");
    let daemon = Daemon::start(netns, dir, &files[0]);
    let mut times = Vec::new();
    for round in 0..APPLIES {
        let file = &files[(round + 1) % 2];
        let started = Instant::now();
        let output = Command::new(fulcrum_binary().expect("fulcrum"))
            .arg("apply")
            .arg(file)
            .arg("--socket")
            .arg(&daemon.socket)
            .output()
            .expect("fulcrum apply runs");
        times.push(started.elapsed());
        assert!(
            output.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    drop(daemon);
    let median = median(times.clone());
    let worst = times.iter().max().copied().unwrap_or_default();
    println!(
        "apply, {vips} VIP(s) x {backends} backends (M = 65537): median {:.1} ms, max {:.1} ms \
         over {APPLIES} applies; target {} ms: {}",
        median.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        target.as_millis(),
        if median <= target { "met" } else { "NOT met" }
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_root();
    let netns = Netns::create(&format!("flapply-{}", std::process::id())).expect("namespace");
    netns
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "p0"])
        .expect("veth");
    netns.ip(&["link", "set", "eth0", "up"]).expect("up");
    netns.ip(&["link", "set", "p0", "up"]).expect("up");
    let dir = std::env::temp_dir().join(format!("fulcrum-apply-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    bench(&netns, &dir, 1, 10, Duration::from_millis(50));
    bench(&netns, &dir, 100, 100, Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
}
