//! `--watch` on the verbs that change the config (`apply`, `backend`):
//! the daemon watches the change and rolls it back if it makes its VIPs
//! worse; the verb waits for the verdict and prints it, `kept` or `rolled
//! back` with the evidence (exit status 1).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;

use super::{
    OutputFormat,
    client::{Answer, Connection, NO_BODY},
};
use crate::daemon::{
    watch::WatchReport,
    wire::{self, ChangeAnswer, WatchAnswer},
};

/// How long `--watch` watches unless given a number of seconds.
pub const DEFAULT_WATCH_S: u64 = 30;

/// How often the verdict is asked for while the watch goes on.
const ASK_EVERY: Duration = Duration::from_millis(250);

/// The `--watch` argument.
#[derive(Args, Clone, Default)]
pub struct WatchArg {
    /// Watch the change for SECONDS [default: 30], roll it back if it makes
    /// its VIPs worse (a backend that becomes an outlier, fails its checks
    /// or is flagged imbalanced, or fewer completed handshakes), and wait
    /// for the verdict: `kept`, or `rolled back` with the evidence (exit
    /// status 1).
    #[arg(long, global = true, value_name = "SECONDS", num_args = 0..=1,
          default_missing_value = "30")]
    pub watch: Option<u64>,
}

impl WatchArg {
    /// What the request asks for: absent without `--watch` (the config's
    /// `[rollout] watch_s` then applies).
    pub fn watch_s(&self) -> Option<u64> {
        self.watch
    }

    /// After an applied change (`answer`), waits for its watch's verdict
    /// and prints it; an error when it was rolled back or the rollback
    /// refused.
    pub fn wait(&self, connection: &Connection, answer: &Answer) -> anyhow::Result<()> {
        if self.watch.is_none() {
            return Ok(());
        }
        let change: ChangeAnswer = answer.read()?;
        let Some(length) = change.watch_s.filter(|_| change.applied) else {
            if matches!(connection.format, OutputFormat::Text) && change.applied {
                println!("not watched: the change moved no VIP's table");
            }
            return Ok(());
        };
        let limit = Duration::from_secs(length) + Duration::from_secs(30);
        let started = Instant::now();
        let report = loop {
            let answer = connection
                .request(wire::WATCH, NO_BODY)
                .context("asking for the watch's verdict")?;
            let watch = answer.read::<WatchAnswer>()?.watch;
            if let Some(report) =
                watch.filter(|w| w.generation == change.generation && w.state != "watching")
            {
                break report;
            }
            if started.elapsed() > limit {
                bail!(
                    "no verdict on generation {} after {} s",
                    change.generation,
                    limit.as_secs()
                );
            }
            std::thread::sleep(ASK_EVERY);
        };
        match connection.format {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            OutputFormat::Text => print!("{}", verdict_text(&report)),
        }
        match report.state.as_str() {
            "kept" | "superseded" => Ok(()),
            state => bail!("{state}: {}", report.evidence.join("; ")),
        }
    }
}

/// A watch's verdict as text.
pub fn verdict_text(report: &WatchReport) -> String {
    let mut text = match (report.state.as_str(), report.rolled_back_as) {
        ("rolled back", Some(generation)) => {
            format!("rolled back as generation {generation}: it made things worse\n")
        }
        (state, _) => format!("{state}\n"),
    };
    for line in &report.evidence {
        text += &format!("  {line}\n");
    }
    text
}
