//! `cargo xtask bench`, monitoring at scale: 1,000 VIPs × 100 backends
//! installed in the real kernel maps. Measures reading every counter, one
//! `/metrics` scrape (in process, and over HTTP from the daemon's own
//! server inside a namespace this bench creates), and the per-packet cost
//! of an established flow with and without a scrape loop running beside it.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    fixture::Fixture,
    netns::Netns,
    packet::{Frame, tcp_flags::ACK},
};
use lb_userspace::{
    config::{Config, Imbalance, Outlier},
    daemon::scrape,
    dataplane::{counted_ids, pins::PinDir},
    health::Checker,
    monitor::{Attachment, Monitor, View, metrics},
};

const VIPS: usize = 1000;
const BACKENDS: usize = 100;
const READ_TARGET_MS: f64 = 100.0;
const SCRAPE_TARGET_MS: f64 = 250.0;
const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn time_ms(rounds: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..rounds)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// 1,000 VIPs of 100 backends each, every address distinct, all in
/// 198.18.0.0/15 (backends from 198.18.0.1 up, VIPs at 198.19.250.x on).
/// As text it would be 7 MB, beyond what a config file may hold, so each
/// VIP is read on its own.
fn config() -> Config {
    let head = format!("table_size = 16381\nmax_backends = {}\n", VIPS * BACKENDS);
    let mut config = Config::parse(&head).expect("the settings read");
    for v in 0..VIPS {
        let mut text = format!(
            "[[vip]]\nname = \"vip{v}\"\naddress = \"198.19.{}.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            250 + v / 250,
            v % 250 + 1
        );
        for b in 0..BACKENDS {
            let n = v * BACKENDS + b;
            let subnet = n / 254;
            text += &format!(
                "[[vip.backend]]\naddress = \"198.{}.{}.{}\"\nmac = \"02:00:00:{:02x}:{:02x}:{:02x}\"\n",
                18 + subnet / 256,
                subnet % 256,
                n % 254 + 1,
                n >> 16,
                (n >> 8) & 0xff,
                n & 0xff
            );
        }
        let vip = Config::parse(&text).expect("a VIP reads").vips;
        config.vips.extend(vip);
    }
    config
}

/// A loop of in-process scrapes on another thread while `measure` runs.
fn during_scrapes<T>(monitor: &Arc<Monitor>, measure: impl FnOnce() -> T) -> (T, u32) {
    let stop = AtomicBool::new(false);
    let scrapes = AtomicU32::new(0);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let (report, facts) = monitor.report(false).expect("a report");
                std::hint::black_box(metrics::exposition(report, facts));
                scrapes.fetch_add(1, Ordering::Relaxed);
            }
        });
        let result = measure();
        stop.store(true, Ordering::Relaxed);
        result
    });
    (result, scrapes.into_inner())
}

fn main() {
    println!("monitoring at scale: {VIPS} VIPs x {BACKENDS} backends");
    let started = Instant::now();
    let mut fixture = Fixture::with_parsed(&config());
    println!(
        "installed {} backends in {:.1} s",
        VIPS * BACKENDS,
        started.elapsed().as_secs_f64()
    );
    // Some traffic, so that counters are not all zero.
    let frame = Frame::tcp("198.18.250.1:40000", "198.19.250.1:80", ACK).bytes();
    fixture.run(&frame).expect("a first packet");

    let reader = fixture.dataplane.counter_reader().expect("a reader");
    let (backends, vips) = counted_ids(&fixture.state);
    let read_ms = time_ms(20, || {
        std::hint::black_box(reader.read((backends, vips, 0)).expect("counters"));
    });
    println!(
        "reading every counter ({backends} backend slots, {vips} VIPs): {read_ms:.1} ms \
         (target {READ_TARGET_MS} ms) {}",
        if read_ms < READ_TARGET_MS {
            "ok"
        } else {
            "MISSED"
        }
    );

    // No health checks: the bench's backends do not exist.
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let checker = Checker::start(Vec::new(), &Default::default(), |_| {}, runtime.handle());
    let monitor = Monitor::new(
        Arc::new(checker),
        (
            fixture.dataplane.counter_reader().expect("a reader"),
            fixture.dataplane.epoch_clock().expect("a clock"),
        ),
        Attachment {
            pins: PinDir::new(Path::new("/nonexistent"), "bench"),
            interface: "lo".into(),
            survival: Default::default(),
        },
        View::of(&fixture.state, 1, &HashMap::new()),
        (Imbalance::default(), Outlier::default()),
    );
    monitor.sample().expect("a sample");
    let mut size = 0;
    let in_process_ms = time_ms(10, || {
        let (report, facts) = monitor.report(false).expect("a report");
        size = metrics::exposition(report, facts)
            .iter()
            .map(String::len)
            .sum();
    });
    let sample_ms = time_ms(10, || monitor.sample().expect("a sample"));
    let report_ms = time_ms(10, || {
        std::hint::black_box(monitor.report(false).expect("a report"));
    });
    let (report, facts) = monitor.report(false).expect("a report");
    let encode_ms = time_ms(10, || {
        std::hint::black_box(metrics::exposition(report.clone(), facts.clone()));
    });
    println!(
        "of which reading and building the report: {report_ms:.1} ms, encoding: {encode_ms:.1} ms"
    );
    println!(
        "one scrape in process (read, report, encode {:.1} MB): {in_process_ms:.1} ms \
         (target {SCRAPE_TARGET_MS} ms) {}",
        size as f64 / 1e6,
        if in_process_ms < SCRAPE_TARGET_MS {
            "ok"
        } else {
            "MISSED"
        }
    );
    println!("one detector sample (read, window, judge): {sample_ms:.1} ms");

    // The daemon's HTTP server, in a namespace of the bench's own.
    let netns = Netns::create(&format!("fulcrum-bench-{}", std::process::id())).expect("netns");
    let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9487);
    let server = netns
        .enter(|| scrape::serve(address, monitor.clone(), runtime.handle()))
        .expect("the metrics server");
    // Over HTTP, as a scraper sees it: curl's total time, from the request
    // to the last byte (the Rust test client adds its own copies).
    let curl = |netns: &Netns| -> Option<f64> {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                netns.name(),
                "curl",
                "-sf",
                "-o",
                "/dev/null",
            ])
            .args(["-w", "%{time_total}", "http://127.0.0.1:9487/metrics"])
            .output()
            .ok()?;
        out.status.success().then_some(())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .ok()
    };
    match (0..10).map(|_| curl(&netns)).collect::<Option<Vec<f64>>>() {
        Some(times) => {
            let http_ms = median(times) * 1e3;
            println!(
                "one scrape over HTTP (curl, GET /metrics, median of 10): {http_ms:.1} ms \
                 (target {SCRAPE_TARGET_MS} ms) {}",
                if http_ms < SCRAPE_TARGET_MS {
                    "ok"
                } else {
                    "MISSED"
                }
            );
        }
        None => println!("one scrape over HTTP: not measured (curl failed or is not installed)"),
    }
    drop(server);

    // Forwarding during scrapes: the same established flow, quiet and with
    // a scrape loop on the other core, interleaved round by round.
    let per_packet = |fixture: &mut Fixture| {
        fixture
            .run_repeated(&frame, REPEAT)
            .expect("BPF_PROG_TEST_RUN")
            .nanos as f64
    };
    let mut quiet = Vec::new();
    let mut busy = Vec::new();
    let mut scrapes = 0;
    for _ in 0..ROUNDS {
        quiet.push(per_packet(&mut fixture));
        let (ns, n) = during_scrapes(&monitor, || per_packet(&mut fixture));
        busy.push(ns);
        scrapes += n;
    }
    let (quiet, busy) = (median(quiet), median(busy));
    println!(
        "established flow, per packet: {quiet:.1} ns quiet, {busy:.1} ns during a scrape loop \
         ({scrapes} scrapes): {:.2}x",
        busy / quiet
    );
    std::thread::sleep(Duration::from_millis(10));
}
