//! `fulcrum decap`: the backends' side of `forwarding = "ipip"` and
//! `"gue"`. `attach IFACE` puts Fulcrum's decapsulation program on a
//! backend's interface (pinned: it stays when the command exits), for the
//! interface's own addresses unless told which; `detach IFACE` removes
//! it; `status IFACE` prints its counters. With `--format json`, each
//! prints one JSON document, an error included.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::OutputFormat;
use crate::{
    daemon::wire::ErrorAnswer,
    dataplane::decap::{self, DEFAULT_ROOT},
};

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
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// What `decap` did, for `--format json`.
#[derive(Serialize)]
#[serde(untagged)]
enum Done {
    /// `attach`: what it decapsulates for, and how it runs.
    Attached {
        interface: String,
        addresses: Vec<IpAddr>,
        gue_port: u16,
        /// The XDP mode it was attached in; absent when an attached
        /// program only took new settings.
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
        pins: PathBuf,
    },
    /// `detach`.
    Detached { interface: String, detached: bool },
    /// `status`: the counters by reason.
    Counters {
        interface: String,
        counters: BTreeMap<String, u64>,
    },
}

impl Done {
    /// The line(s) for people.
    fn text(&self) -> String {
        match self {
            Done::Attached {
                interface,
                addresses,
                gue_port,
                mode,
                pins,
            } => {
                let listed: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
                match mode {
                    Some(mode) => format!(
                        "decapsulating on {interface} ({mode} XDP) for {}, GUE port \
                         {gue_port}; pinned under {}\n",
                        listed.join(", "),
                        pins.display()
                    ),
                    None => format!(
                        "decapsulating on {interface} now for {}, GUE port {gue_port}\n",
                        listed.join(", ")
                    ),
                }
            }
            Done::Detached { interface, .. } => {
                format!("stopped decapsulating on {interface}\n")
            }
            Done::Counters { counters, .. } => counters
                .iter()
                .map(|(reason, count)| format!("{reason:<18} {count}\n"))
                .collect(),
        }
    }
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

/// Runs `fulcrum decap`, printing as `--format` asks.
pub fn run(args: DecapArgs) -> anyhow::Result<()> {
    let format = args.format;
    let done = execute(args);
    match (format, &done) {
        (OutputFormat::Text, Ok(done)) => super::print_all(&done.text())?,
        (OutputFormat::Json, Ok(done)) => println!("{}", serde_json::to_string_pretty(done)?),
        (OutputFormat::Json, Err(e)) => println!(
            "{}",
            serde_json::to_string(&ErrorAnswer {
                error: format!("{e:#}"),
            })?
        ),
        (OutputFormat::Text, Err(_)) => {}
    }
    done.map(drop)
}

/// Does what `args` asks.
fn execute(args: DecapArgs) -> anyhow::Result<Done> {
    let root = &args.pin_root;
    Ok(match args.command {
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
            let mode = decap::attach(root, &interface, config)?;
            Done::Attached {
                pins: decap::pin_dir(root, &interface),
                interface,
                addresses,
                gue_port,
                mode: mode.map(str::to_string),
            }
        }
        DecapCommand::Detach { interface } => {
            decap::detach(root, &interface)?;
            Done::Detached {
                interface,
                detached: true,
            }
        }
        DecapCommand::Status { interface } => Done::Counters {
            counters: decap::counters(root, &interface)?
                .into_iter()
                .map(|(reason, count)| (reason.name().to_string(), count))
                .collect(),
            interface,
        },
    })
}
