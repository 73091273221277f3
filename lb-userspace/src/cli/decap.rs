//! `fulcrum decap`: the backends' side of `forwarding = "ipip"` and
//! `"gue"`. `attach IFACE` puts Fulcrum's decapsulation program on a
//! backend's interface (pinned: it stays when the command exits), for the
//! interface's own addresses unless told which; `detach IFACE` removes
//! it; `status IFACE` prints its counters.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Subcommand};

use crate::dataplane::decap::{self, DEFAULT_ROOT};

/// Arguments of `fulcrum decap`.
#[derive(Args)]
pub struct DecapArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DecapCommand,
    /// The bpffs directory under which each interface's decapsulation
    /// program is pinned.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub pin_root: PathBuf,
}

/// What `fulcrum decap` does.
#[derive(Subcommand)]
pub enum DecapCommand {
    /// Decapsulates tunnelled packets arriving on IFACE for this host
    /// (again: updates the addresses and port).
    Attach {
        /// The interface tunnelled packets arrive on.
        interface: String,
        /// An outer destination to decapsulate for (repeatable); default:
        /// IFACE's addresses (link-local IPv6 aside).
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        /// GUE's UDP port, as the load balancer's `encapsulation.gue_port`;
        /// 0 takes no GUE.
        #[arg(long, default_value_t = 6080)]
        gue_port: u16,
    },
    /// Removes the decapsulation program from IFACE.
    Detach {
        /// The interface.
        interface: String,
    },
    /// Prints the decapsulation counters of IFACE.
    Status {
        /// The interface.
        interface: String,
    },
}

/// Runs `fulcrum decap`.
pub fn run(args: DecapArgs) -> anyhow::Result<()> {
    let root = &args.pin_root;
    match args.command {
        DecapCommand::Attach {
            interface,
            addresses,
            gue_port,
        } => {
            let addresses = if addresses.is_empty() {
                crate::net::interface_addresses(&interface)?
            } else {
                addresses
            };
            anyhow::ensure!(
                !addresses.is_empty(),
                "{interface} has no address to decapsulate for; give --address"
            );
            let config = decap::settings(&addresses, gue_port)?;
            let listed: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
            match decap::attach(root, &interface, config)? {
                Some(mode) => println!(
                    "decapsulating on {interface} ({mode} XDP) for {}, GUE port {gue_port}; \
                     pinned under {}",
                    listed.join(", "),
                    decap::pin_dir(root, &interface).display()
                ),
                None => println!(
                    "decapsulating on {interface} now for {}, GUE port {gue_port}",
                    listed.join(", ")
                ),
            }
        }
        DecapCommand::Detach { interface } => {
            decap::detach(root, &interface)?;
            println!("stopped decapsulating on {interface}");
        }
        DecapCommand::Status { interface } => {
            for (reason, count) in decap::counters(root, &interface)? {
                println!("{:<18} {count}", reason.name());
            }
        }
    }
    Ok(())
}
