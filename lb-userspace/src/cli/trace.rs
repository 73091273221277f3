//! `fulcrum trace [--vip NAME] [--backend NAME] [--src PREFIX] [--sample
//! 1/N] [--count K] [--pcap FILE [--snap-len N]]`: the data plane's
//! decisions, packet by packet, as the daemon streams them: the flow, the
//! verdict and its reason, the VIP, the backend, and whether the
//! connection table or table slot N chose it; with `--pcap`, also the
//! packets as they left, in a pcapng file (or on stdout) with each
//! decision as its packet's comment. Ctrl-C (or the count reached) ends
//! the session, and tracing goes off in the kernel at once.

use std::{
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use super::{
    OutputFormat,
    client::Connection,
    pcap::{Packet, PcapngWriter},
    print_all,
};
use crate::{
    daemon::{
        trace::event_text,
        wire::{self, DEFAULT_RATE, TraceEventLine, TraceLine, TraceRequest, TraceStatsLine},
    },
    dataplane::clock::monotonic_ns,
};
use anyhow::{Context as _, bail};
use clap::Args;

/// Bytes of each packet `--pcap` captures unless `--snap-len` says.
const PCAP_SNAP_LEN: u32 = 128;

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
    /// Also write the packets, as they left the data plane, to FILE as
    /// pcapng, each with its decision as its comment (`-`: to stdout, and
    /// then nothing else goes there).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Capture each packet's first N bytes, at most 256 [default: 128
    /// with --pcap].
    #[arg(long, value_name = "N")]
    pub snap_len: Option<u32>,
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

/// Where `--pcap` writes, and how it dates packets.
struct Capture {
    writer: PcapngWriter<Box<dyn Write>>,
    /// How far the wall clock is ahead of the kernel's monotonic clock
    /// (the events'), in ns, as of the start.
    wall_clock_offset: i128,
}

impl Capture {
    fn open(path: &Path, snap_len: u32) -> anyhow::Result<Self> {
        let out: Box<dyn Write> = if path == Path::new("-") {
            Box::new(BufWriter::new(std::io::stdout()))
        } else {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            Box::new(BufWriter::new(file))
        };
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Ok(Self {
            writer: PcapngWriter::start(out, snap_len).context("writing the pcapng header")?,
            wall_clock_offset: wall - i128::from(monotonic_ns()),
        })
    }

    fn write(&mut self, event: &TraceEventLine) -> anyhow::Result<()> {
        let bytes = event.packet_bytes().map_err(anyhow::Error::msg)?;
        let time_ns = (i128::from(event.time_ns) + self.wall_clock_offset).max(0) as u64;
        self.writer.packet(&Packet {
            time_ns,
            bytes: &bytes,
            len: event.packet_len.max(bytes.len() as u32),
            comment: &event_text(event),
        })?;
        Ok(())
    }
}

/// The snap length `args` ask for, or why they make no sense.
fn snap_len(args: &TraceArgs) -> anyhow::Result<u32> {
    let to_stdout = args.pcap.as_deref() == Some(Path::new("-"));
    let json = matches!(args.connection.format, OutputFormat::Json);
    if to_stdout && json {
        bail!("--pcap - writes the capture to stdout: --format json has no room there");
    }
    match (&args.pcap, args.snap_len) {
        (Some(_), None) => Ok(PCAP_SNAP_LEN),
        (Some(_), Some(0)) => bail!("--pcap writes packets: --snap-len must be at least 1"),
        (None, Some(n)) if n > 0 && !json => {
            bail!("--snap-len: the text trace shows no bytes; add --pcap FILE or --format json")
        }
        (_, n) => Ok(n.unwrap_or(0)),
    }
}

/// Streams the events until the count or the end.
pub fn run(args: TraceArgs) -> anyhow::Result<()> {
    let snap_len = snap_len(&args)?;
    let request = TraceRequest {
        vip: args.vip.clone(),
        backend: args.backend.clone(),
        src: args.src.clone(),
        sample: args.sample,
        rate: args.rate,
        snap_len,
    };
    let mut capture = match &args.pcap {
        Some(path) => Some(Capture::open(path, snap_len)?),
        None => None,
    };
    let printing = args.pcap.as_deref() != Some(Path::new("-"));
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
        if let Some(capture) = &mut capture
            && let Err(e) = capture.write(&event)
        {
            // A reader that went away (`| tcpdump -c 5`) ends it quietly.
            let gone = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe);
            if !gone {
                failed = Some(e.context("writing the capture"));
            }
            return false;
        }
        let text = match args.connection.format {
            OutputFormat::Json => format!("{line}\n"),
            OutputFormat::Text => event_text(&event) + "\n",
        };
        if printing && let Err(e) = print_all(&text) {
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
