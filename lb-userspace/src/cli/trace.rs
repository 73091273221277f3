//! `fulcrum trace [--vip NAME] [--backend NAME] [--src PREFIX] [--sample
//! 1/N] [--count K]`: the data plane's decisions, packet by packet, as the
//! daemon streams them: the flow, the verdict and its reason, the VIP,
//! the backend, and whether the connection table or table slot N chose
//! it. Ctrl-C (or the count reached) ends the session, and tracing goes
//! off in the kernel at once.

use super::{OutputFormat, client::Connection, print_all};
use crate::daemon::{
    trace::event_text,
    wire::{self, DEFAULT_RATE, TraceLine, TraceRequest, TraceStatsLine},
};
use anyhow::Context as _;
use clap::Args;

/// Arguments of `fulcrum trace`.
#[derive(Args)]
pub struct TraceArgs {
    /// Only this VIP (its name, or ADDRESS:PORT/PROTOCOL).
    #[arg(long)]
    pub vip: Option<String>,
    /// Only this backend (its name, or ADDRESS:PORT).
    #[arg(long)]
    pub backend: Option<String>,
    /// Only flows from this source prefix (ADDRESS/LEN).
    #[arg(long)]
    pub src: Option<String>,
    /// One matching packet in N: `1/N` (or `N`).
    #[arg(long, value_parser = sample, default_value = "1")]
    pub sample: u32,
    /// Stop after K events.
    #[arg(long, value_name = "K")]
    pub count: Option<u64>,
    /// At most this many events a second (the data plane drops and counts
    /// the rest).
    #[arg(long, default_value_t = DEFAULT_RATE)]
    pub rate: u32,
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

fn sample(text: &str) -> Result<u32, String> {
    let n = text.strip_prefix("1/").unwrap_or(text);
    match n.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?}: want 1/N or N, N at least 1")),
    }
}

/// Streams the events until the count or the end.
pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let request = TraceRequest {
        vip: args.vip.clone(),
        backend: args.backend.clone(),
        src: args.src.clone(),
        sample: args.sample,
        rate: args.rate,
        snap_len: 0,
    };
    let mut seen = 0u64;
    let mut last_stats = None;
    let mut failed = None;
    let result = args.connection.stream(wire::TRACE, &request, |line| {
        let event = match serde_json::from_str::<TraceLine>(line) {
            Ok(TraceLine::Event(event)) => event,
            Ok(TraceLine::Stats(TraceStatsLine { stats })) => {
                last_stats = Some(stats);
                return true;
            }
            Err(_) => return true,
        };
        let text = match args.connection.format {
            OutputFormat::Json => format!("{line}\n"),
            OutputFormat::Text => event_text(&event) + "\n",
        };
        if let Err(e) = print_all(&text) {
            failed = Some(e);
            return false;
        }
        seen += 1;
        args.count.is_none_or(|count| seen < count)
    });
    result
        .context("fulcrum trace")
        .map_err(|e| args.connection.fail(e))?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(stats) = last_stats {
        eprintln!(
            "fulcrum: {seen} events; in the session so far: {}",
            serde_json::to_string(&stats)?
        );
    }
    Ok(())
}
