//! A randomized fault campaign against one `fulcrum run` in the namespace
//! lab. A seeded sequence of steps runs while long-lived connections stay
//! open: changes through every door (API, backend verbs, file edits,
//! SIGHUP), some meant to be refused; backend services and their health
//! checks stopped and restored; `kill -9` and restarts of the daemon; bad
//! API input. After every step the invariants are checked: no held
//! connection to a backend that stayed configured and healthy breaks or
//! moves; the file, the config in force, the record and the kernel's
//! tables agree; no table concentrates beyond the guards in force unless
//! its VIP is in panic; `/metrics` agrees with `status`. A failure names
//! the seed and the step, to replay it: `FULCRUM_CAMPAIGN_SEED=S`, and
//! `FULCRUM_CAMPAIGN_SECONDS=N` runs it for as long as asked (`cargo xtask
//! campaign --seconds N [--seed S]`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_tests::{
    api,
    lab::{BackendSpec, Lab, TCP_PORT, VIP4, VIP6},
    traffic::{self, Session},
    wait,
};
use lb_userspace::{monitor::report::Report, splitmix::SplitMix64};
use serde_json::Value;

/// Backends of every VIP.
const BACKENDS: usize = 4;
/// Checks quick enough for a step to see their outcome within seconds.
const SETTINGS: &str = "\n[health_check]\ninterval_ms = 300\ntimeout_ms = 200\nrise = 2\nfall = 2\n\
                        max_changes_per_minute = 60\n";
/// How long the campaign runs unless `FULCRUM_CAMPAIGN_SECONDS` says.
const DEFAULT_SECONDS: u64 = 60;
/// Connections held open to each TCP VIP.
const HELD: usize = 6;
/// The most any awaited event may take.
const PATIENCE: Duration = Duration::from_secs(30);
/// The TCP VIPs connections are held to: their position among the
/// config's VIPs, and their address family.
const TCP_VIPS: [(usize, bool); 2] = [(0, false), (2, true)];
/// The guards in force (the lab's config sets none).
const MAX_BACKEND_SHARE: f64 = 0.5;
const MIN_BACKENDS: usize = 2;

/// The campaign's seeded choices, the same on every machine.
struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
}

/// How a change reaches the daemon.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Door {
    /// `fulcrum apply FILE`.
    Api,
    /// `fulcrum backend set-weight`.
    Verb,
    /// An edit of the config file, seen by the daemon's watch.
    File,
    /// An edit of the config file, then SIGHUP.
    Sighup,
}

/// One step of the campaign.
#[derive(Clone, Debug)]
enum Step {
    /// A backend's weight set (1 or 2, or 0 through a verb: drained).
    Reweight {
        door: Door,
        vip: usize,
        backend: usize,
        weight: u32,
    },
    /// One backend at weight 100: past the concentration guard.
    Concentrate { door: Door, vip: usize },
    /// A config that is not TOML.
    Broken { door: Door },
    /// A backend's service stops (its connections close) or comes back.
    Service { backend: usize, up: bool },
    /// A backend's health checks fail while it serves, or pass again.
    Checks { backend: usize, pass: bool },
    /// `kill -9` of the daemon, and a restart.
    Restart,
    /// A malformed API request.
    BadInput { kind: usize },
    /// New connections: the held set is filled up again.
    Reconnect,
}

/// A connection held open, and the backend that answered it.
struct Held {
    vip: SocketAddr,
    session: Session,
    backend: usize,
}

/// What the campaign expects of the daemon.
struct Model {
    /// The config text in force.
    in_force: String,
    /// The config file's text.
    file: String,
    /// Backends whose service is stopped.
    stopped: BTreeSet<usize>,
    /// Backends whose checks fail while they serve.
    blind: BTreeSet<usize>,
}

/// What the campaign counted.
#[derive(Debug, Default)]
struct Tally {
    steps: usize,
    accepted: usize,
    refused: usize,
    refused_good: BTreeMap<String, usize>,
    restarts: usize,
    checked_sessions: usize,
    /// New connections that met a failing backend a panic kept.
    failed_in_panic: usize,
}

struct Campaign {
    lab: Lab,
    rng: Rng,
    seed: u64,
    model: Model,
    held: Vec<Held>,
    steps: Vec<Step>,
    tally: Tally,
}

/// The position of `weight = N` of `backend` of `vip` in `text`: the
/// lab's config lists every VIP's backends in order, one weight line each.
fn weight_line(text: &str, vip: usize, backend: usize) -> (usize, usize) {
    let start = text
        .match_indices("\nweight = ")
        .nth(vip * BACKENDS + backend)
        .map(|(at, _)| at + 1)
        .unwrap_or_else(|| panic!("no weight of backend {backend} of VIP {vip} in:\n{text}"));
    let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
    (start, end)
}

fn weights(text: &str) -> Vec<u32> {
    (0..TCP_VIPS.len() * 2 * BACKENDS)
        .map(|i| {
            let (start, end) = weight_line(text, i / BACKENDS, i % BACKENDS);
            text[start + "weight = ".len()..end]
                .trim()
                .parse()
                .expect("a weight")
        })
        .collect()
}

fn with_weight(text: &str, vip: usize, backend: usize, weight: u32) -> String {
    let (start, end) = weight_line(text, vip, backend);
    format!("{}weight = {weight}{}", &text[..start], &text[end..])
}

/// A backend to fail or restore: one of `failing` comes back; while none
/// is, a random one fails. One at a time keeps the rest out of panic.
fn toggle(rng: &mut Rng, failing: &BTreeSet<usize>) -> (usize, bool) {
    match failing.iter().next() {
        Some(backend) => (*backend, true),
        None => (rng.below(BACKENDS), false),
    }
}

fn vip_name(vip: usize) -> &'static str {
    ["web4", "dns4", "web6", "dns6"][vip]
}

fn backend_index(name: &str) -> usize {
    name.trim_start_matches('b').parse::<usize>().expect("bN") - 1
}

impl Campaign {
    fn step(&mut self) -> Step {
        let door = |rng: &mut Rng| [Door::Api, Door::Verb, Door::File, Door::Sighup][rng.below(4)];
        let vip = |rng: &mut Rng| TCP_VIPS[rng.below(TCP_VIPS.len())].0;
        let rng = &mut self.rng;
        match rng.below(100) {
            0..30 => {
                let door = door(rng);
                let low = if door == Door::Verb { 0 } else { 1 };
                Step::Reweight {
                    door,
                    vip: vip(rng),
                    backend: rng.below(BACKENDS),
                    weight: low + rng.below(3 - low as usize) as u32,
                }
            }
            30..38 => Step::Concentrate {
                door: door(rng),
                vip: vip(rng),
            },
            38..44 => Step::Broken {
                door: [Door::Api, Door::File, Door::Sighup][rng.below(3)],
            },
            44..58 => {
                let (backend, up) = toggle(rng, &self.model.stopped);
                Step::Service { backend, up }
            }
            58..68 => {
                let (backend, pass) = toggle(rng, &self.model.blind);
                Step::Checks { backend, pass }
            }
            68..78 => Step::Restart,
            78..90 => Step::BadInput { kind: rng.below(5) },
            _ => Step::Reconnect,
        }
    }

    /// Runs `step`; an error is a broken invariant.
    fn run(&mut self, step: &Step) -> anyhow::Result<()> {
        match *step {
            Step::Reweight {
                door,
                vip,
                backend,
                weight,
            } => {
                let text = with_weight(&self.model.in_force, vip, backend, weight);
                let verb = ["set-weight", vip_name(vip), &format!("b{}", backend + 1)];
                let accepted = self.change(door, &text, &verb, &weight.to_string())?;
                if !accepted.0 {
                    *self
                        .tally
                        .refused_good
                        .entry(first_line(&accepted.1))
                        .or_default() += 1;
                }
            }
            Step::Concentrate { door, vip } => {
                let text = with_weight(&self.model.in_force, vip, 0, 100);
                let verb = ["set-weight", vip_name(vip), "b1"];
                let (accepted, why) = self.change(door, &text, &verb, "100")?;
                anyhow::ensure!(!accepted, "a concentrating change was accepted");
                anyhow::ensure!(
                    why.contains("[concentration]")
                        || why.contains("differs from the config in force")
                        || why.contains("the same refused edit"),
                    "refused for another reason: {why}"
                );
            }
            Step::Broken { door } => {
                let text = format!("{}\n[[vip]\nname = \"cut", self.model.in_force);
                let (accepted, _) = self.change(door, &text, &["set-weight"], "")?;
                anyhow::ensure!(!accepted, "a broken config was accepted");
            }
            Step::Service { backend, up } => {
                if up {
                    self.lab.start_backend(backend)?;
                    self.model.stopped.remove(&backend);
                } else {
                    self.lab.stop_backend(backend);
                    self.model.stopped.insert(backend);
                    self.held.retain(|h| h.backend != backend);
                }
                self.await_health()?;
            }
            Step::Checks { backend, pass } => {
                self.lab.blind_checks(backend, !pass)?;
                if pass {
                    self.model.blind.remove(&backend);
                } else {
                    // Out of the tables, its flows are hashed again.
                    self.model.blind.insert(backend);
                    self.held.retain(|h| h.backend != backend);
                }
                self.await_health()?;
            }
            Step::Restart => {
                self.lab.kill_fulcrum()?;
                let log = self.lab.start_fulcrum()?;
                anyhow::ensure!(
                    log.iter().any(|l| l.contains("adopted the data plane")),
                    "the restart did not adopt: {log:?}"
                );
                self.tally.restarts += 1;
                self.await_health()?;
            }
            Step::BadInput { kind } => {
                let big = vec![b'x'; 2 << 20];
                let (method, path, body): (&str, &str, &[u8]) = match kind {
                    0 => ("POST", "/v1/apply", b"{\"config\": 12"),
                    1 => ("POST", "/v1/backend", b"{\"action\":\"explode\"}"),
                    2 => ("POST", "/v1/apply", &big),
                    3 => ("GET", "/v1/nothing", b""),
                    _ => (
                        "POST",
                        "/v1/explain",
                        b"{\"protocol\":\"tcp\",\"source\":\"x\"}",
                    ),
                };
                let (status, body) = api::request(self.lab.socket(), method, path, body)?;
                anyhow::ensure!(
                    (400..500).contains(&status),
                    "{method} {path} answered {status}: {body}"
                );
            }
            Step::Reconnect => self.fill()?,
        }
        Ok(())
    }

    /// Sends a change by `door`: `text` as the whole config, or for a verb
    /// `fulcrum backend VERB.. VALUE`. Returns whether it was accepted and
    /// why not; checks the daemon did as it said.
    fn change(
        &mut self,
        door: Door,
        text: &str,
        verb: &[&str],
        value: &str,
    ) -> anyhow::Result<(bool, String)> {
        let before = self.model.in_force.clone();
        // While the file holds an edit not in force, the API refuses to
        // write over it.
        let file_differs = self.model.file != self.model.in_force;
        let (accepted, why) = match door {
            Door::Api | Door::Verb => {
                let (code, stdout, stderr) = if door == Door::Api || verb.len() < 3 {
                    let path = self.lab.config_path().with_extension("next.toml");
                    std::fs::write(&path, text)?;
                    self.lab.cli(&["apply", &path.display().to_string()])?
                } else {
                    let mut args = vec!["backend"];
                    args.extend_from_slice(verb);
                    args.push(value);
                    self.lab.cli(&args)?
                };
                let accepted = code == 0;
                let now = self.config_in_force()?;
                if accepted && now != before {
                    anyhow::ensure!(!file_differs, "the API wrote over a file edit not in force");
                    self.model.in_force = now;
                    self.model.file = self.model.in_force.clone();
                }
                (accepted, format!("{stdout}{stderr}"))
            }
            Door::File | Door::Sighup => {
                // The watch says only what differs from what was last
                // seen of the file: every text the campaign wrote before
                // was seen (a verdict, a SIGHUP, or the file in force).
                let watched = text == self.model.file;
                let seen = self.lab.fulcrum_log().len();
                std::fs::write(self.lab.config_path(), text)?;
                self.model.file = text.to_string();
                let accepted = if door == Door::Sighup {
                    let pid = self.lab.fulcrum_pid().expect("fulcrum runs");
                    // SAFETY: signalling the daemon this test started.
                    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
                    // The signal always answers; the watch may have judged
                    // the text just before it.
                    let answer = self.await_lines(seen, &["fulcrum: sighup: "], 1)?.remove(0);
                    let verdicts = self.await_lines(seen, &["fulcrum: file: "], 0)?;
                    (
                        text == before
                            || answer.contains("applied and verified")
                            || answer.contains("is the config in force")
                            || verdicts.iter().any(|l| l.contains("applied and verified")),
                        answer,
                    )
                } else if text == before {
                    if !watched {
                        // The watch sees a revert to the config in force
                        // and says the file is in force again.
                        self.await_file_in_force()?;
                    }
                    (true, "unchanged".to_string())
                } else if watched {
                    (
                        false,
                        "the same refused edit, still in the file".to_string(),
                    )
                } else {
                    let line = self.await_lines(seen, &["fulcrum: file: "], 1)?.remove(0);
                    (line.contains("applied and verified"), line)
                };
                if accepted.0 {
                    self.model.in_force = text.to_string();
                }
                accepted
            }
        };
        if accepted {
            self.tally.accepted += 1;
            let (old, new) = (weights(&before), weights(&self.model.in_force));
            let changed = old.iter().zip(&new).filter(|(a, b)| a != b).count();
            anyhow::ensure!(
                changed <= 1,
                "more than one weight changed: {old:?} -> {new:?}"
            );
        } else {
            self.tally.refused += 1;
            anyhow::ensure!(
                self.config_in_force()? == before,
                "a refused change altered the config in force"
            );
        }
        Ok((accepted, why))
    }

    /// Waits until `/metrics` says the file is in force.
    fn await_file_in_force(&self) -> anyhow::Result<()> {
        wait::until(
            PATIENCE,
            || {
                let in_force = self.lab.scrape()?.get("fulcrum_config_file_in_force", &[]);
                Ok(if in_force == Some(1.0) {
                    Ok(())
                } else {
                    Err(in_force)
                })
            },
            |in_force| {
                Ok(format!(
                    "fulcrum_config_file_in_force is {in_force:?}, not 1"
                ))
            },
        )
    }

    /// The config text in force (`GET /v1/config`).
    fn config_in_force(&self) -> anyhow::Result<String> {
        let (status, body) = api::request(self.lab.socket(), "GET", "/v1/config", b"")?;
        anyhow::ensure!(status == 200, "GET /v1/config answered {status}: {body}");
        let value: Value = serde_json::from_str(&body)?;
        Ok(value["config"].as_str().unwrap_or_default().to_string())
    }

    /// Waits for `count` new log lines (after the first `seen`) starting
    /// with one of `prefixes`; returns them.
    fn await_lines(
        &self,
        seen: usize,
        prefixes: &[&str],
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        wait::until(
            PATIENCE,
            || {
                let lines: Vec<String> = self
                    .lab
                    .fulcrum_log()
                    .into_iter()
                    .skip(seen)
                    .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
                    .collect();
                Ok(if lines.len() >= count {
                    Ok(lines)
                } else {
                    Err(lines.len())
                })
            },
            |found| {
                Ok(format!(
                    "{found} of {count} lines starting with {prefixes:?}"
                ))
            },
        )
    }

    /// Waits until the daemon's health view matches the model: the stopped
    /// and blind backends down, the rest up, and its tables changed to
    /// match (or its VIP in panic).
    fn await_health(&self) -> anyhow::Result<Report> {
        wait::until(
            PATIENCE,
            || self.health_as_modelled(),
            |seen| Ok(format!("health did not settle as expected: {seen}")),
        )
    }

    /// The status once health is as the model says and the rest agrees;
    /// else what differs.
    fn health_as_modelled(&self) -> anyhow::Result<Result<Report, String>> {
        let report = self.status()?;
        let mut wrong = Vec::new();
        for vip in &report.vips {
            let panic = vip.health.as_ref().is_some_and(|h| h.panic);
            if let Some(why) = vip.health.as_ref().and_then(|h| h.settling.as_ref()) {
                wrong.push(format!("{}: {why}", vip.name));
            }
            for b in &vip.backends {
                let index = backend_index(&b.name);
                let failing =
                    self.model.stopped.contains(&index) || self.model.blind.contains(&index);
                // In panic only drained backends are out.
                let out = failing && (!panic || b.weight == 0);
                if b.health != if failing { "down" } else { "up" } || b.taken_down != out {
                    wrong.push(format!(
                        "{} {}: health {}, taken down {}, panic {panic}",
                        vip.name, b.name, b.health, b.taken_down
                    ));
                }
            }
        }
        if !wrong.is_empty() {
            return Ok(Err(format!("{wrong:?}")));
        }
        Ok(self
            .consistent()
            .map(|()| report)
            .map_err(|e| format!("{e:#}")))
    }

    fn status(&self) -> anyhow::Result<Report> {
        let (code, stdout, stderr) = self.lab.cli(&["status", "--format", "json"])?;
        anyhow::ensure!(code == 0, "fulcrum status: {stderr}");
        Ok(serde_json::from_str(&stdout)?)
    }

    /// Opens connections until every TCP VIP has `HELD`. A VIP in panic
    /// keeps its dead backends (fail open): a new connection may meet one,
    /// and then fails; anywhere else that is an error.
    fn fill(&mut self) -> anyhow::Result<()> {
        let report = self.status()?;
        for (index, ipv6) in TCP_VIPS {
            let vip = web(ipv6);
            let panic = report.vips[index].health.as_ref().is_some_and(|h| h.panic);
            let mut tries = 0;
            while self.held.iter().filter(|h| h.vip == vip).count() < HELD && tries < 3 * HELD {
                tries += 1;
                let session = match Session::open(self.lab.client(), vip) {
                    Ok(session) => session,
                    Err(_) if panic => {
                        self.tally.failed_in_panic += 1;
                        continue;
                    }
                    Err(e) => return Err(e.context(format!("a new connection to {vip}"))),
                };
                let backend = backend_index(&session.backend);
                anyhow::ensure!(
                    !self.model.stopped.contains(&backend),
                    "a new connection reached stopped backend {}",
                    session.backend
                );
                if self.model.blind.contains(&backend) {
                    // Kept in the table by a panic, its checks failing:
                    // not a healthy backend, so not held.
                    self.tally.failed_in_panic += 1;
                    continue;
                }
                self.held.push(Held {
                    vip,
                    session,
                    backend,
                });
            }
        }
        Ok(())
    }

    /// Brings every stopped service back and lets every failing check
    /// pass, then waits until health is as modelled with no VIP in panic.
    fn recover(&mut self) -> anyhow::Result<()> {
        for backend in std::mem::take(&mut self.model.stopped) {
            self.lab.start_backend(backend)?;
        }
        for backend in std::mem::take(&mut self.model.blind) {
            self.lab.blind_checks(backend, false)?;
        }
        let report = self.await_health()?;
        let panicking: Vec<_> = report
            .vips
            .iter()
            .filter(|v| v.health.as_ref().is_some_and(|h| h.panic))
            .map(|v| v.name.clone())
            .collect();
        anyhow::ensure!(
            panicking.is_empty(),
            "in panic with every backend healthy: {panicking:?}"
        );
        Ok(())
    }

    /// Every invariant, once the daemon has settled.
    fn check(&mut self) -> anyhow::Result<()> {
        for (index, held) in self.held.iter_mut().enumerate() {
            let answer = held.session.ask().map_err(|e| {
                anyhow::anyhow!("held connection {index} to {} broke: {e:#}", held.vip)
            })?;
            anyhow::ensure!(
                backend_index(&answer) == held.backend,
                "held connection {index} to {} moved from b{} to {answer}",
                held.vip,
                held.backend + 1
            );
        }
        self.tally.checked_sessions += self.held.len();
        let on_disk = std::fs::read_to_string(self.lab.config_path())?;
        anyhow::ensure!(
            on_disk == self.model.file,
            "the file is not what was written"
        );
        anyhow::ensure!(
            self.config_in_force()? == self.model.in_force,
            "the config in force is not the last one accepted"
        );
        // The state may change for health between reads: retry until one
        // consistent view.
        wait::until(PATIENCE, || Ok(self.consistent()), Err)
    }

    /// The record, the kernel, the guards and `/metrics` against `status`.
    fn consistent(&self) -> anyhow::Result<()> {
        let (code, body) = api::request(self.lab.socket(), "GET", "/v1/status", b"")?;
        anyhow::ensure!(code == 200, "GET /v1/status answered {code}");
        let status: Value = serde_json::from_str(&body)?;
        let report: Report = serde_json::from_value(status.clone())?;
        let bank = status["bank"].as_u64().expect("bank") as u32;
        let record = self.lab.records().read(bank)?;
        anyhow::ensure!(
            record.generation == report.generation,
            "record generation {} vs status {}",
            record.generation,
            report.generation
        );
        anyhow::ensure!(
            record.config == self.model.in_force,
            "the record holds another config than the one in force"
        );
        let (_, state) = record.state()?;
        let (code, body) = api::request(self.lab.socket(), "GET", "/v1/tables", b"")?;
        anyhow::ensure!(code == 200, "GET /v1/tables answered {code}");
        let tables: Value = serde_json::from_str(&body)?;
        let samples = self.lab.scrape()?;
        for (vip, dump) in state
            .vips
            .iter()
            .zip(tables["vips"].as_array().expect("vips"))
        {
            let slots: Vec<u32> = serde_json::from_value(dump["slots"].clone())?;
            anyhow::ensure!(
                slots == vip.table.table,
                "VIP {}: the kernel's table is not the recorded one",
                vip.endpoint()
            );
            let name = dump["name"].as_str().unwrap_or_default();
            let shown = report
                .vips
                .iter()
                .find(|v| v.endpoint == vip.endpoint())
                .expect("every VIP in status");
            let panic = shown.health.as_ref().is_some_and(|h| h.panic);
            let mut counts = vec![0usize; vip.backends.len()];
            for slot in &slots {
                counts[*slot as usize] += 1;
            }
            let serving = counts.iter().filter(|c| **c > 0).count();
            let most = *counts.iter().max().unwrap_or(&0) as f64 / slots.len() as f64;
            // Backends health checks took down, or the outlier detector
            // ejected, leave their share to the others.
            let health_out = record
                .down
                .iter()
                .chain(&record.ejected)
                .any(|(endpoint, _)| *endpoint == vip.endpoint());
            anyhow::ensure!(
                panic || serving >= MIN_BACKENDS,
                "VIP {name}: {serving} backends serve, out of panic"
            );
            anyhow::ensure!(
                // Quotas round to whole slots.
                health_out || most <= MAX_BACKEND_SHARE + 1.0 / slots.len() as f64,
                "VIP {name}: one backend holds {most:.3} of the table"
            );
            let digest = samples.get("fulcrum_vip_table_digest", &[("vip", name)]);
            let expected = u64::from_str_radix(&shown.table_digest, 16)? as f64;
            anyhow::ensure!(
                digest == Some(expected),
                "VIP {name}: /metrics digest {digest:?}, status {}",
                shown.table_digest
            );
            let exported = samples.get("fulcrum_vip_panic", &[("vip", name)]);
            anyhow::ensure!(
                exported == Some(f64::from(u8::from(panic))),
                "VIP {name}: /metrics panic {exported:?}, status {panic}"
            );
        }
        let file_in_force = samples.get("fulcrum_config_file_in_force", &[]);
        let expected = f64::from(u8::from(self.model.file == self.model.in_force));
        anyhow::ensure!(
            file_in_force == Some(expected),
            "/metrics says the file in force is {file_in_force:?}"
        );
        let generation = samples.get("fulcrum_config_generation", &[]);
        anyhow::ensure!(
            generation == Some(report.generation as f64),
            "/metrics generation {generation:?}, status {}",
            report.generation
        );
        Ok(())
    }
}

fn web(ipv6: bool) -> SocketAddr {
    let address = if ipv6 {
        IpAddr::V6(VIP6)
    } else {
        IpAddr::V4(VIP4)
    };
    SocketAddr::new(address, TCP_PORT)
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(160)
        .collect()
}

#[test]
fn a_randomized_fault_campaign_keeps_every_invariant() {
    let seed = std::env::var("FULCRUM_CAMPAIGN_SEED")
        .ok()
        .map(|s| s.parse().expect("FULCRUM_CAMPAIGN_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_nanos() as u64
        });
    let seconds: u64 = std::env::var("FULCRUM_CAMPAIGN_SECONDS")
        .ok()
        .map(|s| s.parse().expect("FULCRUM_CAMPAIGN_SECONDS is a number"))
        .unwrap_or(DEFAULT_SECONDS);
    eprintln!("campaign: seed {seed}, {seconds} s (replay: FULCRUM_CAMPAIGN_SEED={seed})");
    let lab = Lab::start_with(&BackendSpec::equal(BACKENDS), SETTINGS).expect("the lab starts");
    let text = std::fs::read_to_string(lab.config_path()).expect("the config");
    let mut campaign = Campaign {
        lab,
        rng: Rng(SplitMix64(seed)),
        seed,
        model: Model {
            in_force: text.clone(),
            file: text,
            stopped: BTreeSet::new(),
            blind: BTreeSet::new(),
        },
        held: Vec::new(),
        steps: Vec::new(),
        tally: Tally::default(),
    };
    let fail = |campaign: &Campaign, what: &str, e: anyhow::Error| -> ! {
        let steps: Vec<String> = campaign
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  {i}: {s:?}"))
            .collect();
        panic!(
            "campaign seed {} failed at step {} ({what}): {e:#}\nsteps:\n{}\nreplay: \
             FULCRUM_CAMPAIGN_SEED={} cargo test -p lb-tests --test campaign\nlog:\n{}",
            campaign.seed,
            campaign.steps.len().saturating_sub(1),
            steps.join("\n"),
            campaign.seed,
            campaign.lab.fulcrum_log().join("\n")
        )
    };
    if let Err(e) = campaign.await_health().and_then(|_| campaign.fill()) {
        fail(&campaign, "start", e);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let step = campaign.step();
        campaign.steps.push(step.clone());
        if let Err(e) = campaign.run(&step) {
            fail(&campaign, "running it", e);
        }
        if let Err(e) = campaign.check() {
            fail(&campaign, "checking the invariants", e);
        }
        campaign.tally.steps += 1;
    }
    // Every fault undone, the daemon must recover whole: a panic that kept
    // stopped backends in the tables ends, and every new connection lands.
    if let Err(e) = campaign.recover() {
        fail(&campaign, "recovering", e);
    }
    let tcp = traffic::tcp_connections(campaign.lab.client(), web(false), 50, 4)
        .expect("new connections");
    assert_eq!(tcp.failures, 0, "{tcp:?}");
    eprintln!("campaign: seed {seed}: {:?}", campaign.tally);
}
