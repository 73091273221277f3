//! `fulcrum explain tcp|udp SRC:PORT VIP:PORT [--cid HEX]`: which
//! backend the data plane sends this flow to, and why: the server ID in a
//! QUIC connection ID, its connection-table entry, or the lookup-table
//! slot its hash (the kernel's own function) picks.

use std::net::SocketAddr;

use super::client::Connection;
use crate::daemon::wire::{self, ExplainAnswer, ExplainRequest};
use anyhow::Context as _;
use clap::{Args, ValueEnum};

/// A flow's protocol.
#[derive(Clone, Copy, ValueEnum)]
pub enum FlowProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Arguments of `fulcrum explain`.
#[derive(Args)]
pub struct ExplainArgs {
    /// The flow's protocol.
    pub protocol: FlowProtocol,
    /// The client: ADDRESS:PORT (IPv6 as [ADDRESS]:PORT).
    pub source: SocketAddr,
    /// The VIP: ADDRESS:PORT.
    pub destination: SocketAddr,
    /// The destination connection ID of a QUIC short-header packet, in
    /// hex (as a packet capture shows it): on a QUIC VIP, the server ID it
    /// carries is tried first.
    #[arg(long, value_name = "HEX")]
    pub cid: Option<String>,
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
    let protocol = match args.protocol {
        FlowProtocol::Tcp => "tcp",
        FlowProtocol::Udp => "udp",
    };
    let request = ExplainRequest {
        protocol: protocol.into(),
        source: args.source.to_string(),
        destination: args.destination.to_string(),
        cid: args.cid,
    };
    let answer = args
        .connection
        .request(wire::EXPLAIN, Some(&request))
        .context("fulcrum explain")?;
    args.connection.finish(&answer, text)
}
