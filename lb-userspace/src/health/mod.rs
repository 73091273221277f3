//! The active health checker: it checks every backend of every VIP on a
//! schedule of its own (TCP connect or HTTP status), keeps what it knows of
//! each (up or down, by `rise` and `fall` consecutive results; latencies;
//! the last error), and reports each change to the controller. It owns
//! its thread and tokio runtime; what a dead backend does to a table is
//! the policy's (`policy::health`) and the controller's business.

mod probe;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{runtime::Handle, task::AbortHandle};

use crate::{
    config::{CheckKind, ResolvedCheck},
    splitmix::SplitMix64,
};

/// The weight of the newest latency in `latency_avg`, in tenths (0.3).
const LATENCY_WEIGHT_TENTHS: u128 = 3;

/// Which backend of which VIP a check is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The VIP's endpoint, `address:port/protocol`.
    pub vip: String,
    /// The backend's identity: its address and port.
    pub backend: SocketAddr,
}

/// One backend to check.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Which backend.
    pub key: Key,
    /// How, and where the check goes.
    pub check: ResolvedCheck,
}

/// What the checker knows of one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// Healthy. A backend starts up and goes down only after `fall`
    /// consecutive failures.
    pub up: bool,
    /// Consecutive successes.
    pub successes: u32,
    /// Consecutive failures.
    pub failures: u32,
    /// Checks done.
    pub checks: u64,
    /// How long the last check took (to connect, to the HTTP status line,
    /// or the timeout), success or failure.
    pub last_latency: Option<Duration>,
    /// An exponentially weighted moving average (alpha 0.3) of every
    /// check's latency, successes and failures alike.
    pub latency_avg: Option<Duration>,
    /// Why the last check failed; cleared by a success.
    pub last_error: Option<String>,
    /// When `up` last changed, or when checking began.
    pub since: SystemTime,
    /// When the first check of its current run of failures began.
    pub failing_since: Option<SystemTime>,
    /// When the last check that passed began.
    pub passed_at: Option<SystemTime>,
}

/// A backend went down or came back.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Which backend.
    pub key: Key,
    /// It is now up (else down).
    pub up: bool,
    /// Why: "3 failed checks: connection refused", "2 checks passed".
    pub reason: String,
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq)]
struct Outcome {
    /// How long it took.
    latency: Duration,
    /// Why it failed; `None` when it passed.
    failure: Option<String>,
}

impl Health {
    /// A backend nobody has checked yet: up, unless `down` (a previous
    /// daemon found it failing), and then it needs `rise` passing checks.
    fn new(since: SystemTime, down: bool) -> Self {
        Self {
            up: !down,
            successes: 0,
            failures: 0,
            checks: 0,
            last_latency: None,
            latency_avg: None,
            last_error: None,
            since,
            failing_since: None,
            passed_at: None,
        }
    }

    /// Counts `outcome`, finished at `now`, against `rise` and `fall`; the
    /// transition when the backend changes state. A threshold of 0 counts
    /// as 1.
    fn record(
        &mut self,
        key: &Key,
        (rise, fall): (u32, u32),
        outcome: Outcome,
        now: SystemTime,
    ) -> Option<Transition> {
        self.checks = self.checks.saturating_add(1);
        let began = now.checked_sub(outcome.latency).unwrap_or(now);
        self.last_latency = Some(outcome.latency);
        self.latency_avg = Some(match self.latency_avg {
            None => outcome.latency,
            Some(avg) => moving_average(avg, outcome.latency),
        });
        let reason = match outcome.failure {
            None => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                self.last_error = None;
                self.failing_since = None;
                self.passed_at = Some(began);
                (!self.up && self.successes >= rise.max(1))
                    .then(|| format!("{} passed", count(self.successes, "check")))
            }
            Some(failure) => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                self.failing_since.get_or_insert(began);
                let reason = (self.up && self.failures >= fall.max(1))
                    .then(|| format!("{}: {failure}", count(self.failures, "failed check")));
                self.last_error = Some(failure);
                reason
            }
        }?;
        self.up = !self.up;
        self.since = now;
        Some(Transition {
            key: key.clone(),
            up: self.up,
            reason,
        })
    }
}

/// `avg` moved 0.3 of the way to `latest`, in whole nanoseconds.
fn moving_average(avg: Duration, latest: Duration) -> Duration {
    let nanos = (LATENCY_WEIGHT_TENTHS * latest.as_nanos()
        + (10 - LATENCY_WEIGHT_TENTHS) * avg.as_nanos())
        / 10;
    // A weighted mean lies between its two inputs, so it fits a Duration.
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or_default();
    Duration::new(secs, subsec)
}

/// "1 check", "3 checks".
fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Spreads a target's checks over time so that checks of many backends
/// do not fire in lockstep: a splitmix64 generator seeded from the key and
/// the time checking began.
struct Jitter(SplitMix64);

impl Jitter {
    fn new(key: &Key, start: SystemTime) -> Self {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let nanos = start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self(SplitMix64(hasher.finish() ^ nanos))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// The wait before a target's first check: in [0, interval).
    fn first(&mut self, interval_ms: u64) -> Duration {
        Duration::from_millis(self.next() % interval_ms.max(1))
    }

    /// The time from one check's start to the next one's: the interval,
    /// give or take 10%.
    fn between(&mut self, interval_ms: u64) -> Duration {
        let tenth = interval_ms / 10;
        let offset = self.next() % (2 * tenth + 1);
        Duration::from_millis((interval_ms - tenth).saturating_add(offset))
    }
}

/// Whether `new` may keep the state and schedule of a target checked by
/// `old`: everything the checker uses is the same. The policy's settings
/// (`panic_threshold`, `max_changes_per_minute`) may change freely: a dead
/// backend must not come back up because a VIP's damping changed.
fn same_check(old: &ResolvedCheck, new: &ResolvedCheck) -> bool {
    let (a, b) = (&old.settings, &new.settings);
    old.target == new.target
        && a.kind == b.kind
        && a.interval_ms == b.interval_ms
        && a.timeout_ms == b.timeout_ms
        && a.rise == b.rise
        && a.fall == b.fall
        && a.http_path == b.http_path
        && a.http_status == b.http_status
}

/// One checked backend, as the checker's tasks and callers share it.
struct Slot {
    check: ResolvedCheck,
    /// Tells this slot's task from a stale one of a replaced check.
    generation: u64,
    health: Health,
    /// `None` for a check of kind `none`.
    task: Option<AbortHandle>,
}

#[derive(Default)]
struct Board {
    slots: HashMap<Key, Slot>,
    generations: u64,
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    // Nothing panics while holding the lock; if something did, the board
    // is still whole (each update is a single record).
    board.lock().unwrap_or_else(PoisonError::into_inner)
}

type Notify = Arc<dyn Fn(Transition) + Send + Sync>;

/// Runs one check, unbounded in time.
type Probe = Arc<
    dyn Fn(Arc<ResolvedCheck>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// The running checker; dropping it stops every check.
pub struct Checker {
    board: Arc<Mutex<Board>>,
    runtime: Handle,
    notify: Notify,
    probe: Probe,
}

impl Checker {
    /// Starts checking `targets` on `runtime`; `notify` is called from the
    /// runtime's threads on every transition. The backends `recalled`
    /// (those a previous daemon recorded as failing) start down.
    pub fn start(
        targets: Vec<Target>,
        recalled: &HashSet<Key>,
        notify: impl Fn(Transition) + Send + Sync + 'static,
        runtime: &Handle,
    ) -> Self {
        Self::launch(
            (targets, recalled),
            Arc::new(notify),
            Arc::new(|check: Arc<ResolvedCheck>| {
                Box::pin(async move { probe::probe(&check).await })
            }),
            runtime,
        )
    }

    /// `start`, with the checks run by `probe`.
    fn launch(
        (targets, recalled): (Vec<Target>, &HashSet<Key>),
        notify: Notify,
        probe: Probe,
        runtime: &Handle,
    ) -> Self {
        let checker = Self {
            board: Arc::default(),
            runtime: runtime.clone(),
            notify,
            probe,
        };
        checker.place(targets, recalled);
        checker
    }

    /// Replaces the set of targets. A target whose key and check are
    /// unchanged keeps its state and schedule; a new or changed one starts
    /// afresh (up, no history); a removed one stops. Of two targets with
    /// one key, the last counts.
    pub fn retarget(&self, targets: Vec<Target>) {
        self.place(targets, &HashSet::new());
    }

    /// `retarget`, with the new targets in `recalled` starting down.
    fn place(&self, targets: Vec<Target>, recalled: &HashSet<Key>) {
        let wanted: HashMap<Key, ResolvedCheck> =
            targets.into_iter().map(|t| (t.key, t.check)).collect();
        let now = SystemTime::now();
        let mut board = lock(&self.board);
        board.slots.retain(|key, slot| {
            let keep = wanted
                .get(key)
                .is_some_and(|check| same_check(&slot.check, check));
            if !keep && let Some(task) = &slot.task {
                task.abort();
            }
            keep
        });
        for (key, check) in wanted {
            if board.slots.contains_key(&key) {
                continue;
            }
            board.generations += 1;
            let generation = board.generations;
            let task = (check.settings.kind != CheckKind::None).then(|| {
                let task = run(
                    key.clone(),
                    Arc::new(check.clone()),
                    generation,
                    self.board.clone(),
                    self.notify.clone(),
                    self.probe.clone(),
                );
                self.runtime.spawn(task).abort_handle()
            });
            let health = Health::new(now, recalled.contains(&key));
            board.slots.insert(
                key,
                Slot {
                    check,
                    generation,
                    health,
                    task,
                },
            );
        }
    }

    /// Every target's health now.
    pub fn states(&self) -> HashMap<Key, Health> {
        lock(&self.board)
            .slots
            .iter()
            .map(|(key, slot)| (key.clone(), slot.health.clone()))
            .collect()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        // A check in flight is dropped where it waits: its socket closes.
        for slot in lock(&self.board).slots.values() {
            if let Some(task) = &slot.task {
                task.abort();
            }
        }
    }
}

/// Checks `key` by `check` until aborted or replaced: the first check
/// after a random part of the interval, each next one an interval (±10%)
/// after the last one started, or as soon as it ended if it took longer.
async fn run(
    key: Key,
    check: Arc<ResolvedCheck>,
    generation: u64,
    board: Arc<Mutex<Board>>,
    notify: Notify,
    probe: Probe,
) {
    let settings = &check.settings;
    let timeout = Duration::from_millis(settings.timeout_ms);
    let thresholds = (settings.rise, settings.fall);
    let mut jitter = Jitter::new(&key, SystemTime::now());
    tokio::time::sleep(jitter.first(settings.interval_ms)).await;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(timeout, probe(check.clone())).await {
            Ok(result) => Outcome {
                latency: started.elapsed(),
                failure: result.err(),
            },
            Err(_) => Outcome {
                latency: timeout,
                failure: Some(format!("timed out after {} ms", settings.timeout_ms)),
            },
        };
        let transition = {
            let mut board = lock(&board);
            match board.slots.get_mut(&key) {
                Some(slot) if slot.generation == generation => {
                    slot.health
                        .record(&key, thresholds, outcome, SystemTime::now())
                }
                // Retargeted away while checking.
                _ => return,
            }
        };
        if let Some(transition) = transition {
            notify(transition);
        }
        let wait = jitter.between(settings.interval_ms);
        tokio::time::sleep(wait.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicBool, Ordering},
            mpsc,
        },
        time::Instant,
    };

    use super::*;
    use crate::config::HealthCheck;

    const T0: SystemTime = UNIX_EPOCH;

    fn key(backend: &str) -> Key {
        Key {
            vip: "10.0.0.1:80/tcp".into(),
            backend: backend.parse().unwrap(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        T0 + Duration::from_secs(secs)
    }

    fn pass(ms: u64) -> Outcome {
        Outcome {
            latency: Duration::from_millis(ms),
            failure: None,
        }
    }

    fn fail(ms: u64, reason: &str) -> Outcome {
        Outcome {
            latency: Duration::from_millis(ms),
            failure: Some(reason.into()),
        }
    }

    /// Feeds `outcomes` (at seconds 1, 2, ...) with rise 2 and fall 3;
    /// the transitions, each with the second it happened.
    fn feed(health: &mut Health, outcomes: Vec<Outcome>) -> Vec<(u64, Transition)> {
        let k = key("10.0.0.2:80");
        outcomes
            .into_iter()
            .zip(1..)
            .filter_map(|(o, s)| health.record(&k, (2, 3), o, at(s)).map(|t| (s, t)))
            .collect()
    }

    #[test]
    fn a_backend_starts_up_with_no_history() {
        let health = Health::new(T0, false);
        assert!(health.up);
        assert_eq!(
            (health.successes, health.failures, health.checks),
            (0, 0, 0)
        );
        assert_eq!((health.last_latency, health.latency_avg), (None, None));
        assert_eq!((health.last_error.clone(), health.since), (None, T0));
    }

    #[test]
    fn a_recalled_backend_starts_down_and_needs_rise_passing_checks() {
        let mut health = Health::new(T0, true);
        assert!(!health.up);
        assert!(
            feed(&mut health, vec![fail(1, "x"); 4]).is_empty(),
            "already down"
        );
        let transitions = feed(&mut health, vec![pass(1), pass(1)]);
        assert_eq!(transitions.len(), 1);
        assert!(transitions[0].1.up, "{transitions:?}");
        assert_eq!(transitions[0].0, 2, "after rise (2) passing checks");
    }

    #[test]
    fn fall_consecutive_failures_take_a_backend_down_once() {
        let mut health = Health::new(T0, false);
        let refused = || fail(1, "connection refused");
        let transitions = feed(&mut health, (0..6).map(|_| refused()).collect());
        assert_eq!(
            transitions,
            vec![(
                3,
                Transition {
                    key: key("10.0.0.2:80"),
                    up: false,
                    reason: "3 failed checks: connection refused".into(),
                }
            )]
        );
        assert!(!health.up);
        assert_eq!(
            (health.failures, health.successes, health.checks),
            (6, 0, 6)
        );
        assert_eq!(health.last_error.as_deref(), Some("connection refused"));
        assert_eq!(health.since, at(3));
    }

    #[test]
    fn rise_consecutive_successes_bring_it_back_once() {
        let mut health = Health::new(T0, false);
        let mut outcomes: Vec<Outcome> = (0..3).map(|_| fail(1, "HTTP 503")).collect();
        outcomes.extend((0..4).map(|_| pass(1)));
        let transitions = feed(&mut health, outcomes);
        let summary: Vec<(u64, bool, &str)> = transitions
            .iter()
            .map(|(s, t)| (*s, t.up, t.reason.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (3, false, "3 failed checks: HTTP 503"),
                (5, true, "2 checks passed"),
            ]
        );
        assert!(health.up);
        assert_eq!((health.successes, health.failures), (4, 0));
        assert_eq!(health.last_error, None);
        assert_eq!(health.since, at(5));
        // When checks began: the last pass, and no run of failures.
        let began = |s: u64| Some(at(s) - Duration::from_millis(1));
        assert_eq!((health.passed_at, health.failing_since), (began(7), None));
        // A run of failures dates from its first check's start.
        feed(&mut health, (0..2).map(|_| fail(200, "x")).collect());
        let started = at(1) - Duration::from_millis(200);
        assert_eq!(
            (health.passed_at, health.failing_since),
            (began(7), Some(started))
        );
    }

    #[test]
    fn results_within_the_thresholds_do_not_flap() {
        // Up: two failures, a success, two failures... never three in a row.
        let mut health = Health::new(T0, false);
        let outcomes = (0..12)
            .map(|i| if i % 3 == 2 { pass(1) } else { fail(1, "x") })
            .collect();
        assert_eq!(feed(&mut health, outcomes), vec![]);
        assert!(health.up);
        assert_eq!(health.since, T0);

        // Down: one success between failures never brings it back.
        let mut health = Health::new(T0, false);
        let mut outcomes: Vec<Outcome> = (0..3).map(|_| fail(1, "x")).collect();
        outcomes.extend((0..10).map(|i| if i % 2 == 0 { pass(1) } else { fail(1, "y") }));
        assert_eq!(feed(&mut health, outcomes).len(), 1);
        assert!(!health.up);
        assert_eq!(health.last_error.as_deref(), Some("y"));
    }

    #[test]
    fn thresholds_of_one_act_on_the_first_result() {
        let k = key("10.0.0.2:80");
        let mut health = Health::new(T0, false);
        let down = health.record(&k, (1, 1), fail(5, "timed out after 5 ms"), at(1));
        assert_eq!(
            down.map(|t| t.reason),
            Some("1 failed check: timed out after 5 ms".into())
        );
        let up = health.record(&k, (0, 0), pass(1), at(2));
        assert_eq!(up.map(|t| t.reason), Some("1 check passed".into()));
    }

    #[test]
    fn latency_is_the_last_one_and_a_moving_average_of_all() {
        let mut health = Health::new(T0, false);
        feed(&mut health, vec![pass(100)]);
        assert_eq!(health.last_latency, Some(Duration::from_millis(100)));
        assert_eq!(health.latency_avg, Some(Duration::from_millis(100)));
        feed(&mut health, vec![fail(200, "x")]);
        assert_eq!(health.last_latency, Some(Duration::from_millis(200)));
        assert_eq!(health.latency_avg, Some(Duration::from_millis(130)));
        feed(&mut health, vec![pass(30)]);
        assert_eq!(health.latency_avg, Some(Duration::from_millis(100)));
        assert_eq!(
            moving_average(Duration::MAX, Duration::MAX),
            Duration::new(u64::MAX, 999_999_999)
        );
    }

    #[test]
    fn checks_are_spread_over_the_interval() {
        let mut jitter = Jitter::new(&key("10.0.0.2:80"), T0);
        let firsts: Vec<Duration> = (0..1000).map(|_| jitter.first(2000)).collect();
        assert!(firsts.iter().all(|d| *d < Duration::from_millis(2000)));
        assert!(firsts.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(firsts.iter().any(|d| *d >= Duration::from_millis(1500)));
        let betweens: Vec<Duration> = (0..1000).map(|_| jitter.between(2000)).collect();
        let range = Duration::from_millis(1800)..=Duration::from_millis(2200);
        assert!(betweens.iter().all(|d| range.contains(d)));
        assert!(betweens.iter().any(|d| *d < Duration::from_millis(1900)));
        assert!(betweens.iter().any(|d| *d > Duration::from_millis(2100)));
        // Degenerate intervals (which validation refuses) do not panic.
        assert_eq!(jitter.first(0), Duration::ZERO);
        assert_eq!(jitter.between(0), Duration::ZERO);
        assert!(jitter.between(u64::MAX) >= Duration::from_millis(u64::MAX / 10 * 9));
    }

    #[test]
    fn backends_checked_at_the_same_time_get_different_schedules() {
        let mut a = Jitter::new(&key("10.0.0.2:80"), T0);
        let mut b = Jitter::new(&key("10.0.0.3:80"), T0);
        let firsts = |j: &mut Jitter| -> Vec<Duration> { (0..4).map(|_| j.first(2000)).collect() };
        assert_ne!(firsts(&mut a), firsts(&mut b));
    }

    fn check(kind: CheckKind, target: &str, interval_ms: u64, timeout_ms: u64) -> ResolvedCheck {
        ResolvedCheck {
            settings: HealthCheck {
                kind,
                interval_ms,
                timeout_ms,
                rise: 2,
                fall: 2,
                ..HealthCheck::default()
            },
            target: target.parse().unwrap(),
        }
    }

    #[test]
    fn only_what_the_checker_uses_makes_a_check_new() {
        let old = check(CheckKind::Http, "10.0.0.2:80", 2000, 1000);
        let mut policy = old.clone();
        policy.settings.panic_threshold = 0.9;
        policy.settings.max_changes_per_minute = 1;
        assert!(same_check(&old, &policy));
        let changes: [fn(&mut ResolvedCheck); 8] = [
            |c| c.target.set_port(81),
            |c| c.settings.kind = CheckKind::Tcp,
            |c| c.settings.interval_ms = 3000,
            |c| c.settings.timeout_ms = 500,
            |c| c.settings.rise = 5,
            |c| c.settings.fall = 5,
            |c| c.settings.http_path = "/healthz".into(),
            |c| c.settings.http_status = vec![(200, 204)],
        ];
        for change in changes {
            let mut new = old.clone();
            change(&mut new);
            assert!(!same_check(&old, &new), "{new:?}");
        }
    }

    // The checker itself, with fake probes: tests open no sockets.

    /// A probe that fails for the targets in `failing` (by port), passes
    /// for the others.
    fn fake(failing: Arc<Mutex<Vec<u16>>>) -> Probe {
        Arc::new(move |check: Arc<ResolvedCheck>| {
            let fails = failing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&check.target.port());
            Box::pin(async move {
                if fails {
                    Err("refused (fake)".to_string())
                } else {
                    Ok(())
                }
            })
        })
    }

    /// A notifier that sends each transition, with the thread it came
    /// from, down a channel.
    /// The runtime the tests' checkers run on, as the daemon's would.
    static RUNTIME: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("checker-runtime")
            .enable_all()
            .build()
            .expect("a tokio runtime")
    });

    fn launch(targets: Vec<Target>, notify: Notify, probe: Probe) -> Checker {
        Checker::launch((targets, &HashSet::new()), notify, probe, RUNTIME.handle())
    }

    fn channel() -> (Notify, mpsc::Receiver<(Transition, Option<String>)>) {
        let (send, receive) = mpsc::channel();
        let notify: Notify = Arc::new(move |t| {
            let _ = send.send((t, std::thread::current().name().map(String::from)));
        });
        (notify, receive)
    }

    fn target(backend: &str, check: ResolvedCheck) -> Target {
        Target {
            key: key(backend),
            check,
        }
    }

    /// Waits (up to 10 s) until `cond` holds of the checker's states.
    fn eventually(checker: &Checker, cond: impl Fn(&HashMap<Key, Health>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(&checker.states()) {
            assert!(Instant::now() < deadline, "{:#?}", checker.states());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_checker_is_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Checker>();
    }

    #[test]
    fn unchecked_backends_are_up_and_never_checked() {
        let (notify, transitions) = channel();
        let failing = Arc::new(Mutex::new(vec![80]));
        let none = check(CheckKind::None, "10.0.0.2:80", 10, 5);
        let checker = launch(vec![target("10.0.0.2:80", none)], notify, fake(failing));
        std::thread::sleep(Duration::from_millis(100));
        let states = checker.states();
        assert_eq!(states.len(), 1);
        let health = &states[&key("10.0.0.2:80")];
        assert!(health.up);
        assert_eq!(health.checks, 0);
        checker.retarget(vec![]);
        assert!(checker.states().is_empty());
        drop(checker);
        assert!(transitions.try_recv().is_err());
    }

    #[test]
    fn a_failing_backend_goes_down_once_and_comes_back_once() {
        let (notify, transitions) = channel();
        let failing = Arc::new(Mutex::new(vec![80]));
        let tcp = check(CheckKind::Tcp, "10.0.0.2:80", 10, 5);
        let checker = launch(
            vec![target("10.0.0.2:80", tcp)],
            notify,
            fake(failing.clone()),
        );
        let wait = Duration::from_secs(10);
        let (down, thread) = transitions.recv_timeout(wait).unwrap();
        assert_eq!(thread.as_deref(), Some("checker-runtime"));
        assert!(!down.up);
        assert_eq!(down.reason, "2 failed checks: refused (fake)");
        let health = checker.states()[&key("10.0.0.2:80")].clone();
        assert_eq!(health.last_error.as_deref(), Some("refused (fake)"));

        failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let (up, _) = transitions.recv_timeout(wait).unwrap();
        assert!(up.up);
        assert_eq!(up.reason, "2 checks passed");
        // Further passing checks change nothing.
        let checks = checker.states()[&key("10.0.0.2:80")].checks;
        eventually(&checker, |s| s[&key("10.0.0.2:80")].checks >= checks + 5);
        assert!(transitions.try_recv().is_err());
        assert!(checker.states()[&key("10.0.0.2:80")].up);
    }

    #[test]
    fn retargeting_keeps_unchanged_checks_and_restarts_changed_ones() {
        let (notify, transitions) = channel();
        let failing = Arc::new(Mutex::new(vec![80]));
        let (a, b, c) = ("10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80");
        let tcp = check(CheckKind::Tcp, "10.0.0.2:80", 10, 5);
        let checker = launch(
            vec![
                target(a, tcp.clone()),
                target(b, check(CheckKind::Tcp, b, 10, 5)),
                target(c, check(CheckKind::Tcp, c, 10, 5)),
            ],
            notify,
            fake(failing),
        );
        eventually(&checker, |s| s.values().all(|h| !h.up));
        let before = checker.states()[&key(a)].clone();

        // a unchanged (a new policy setting only), b aimed at a port that
        // passes, c gone, d new and unchecked.
        let mut a_policy = tcp;
        a_policy.settings.panic_threshold = 0.1;
        checker.retarget(vec![
            target(a, a_policy),
            target(b, check(CheckKind::Tcp, "10.0.0.3:8080", 10, 5)),
            target("10.0.0.5:80", check(CheckKind::None, "10.0.0.5:80", 10, 5)),
        ]);
        let states = checker.states();
        let mut keys: Vec<&Key> = states.keys().collect();
        keys.sort();
        assert_eq!(keys, [&key(a), &key(b), &key("10.0.0.5:80")]);
        let kept = &states[&key(a)];
        assert!(!kept.up);
        assert_eq!(kept.since, before.since);
        assert!(kept.checks >= before.checks);
        let fresh = &states[&key(b)];
        assert!(fresh.up);
        assert_eq!(fresh.failures, 0);
        assert!(states[&key("10.0.0.5:80")].up);

        eventually(&checker, |s| {
            s[&key(b)].successes >= 3 && s[&key(a)].checks > before.checks + 3
        });
        let states = checker.states();
        assert!(states[&key(b)].up);
        assert!(!states[&key(a)].up);
        drop(checker);
        // Three went down at first; nothing since.
        let downs: Vec<Transition> = transitions.try_iter().map(|(t, _)| t).collect();
        assert_eq!(downs.len(), 3, "{downs:#?}");
        assert!(downs.iter().all(|t| !t.up));
    }

    /// Runs one check task of `check` for `backend` on the calling
    /// runtime (its clock paused in these tests); returns its board and
    /// each transition with the time it came.
    fn run_alone(
        backend: &str,
        check: ResolvedCheck,
        probe: Probe,
    ) -> (
        Arc<Mutex<Board>>,
        tokio::sync::mpsc::UnboundedReceiver<(Transition, tokio::time::Instant)>,
    ) {
        let board = Arc::new(Mutex::new(Board::default()));
        lock(&board).slots.insert(
            key(backend),
            Slot {
                check: check.clone(),
                generation: 1,
                health: Health::new(SystemTime::now(), false),
                task: None,
            },
        );
        let (send, transitions) = tokio::sync::mpsc::unbounded_channel();
        let notify: Notify = Arc::new(move |t| {
            let _ = send.send((t, tokio::time::Instant::now()));
        });
        let task = run(
            key(backend),
            Arc::new(check),
            1,
            board.clone(),
            notify,
            probe,
        );
        tokio::spawn(task);
        (board, transitions)
    }

    #[tokio::test(start_paused = true)]
    async fn checks_keep_their_interval_and_a_backend_falls_at_its_fall_th_failure() {
        let mut tcp = check(CheckKind::Tcp, "10.0.0.2:80", 1000, 200);
        tcp.settings.fall = 3;
        let started = tokio::time::Instant::now();
        let failing = Arc::new(Mutex::new(vec![80]));
        let (board, mut transitions) = run_alone("10.0.0.2:80", tcp, fake(failing));
        let (down, at) = transitions.recv().await.expect("a transition");
        assert!(!down.up);
        assert_eq!(down.reason, "3 failed checks: refused (fake)");
        // The first check within the first interval, each next one an
        // interval (±10%) after the last.
        let elapsed = at - started;
        assert!(
            (Duration::from_millis(1800)..=Duration::from_millis(3200)).contains(&elapsed),
            "{elapsed:?}"
        );
        assert_eq!(lock(&board).slots[&key("10.0.0.2:80")].health.checks, 3);
        // Failing on, it goes down once only.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(transitions.try_recv().is_err());
        let checks = lock(&board).slots[&key("10.0.0.2:80")].health.checks;
        assert!((55..=70).contains(&checks), "{checks} checks in a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_fails_at_its_timeout() {
        let hang: Probe = Arc::new(|_| Box::pin(std::future::pending()));
        let mut tcp = check(CheckKind::Tcp, "10.0.0.2:80", 10_000, 20_000);
        tcp.settings.fall = 1;
        let (board, mut transitions) = run_alone("10.0.0.2:80", tcp, hang);
        let (down, _) = transitions.recv().await.expect("a transition");
        assert_eq!(down.reason, "1 failed check: timed out after 20000 ms");
        let health = lock(&board).slots[&key("10.0.0.2:80")].health.clone();
        assert_eq!(health.last_latency, Some(Duration::from_secs(20)));
    }

    #[test]
    fn dropping_the_checker_cancels_checks_in_flight_promptly() {
        /// Marks a check as cancelled when its future is dropped.
        struct Cancelled(Arc<AtomicBool>);
        impl Drop for Cancelled {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let started = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::new(AtomicBool::new(false));
        let (s, c) = (started.clone(), cancelled.clone());
        let hang: Probe = Arc::new(move |_| {
            let guard = Cancelled(c.clone());
            s.store(true, Ordering::SeqCst);
            Box::pin(async move {
                let _guard = guard;
                std::future::pending::<Result<(), String>>().await
            })
        });
        let (notify, _transitions) = channel();
        let tcp = check(CheckKind::Tcp, "10.0.0.2:80", 10, 600_000);
        let checker = launch(vec![target("10.0.0.2:80", tcp)], notify, hang);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !started.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "no check started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let dropping = Instant::now();
        drop(checker);
        // Aborted: the runtime drops the check at its next turn.
        while !cancelled.load(Ordering::SeqCst) {
            assert!(
                dropping.elapsed() < Duration::from_secs(2),
                "the check in flight was not cancelled within 2 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
