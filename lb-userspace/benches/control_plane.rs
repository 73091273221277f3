//! `cargo xtask bench`, control plane: each table builder's time, balance
//! and disruption, and validation plus plan of a large config (128 VIPs x
//! 150 backends at M = 65537: as many slots as the budget allows, in a
//! config within the 1 MiB limit) against a slightly different one.

use std::{fmt::Write as _, time::Instant};

use lb_userspace::{
    policy::plan::plan,
    policy::validate::validate,
    table::{BackendIdentity, DEFAULT_SIZE, TableBuilder, WeightedBackend, moved},
    table::{maglev::Maglev, stable::Stable},
};

const ROUNDS: usize = 5;
const VIPS: u32 = 128;
const BACKENDS_PER_VIP: u32 = 150;
/// Target for validating both configs and planning, on 2 cores.
const TARGET_SECONDS: f64 = 5.0;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn backends(n: u32) -> Vec<WeightedBackend> {
    (0..n)
        .map(|i| {
            let [_, _, hi, lo] = i.to_be_bytes();
            WeightedBackend {
                identity: BackendIdentity::new(([198, 18, hi, lo], 8080).into()),
                weight: 100,
            }
        })
        .collect()
}

/// Each table algorithm side by side: build time, balance, and the slots
/// that move (as a multiple of the ideal) when one of N equal backends
/// leaves, when one joins, and when one's weight doubles; each averaged
/// over five choices of the backend.
fn table_quality() {
    println!(
        "\ntable algorithms at M = {}: build time, balance, and slots moved as a multiple of the \
         ideal (1/N for a leave, 1/(N+1) for a join, the share gained for a doubled weight)",
        DEFAULT_SIZE.get()
    );
    println!(
        "{:<8} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "builder", "N", "build ms", "max/mean", "leave", "join", "double"
    );
    let builders: [(&str, &dyn TableBuilder); 2] = [("maglev", &Maglev), ("stable", &Stable)];
    for (name, builder) in builders {
        for n in [10u32, 100, 1000] {
            let full = backends(n);
            let build =
                |list: &[WeightedBackend]| builder.build(list, DEFAULT_SIZE).expect("table");
            let mut times = Vec::new();
            let mut table = Vec::new();
            for _ in 0..ROUNDS {
                let start = Instant::now();
                table = build(&full);
                times.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            let mut load = vec![0u32; n as usize];
            for &i in &table {
                load[i as usize] += 1;
            }
            let mean = DEFAULT_SIZE.get() as f64 / f64::from(n);
            let max_over_mean = f64::from(*load.iter().max().unwrap()) / mean;
            let picks: Vec<usize> = (0..5).map(|k| (k * n as usize) / 5).collect();
            let average = |change: &dyn Fn(usize) -> (Vec<WeightedBackend>, f64)| {
                picks
                    .iter()
                    .map(|&pick| {
                        let (next, ideal) = change(pick);
                        moved((&full, &table), (&next, &build(&next))) / ideal
                    })
                    .sum::<f64>()
                    / picks.len() as f64
            };
            let leave = average(&|pick| {
                let mut next = full.clone();
                next.remove(pick);
                (next, 1.0 / f64::from(n))
            });
            let join = average(&|pick| {
                let mut next = full.clone();
                next.push(WeightedBackend {
                    identity: BackendIdentity::new(([198, 19, 0, pick as u8], 8080).into()),
                    weight: 100,
                });
                (next, 1.0 / f64::from(n + 1))
            });
            let double = average(&|pick| {
                let mut next = full.clone();
                next[pick].weight *= 2;
                (next, 2.0 / f64::from(n + 1) - 1.0 / f64::from(n))
            });
            println!(
                "{name:<8} {n:>6} {:>9.1} {max_over_mean:>9.4} {leave:>7.2}x {join:>7.2}x {double:>7.2}x",
                median(times)
            );
        }
    }
    // Both walk the same permutations: switching a VIP from one to the
    // other moves few flows.
    for n in [10u32, 100, 1000] {
        let full = backends(n);
        let tables = builders.map(|(_, b)| b.build(&full, DEFAULT_SIZE).expect("table"));
        println!(
            "switching maglev -> stable at N = {n}: {:.2}% of slots move",
            moved((&full, &tables[0]), (&full, &tables[1])) * 100.0
        );
    }
}

/// A config of `VIPS` VIPs with `BACKENDS_PER_VIP` backends each; `variant`
/// changes one backend's weight per VIP.
fn large_config(variant: bool) -> String {
    let mut text = String::new();
    for v in 0..VIPS {
        let _ = write!(
            text,
            "\n[[vip]]\nname = \"v{v}\"\naddress = \"198.19.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nbackend = [\n",
            v / 250,
            v % 250 + 1
        );
        for b in 0..BACKENDS_PER_VIP {
            let weight = if variant && b == v % BACKENDS_PER_VIP {
                0
            } else {
                1 + b % 3
            };
            let _ = writeln!(
                text,
                "  {{ address = \"198.18.{}.{}\", weight = {weight} }},",
                b / 250,
                b % 250 + 1
            );
        }
        text.push_str("]\n");
    }
    text
}

fn validate_and_plan() {
    let current_text = large_config(false);
    let next_text = large_config(true);
    println!(
        "\nvalidate + plan: {VIPS} VIPs x {BACKENDS_PER_VIP} backends at M = {} ({:.1} MB of TOML each), {} cores",
        DEFAULT_SIZE.get(),
        next_text.len() as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let start = Instant::now();
    let current = validate(&current_text);
    let validated_current = start.elapsed().as_secs_f64();
    let next = validate(&next_text);
    let validated_both = start.elapsed().as_secs_f64();
    assert!(
        current.is_valid() && next.is_valid(),
        "bench configs must be valid"
    );
    let planned = plan(current.side(), next.side().expect("valid"), false, None);
    let total = start.elapsed().as_secs_f64();
    let moved: f64 =
        planned.vips.iter().map(|v| v.flows_moved).sum::<f64>() / planned.vips.len() as f64;
    println!("  validate one config (parse, checks, {VIPS} tables):  {validated_current:.2} s");
    println!(
        "  validate the second config:                        {:.2} s",
        validated_both - validated_current
    );
    println!(
        "  plan (diff, flows moved, guards):                  {:.2} s",
        total - validated_both
    );
    println!(
        "  total: {total:.2} s (target < {TARGET_SECONDS} s: {})",
        if total < TARGET_SECONDS {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  mean flows moved per VIP (one backend drained of {BACKENDS_PER_VIP}): {:.2}%",
        moved * 100.0
    );
    // The same config with every VIP on the stable table.
    let stable_text = format!("table = \"stable\"\n{current_text}");
    let start = Instant::now();
    assert!(
        validate(&stable_text).is_valid(),
        "bench config must be valid"
    );
    println!(
        "  validate one config with table = \"stable\":       {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

fn main() {
    table_quality();
    validate_and_plan();
}
