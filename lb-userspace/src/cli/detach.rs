//! `fulcrum detach --interface IFACE`: removes the data plane pinned for an
//! interface: its link (which detaches the program), its maps and its
//! installed records. Works whatever version of `fulcrum` pinned it, and
//! without a running controller.

use anyhow::Context as _;
use clap::Args;

use super::run::Places;

/// Arguments of `fulcrum detach`.
#[derive(Args)]
pub struct DetachArgs {
    /// The interface whose data plane to remove.
    #[arg(long, short)]
    pub interface: String,
    #[command(flatten)]
    pub places: Places,
}

/// Detaches and removes the pins.
pub fn run(args: DetachArgs) -> anyhow::Result<()> {
    let (pins, records) = args.places.of(&args.interface);
    let removed = pins
        .remove()
        .with_context(|| format!("detaching from {}", args.interface))?;
    records.remove()?;
    if removed {
        eprintln!(
            "fulcrum: detached from {} and removed {}",
            args.interface,
            pins.path().display()
        );
    } else {
        eprintln!(
            "fulcrum: nothing pinned for {} at {}",
            args.interface,
            pins.path().display()
        );
    }
    Ok(())
}
