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
            .request("POST", "/v1/detach", None)
            .context("fulcrum detach")?;
        return args.connection.finish(&answer, |body| {
            format!(
                "detached from {}\n",
                body["interface"].as_str().unwrap_or("?")
            )
        });
    };
    let (pins, records) = args.places.of(interface);
    (|| {
        // Not from under a running controller: it would keep writing into
        // maps that no longer forward anything.
        let _lock = records
            .lock()
            .context("a controller is running; `fulcrum detach` without --interface asks it")?;
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
            serde_json::json!({"detached": true, "interface": interface, "pins": pins.path()})
        ),
        super::OutputFormat::Text => println!("{done}"),
    }
    Ok(())
}
