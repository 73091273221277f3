//! `fulcrum apply FILE`: sends a whole config to the daemon, which takes it
//! through the gate (validate, plan against what is installed, guards,
//! build, stage, verify, go live in one step) and writes it back to its
//! config file before answering.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

use super::client::Connection;

/// Arguments of `fulcrum apply`.
#[derive(Args)]
pub struct ApplyArgs {
    /// The config to apply (TOML).
    pub file: PathBuf,
    /// Override the guards (each override is recorded in the journal).
    #[arg(long)]
    pub force: bool,
    /// Refuse unless the generation in force is N (from `fulcrum status`).
    #[arg(long, value_name = "N")]
    pub if_generation: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

/// The text of a change's outcome: applied (with overrides and warnings) or
/// refused (with every reason).
pub fn change_text(body: &Value) -> String {
    let list = |key: &str| {
        body[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: {}: {} = {}: {} [{}]\n",
                            p["severity"].as_str().unwrap_or("error"),
                            p["location"].as_str().unwrap_or(""),
                            p["field"].as_str().unwrap_or(""),
                            p["value"].as_str().unwrap_or(""),
                            p["message"].as_str().unwrap_or(""),
                            p["code"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<String>()
            })
            .unwrap_or_default()
    };
    if body["applied"].as_bool() == Some(true) {
        let forced: String = list("forced")
            .lines()
            .map(|l| format!("forced: {l}\n"))
            .collect();
        format!(
            "{}{forced}applied and verified as generation {}\n",
            list("warnings"),
            body["generation"]
        )
    } else if body["problems"].is_array() {
        format!("{}REFUSED: nothing changed\n", list("problems"))
    } else {
        String::new()
    }
}

/// Sends the config and prints the verdict.
pub fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let config = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading config {}", args.file.display()))
        .map_err(|e| args.connection.fail(e))?;
    let request = json!({
        "config": config,
        "force": args.force,
        "if_generation": args.if_generation,
    });
    let answer = args
        .connection
        .request("POST", "/v1/apply", Some(&request))
        .context("fulcrum apply")?;
    args.connection.finish(&answer, change_text)
}
