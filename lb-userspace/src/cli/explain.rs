//! `fulcrum explain tcp|udp SRC:PORT VIP:PORT`: which backend the data
//! plane sends this flow to, and why: its connection-table entry, or the
//! lookup-table slot its hash (the kernel's own function) picks.

use super::client::Connection;
use crate::daemon::wire::{self, ExplainAnswer, ExplainRequest};
use anyhow::Context as _;
use clap::Args;

/// Arguments of `fulcrum explain`.
#[derive(Args)]
pub struct ExplainArgs {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The client: ADDRESS:PORT (IPv6 as [ADDRESS]:PORT).
    pub source: String,
    /// The VIP: ADDRESS:PORT.
    pub destination: String,
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

fn text(answer: &ExplainAnswer) -> String {
    format!(
        "VIP {} -> backend {} ({}, by {}): {}\n",
        answer.vip, answer.backend, answer.address, answer.forwarding, answer.why,
    )
}

/// Asks the daemon and prints the answer.
pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let request = ExplainRequest {
        protocol: args.protocol.clone(),
        source: args.source.clone(),
        destination: args.destination.clone(),
    };
    let answer = args
        .connection
        .request(wire::EXPLAIN, Some(&request))
        .context("fulcrum explain")?;
    args.connection.finish(&answer, text)
}
