//! `fulcrum compare A B`: whether two hosts send every flow to the same
//! backend (one seed, identical tables), or exactly where they differ.
//! Each side is a daemon's API socket, a config file or a `fulcrum tables
//! --format json` dump (of a remote host, say). Exit status 1 when they
//! differ, so a rollout script can stop.

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use super::{OutputFormat, client::Connection, print_all, tables};
use crate::{
    group::{Comparison, compare},
    problem::escaped,
};

/// Arguments of `fulcrum compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// One host: an API socket, a config file or a JSON dump.
    pub a: String,
    /// The other.
    pub b: String,
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

fn side(address: &Option<std::net::SocketAddr>) -> String {
    address.map_or_else(|| "(none)".into(), |a| a.to_string())
}

/// The comparison for people. Its texts come from daemons or dumps, so
/// they are printed escaped.
fn text(comparison: &Comparison, fingerprints: [Option<&str>; 2]) -> String {
    let [a, b] = comparison.sources.each_ref().map(|s| escaped(s));
    let mut text = format!("A: {a}\nB: {b}\n");
    match fingerprints.map(|f| f.map(escaped)) {
        [Some(left), Some(right)] if comparison.same_seed && left == right => {
            text.push_str(&format!("seed: the same (fingerprint {left})\n"));
        }
        [Some(left), Some(right)] => text.push_str(&format!(
            "seed: DIFFERENT ({left} vs {right}): flows hash differently, so any flow that \
             moves between these hosts may change backend whatever the tables\n"
        )),
        _ => text.push_str(
            "seed: UNKNOWN: a side has no flow_hash_seed, so its host hashes with a seed it \
             generated for itself; a group needs the same flow_hash_seed on every host\n",
        ),
    }
    for vip in &comparison.vips {
        let name = escaped(
            vip.names[0]
                .as_deref()
                .or(vip.names[1].as_deref())
                .unwrap_or("?"),
        );
        let endpoint = escaped(&vip.endpoint);
        match &vip.names {
            [Some(_), Some(_)] if vip.identical => text.push_str(&format!(
                "VIP {name} ({endpoint}): identical, {} slots\n",
                vip.sizes[0]
            )),
            [Some(_), Some(_)] => {
                text.push_str(&format!(
                    "VIP {name} ({endpoint}): DIFFERENT: {} of {} slots differ\n",
                    vip.differing_slots,
                    vip.sizes[0].max(vip.sizes[1])
                ));
                for (identity, [left, right]) in &vip.shares {
                    text.push_str(&format!(
                        "  backend {identity}: {left} slots on A, {right} on B\n"
                    ));
                }
                for (slot, left, right) in &vip.first_differences {
                    text.push_str(&format!(
                        "  slot {slot}: {} on A, {} on B\n",
                        side(left),
                        side(right)
                    ));
                }
            }
            [_, None] => text.push_str(&format!("VIP {name} ({endpoint}): only on A\n")),
            [None, _] => text.push_str(&format!("VIP {name} ({endpoint}): only on B\n")),
        }
    }
    text.push_str(if comparison.identical() {
        "verdict: IDENTICAL: every flow goes to the same backend through either host\n"
    } else {
        "verdict: DIFFERENT\n"
    });
    text
}

/// `fulcrum compare --format json`: the comparison and its verdict.
#[derive(Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    comparison: &'a Comparison,
    /// Every flow goes to the same backend through either host.
    identical: bool,
    /// Each host's seed fingerprint, when known.
    seed_fingerprints: [Option<&'a str>; 2],
    /// Each host's group, when it has one.
    groups: [&'a Option<String>; 2],
}

/// Compares, prints, and fails when the hosts differ.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let load = |source: &str| tables::load(source, &args.connection);
    let (a, b) = match (load(&args.a), load(&args.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Err(args.connection.fail(e)),
    };
    let comparison = compare(&a, &b);
    let fingerprints = [&a, &b].map(|t| t.seed_fingerprint.as_deref());
    let output = match args.connection.format {
        OutputFormat::Json => {
            let output = Output {
                identical: comparison.identical(),
                comparison: &comparison,
                seed_fingerprints: fingerprints,
                groups: [&a.group, &b.group],
            };
            serde_json::to_string_pretty(&output)? + "\n"
        }
        OutputFormat::Text => text(&comparison, fingerprints),
    };
    print_all(&output)?;
    if !comparison.identical() {
        match args.connection.format {
            OutputFormat::Text => bail!("the hosts differ: see above"),
            OutputFormat::Json => bail!("the hosts differ: see the JSON"),
        }
    }
    Ok(())
}
