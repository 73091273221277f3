//! `fulcrum explain tcp|udp SRC:PORT VIP:PORT`: which backend the data
//! plane sends this flow to, and why: its connection-table entry, or the
//! lookup-table slot its hash (the kernel's own function) picks.

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

use super::client::Connection;

/// Arguments of `fulcrum explain`.
#[derive(Args)]
pub struct ExplainArgs {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The client: ADDRESS:PORT (IPv6 as [ADDRESS]:PORT).
    pub source: String,
    /// The VIP: ADDRESS:PORT.
    pub destination: String,
    #[command(flatten)]
    pub connection: Connection,
}

fn text(body: &Value) -> String {
    if body["backend"].is_null() {
        return String::new();
    }
    format!(
        "VIP {} -> backend {} ({}, by {}): {}\n",
        body["vip"].as_str().unwrap_or("?"),
        body["backend"].as_str().unwrap_or("?"),
        body["address"].as_str().unwrap_or("?"),
        body["forwarding"].as_str().unwrap_or("?"),
        body["why"].as_str().unwrap_or("?"),
    )
}

/// Asks the daemon and prints the answer.
pub fn run(args: ExplainArgs) -> anyhow::Result<()> {
    let request = json!({
        "protocol": args.protocol,
        "source": args.source,
        "destination": args.destination,
    });
    let answer = args
        .connection
        .request("POST", "/v1/explain", Some(&request))
        .context("fulcrum explain")?;
    args.connection.finish(&answer, text)
}
