//! `fulcrum status`: what the daemon has installed: the interface, the
//! generation, and per VIP each backend's weight, table share, observed
//! share and counters.

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use super::client::Connection;
use crate::monitor::report::Report;

/// Arguments of `fulcrum status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connection: Connection,
}

fn text(body: &Value) -> String {
    let header = format!(
        "interface {} ({}), generation {}, config {}\n",
        body["interface"].as_str().unwrap_or("?"),
        if body["attached"].as_bool() == Some(true) {
            "attached"
        } else {
            "NOT attached"
        },
        body["generation"],
        body["config"].as_str().unwrap_or("?"),
    );
    let report: Option<Report> = serde_json::from_value(body.clone()).ok();
    header + &report.map_or_else(String::new, |r| r.to_text())
}

/// Asks the daemon and prints the answer.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let answer = args
        .connection
        .request("GET", "/v1/status", None)
        .context("fulcrum status")?;
    args.connection.finish(&answer, text)
}
