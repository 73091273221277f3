//! `fulcrum detach`: removes the data plane. Without `--interface` it asks
//! the running daemon, which withdraws its routes, detaches, removes its
//! pins and exits. With `--interface IFACE` it removes the data plane
//! pinned for that interface directly: it withdraws the routes the
//! installed config announces through BIRD, then removes the link (which
//! detaches the program), the maps and the installed records. That works without a daemon and whatever version of
//! `fulcrum` pinned it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::{
    client::{Connection, NO_BODY},
    run::Places,
};
use crate::errors::Chain;
use crate::{
    announce::Announcer,
    config::{Announce, Config},
    daemon::{
        records::RecordDir,
        wire::{self, DetachAnswer},
    },
};

/// Arguments of `fulcrum detach`.
#[derive(Args)]
pub struct DetachArgs {
    /// Remove the data plane pinned for this interface directly, without
    /// the daemon.
    #[arg(long, short)]
    pub interface: Option<String>,
    /// With --interface: detach even when withdrawing the routes fails.
    #[arg(long, requires = "interface")]
    pub force: bool,
    /// Where the pins and installed records are.
    #[command(flatten)]
    pub places: Places,
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

/// Withdraws what the installed configs announced (the records of both
/// table banks, so that a config applied late is covered too), then waits
/// for the routers to stop sending. A failure stops the detach unless
/// `force`: the routes may still be announced.
fn withdraw(records: &RecordDir, interface: &str, force: bool) -> anyhow::Result<()> {
    let mut settings: Vec<Announce> = Vec::new();
    for bank in 0..2 {
        let announce = records
            .read(bank)
            .ok()
            .and_then(|record| Config::parse(&record.config).ok())
            .and_then(|config| config.announce);
        if let Some(announce) = announce
            && !settings.contains(&announce)
        {
            settings.push(announce);
        }
    }
    let mut drain = Duration::ZERO;
    for announce in &settings {
        match Announcer::new(announce, interface).withdraw() {
            Ok(line) => eprintln!("fulcrum: {line}"),
            Err(e) if force => eprintln!(
                "fulcrum: WARNING withdrawing the routes failed: {}; detaching anyway (--force)",
                Chain(&e)
            ),
            Err(e) => bail!(
                "withdrawing the routes failed: {}; nothing was detached (the host still \
                 forwards what the routers send it); fix BIRD, or add --force",
                Chain(&e)
            ),
        }
        drain = drain.max(Duration::from_secs(announce.drain_s));
    }
    if !drain.is_zero() {
        eprintln!(
            "fulcrum: waiting {} s for the routers to stop sending here",
            drain.as_secs()
        );
        std::thread::sleep(drain);
    }
    Ok(())
}

/// Detaches and removes the pins.
pub fn run(args: DetachArgs) -> anyhow::Result<()> {
    let Some(interface) = &args.interface else {
        let answer = args
            .connection
            .request(wire::DETACH, NO_BODY)
            .context("fulcrum detach")?;
        return args.connection.finish(&answer, |answer: &DetachAnswer| {
            format!("detached from {}\n", answer.interface)
        });
    };
    let (pins, records) = args.places.of(interface);
    (|| {
        // Not from under a running controller: it would keep writing into
        // maps that no longer forward anything.
        let _lock = records
            .lock()
            .context("a controller is running; `fulcrum detach` without --interface asks it")?;
        withdraw(&records, interface, args.force)?;
        let removed = pins
            .remove()
            .with_context(|| format!("detaching from {interface}"))?;
        records.remove()?;
        anyhow::ensure!(
            removed,
            "nothing pinned for {interface} at {} (is --pin-root the one `fulcrum run` used?)",
            pins.path().display()
        );
        Ok(())
    })()
    .map_err(|e| args.connection.fail(e))?;
    let done = format!(
        "detached from {interface} and removed {}",
        pins.path().display()
    );
    match args.connection.format {
        super::OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&DetachAnswer {
                detached: true,
                interface: interface.clone(),
                pins: Some(pins.path().display().to_string()),
            })?
        ),
        super::OutputFormat::Text => println!("{done}"),
    }
    Ok(())
}
