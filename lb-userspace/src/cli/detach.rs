//! `fulcrum detach`: removes the data plane. Without `--interface` it asks
//! the running daemon, which detaches, removes its pins and exits. With
//! `--interface IFACE` it removes the data plane pinned for that interface
//! directly: its link (which detaches the program), its maps and its
//! installed records. That works without a daemon and whatever version of
//! `fulcrum` pinned it.

use anyhow::Context as _;
use clap::Args;

use super::{client::Connection, run::Places};

/// Arguments of `fulcrum detach`.
#[derive(Args)]
pub struct DetachArgs {
    /// Remove the data plane pinned for this interface directly, without
    /// the daemon.
    #[arg(long, short)]
    pub interface: Option<String>,
    #[command(flatten)]
    pub places: Places,
    #[command(flatten)]
    pub connection: Connection,
}

/// Detaches and removes the pins.
pub fn run(args: DetachArgs) -> anyhow::Result<()> {
    let Some(interface) = &args.interface else {
        let answer = args
            .connection
            .call("POST", "/v1/detach", None)
            .context("fulcrum detach")?;
        return args.connection.finish(&answer, |body| {
            format!(
                "detached from {}\n",
                body["interface"].as_str().unwrap_or("?")
            )
        });
    };
    let (pins, records) = args.places.of(interface);
    let removed = pins
        .remove()
        .with_context(|| format!("detaching from {interface}"))?;
    records.remove()?;
    if removed {
        crate::note!(
            "detached from {interface} and removed {}",
            pins.path().display()
        );
    } else {
        crate::note!(
            "nothing pinned for {interface} at {}",
            pins.path().display()
        );
    }
    Ok(())
}
