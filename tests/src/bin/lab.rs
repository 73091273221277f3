//! `cargo xtask lab`: builds the namespace lab, runs `fulcrum run` in it,
//! drives real TCP and UDP traffic at IPv4 and IPv6 VIPs for a few seconds,
//! prints what each backend was promised and what it got, and tears down.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lb_tests::{
    lab::{BackendSpec, Lab, Traffic},
    traffic::Tally,
};

const USAGE: &str = "usage: lab [--seconds N] [--backends name:weight,...]";
const TCP_PER_ROUND: usize = 400;
const UDP_PER_ROUND: u16 = 200;
const FIRST_UDP_PORT: u16 = 20000;

fn parse_backends(spec: &str) -> anyhow::Result<Vec<BackendSpec>> {
    spec.split(',')
        .map(|item| {
            let (name, weight) = item
                .split_once(':')
                .with_context(|| format!("{item:?}: expected name:weight"))?;
            let valid = !name.is_empty()
                && name.len() <= 8
                && name.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid {
                bail!("{name:?}: backend names are 1 to 8 letters or digits");
            }
            Ok(BackendSpec {
                name: name.into(),
                weight: weight
                    .parse()
                    .with_context(|| format!("{item:?}: weight is not a number"))?,
            })
        })
        .collect()
}

fn main() {
    if let Err(err) = run() {
        eprintln!("lab: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let mut seconds = 3u64;
    let mut backends = parse_backends("b1:1,b2:1,b3:2")?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context(USAGE);
        match arg.as_str() {
            "--seconds" => seconds = value()?.parse().context("--seconds takes a number")?,
            "--backends" => backends = parse_backends(&value()?)?,
            _ => bail!("unknown argument {arg:?}; {USAGE}"),
        }
    }
    if !(1..=60).contains(&seconds) {
        bail!("--seconds must be 1 to 60");
    }
    if backends.is_empty() || backends.len() > 16 {
        bail!("the lab runs 1 to 16 backends");
    }
    eprintln!("lab: starting namespaces, backends and fulcrum run");
    let lab = Lab::start(&backends)?;
    eprintln!("lab: driving TCP and UDP traffic at IPv4 and IPv6 VIPs for {seconds} s");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut totals: Traffic = Vec::new();
    let mut udp_port = FIRST_UDP_PORT;
    while Instant::now() < deadline && udp_port <= u16::MAX - UDP_PER_ROUND {
        let round = lab.drive(TCP_PER_ROUND, UDP_PER_ROUND, udp_port)?;
        udp_port += UDP_PER_ROUND;
        if totals.is_empty() {
            totals = round;
        } else {
            for ((_, total), (_, part)) in totals.iter_mut().zip(round) {
                total.merge(part);
            }
        }
    }
    let reports = lab.stop_fulcrum()?;
    print_table(reports.last().context("no counters")?, &totals);
    drop(lab);
    eprintln!("lab: torn down");
    Ok(())
}

fn print_table(report: &lb_userspace::monitor::report::Report, traffic: &[(&str, Tally)]) {
    for (vip, tally) in traffic {
        let Some(kernel) = report.vips.iter().find(|v| v.name == *vip) else {
            continue;
        };
        println!(
            "\nVIP {vip}: {} answered, {} failed; kernel: {} flows, {} packets",
            tally.answered(),
            tally.failures,
            kernel.new_flows,
            kernel.packets
        );
        println!(
            "  {:<8} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
            "backend", "weight", "expected", "client", "kernel", "flows", "packets", "bytes"
        );
        for b in &kernel.backends {
            println!(
                "  {:<8} {:>6} {:>8.1}% {:>8.1}% {:>8.1}% {:>9} {:>9} {:>11}",
                b.name,
                b.weight,
                b.expected_share * 100.0,
                tally.share(&b.name) * 100.0,
                b.observed_share * 100.0,
                b.new_flows,
                b.packets,
                b.bytes
            );
        }
        if let Some(err) = &tally.first_error {
            println!("  first failure: {err}");
        }
    }
    println!("\nverdicts: {}", report.nonzero_reasons());
}
