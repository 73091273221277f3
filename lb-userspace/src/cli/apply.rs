//! `fulcrum apply FILE`: sends a whole config to the daemon on its `[api]
//! socket` (or `--socket`), which takes it through the gate (validate, plan against what is installed, guards,
//! build, stage, verify, go live in one step) and writes it back to its
//! config file before answering.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

use super::client::Connection;
use crate::config::Config;

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
    // As `Problem`'s own Display; overrides are listed once, as `forced:`.
    let line = |p: &Value| {
        let text = |key: &str| p[key].as_str().unwrap_or("").to_string();
        let mut out = format!("{}: {}", text("severity"), text("location"));
        if !text("field").is_empty() {
            out += &format!(": {}", text("field"));
            if !text("value").is_empty() {
                out += &format!(" = {}", text("value"));
            }
        }
        format!("{out}: {} [{}]\n", text("message"), text("code"))
    };
    let list = |key: &str| {
        body[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|p| {
                        key != "warnings"
                            || !p["message"]
                                .as_str()
                                .unwrap_or("")
                                .ends_with("overridden by --force")
                    })
                    .map(line)
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
    let config = crate::config::read_file(&args.file)
        .with_context(|| format!("reading config {}", args.file.display()))
        .map_err(|e| args.connection.fail(e))?;
    // The daemon the config is for (a config that cannot be read at all
    // goes to the default one, which says why it refuses it).
    let connection = match Config::read(&config) {
        (Some(read), _) => args.connection.unless_given(read.api.socket),
        (None, _) => args.connection.clone(),
    };
    let request = json!({
        "config": config,
        "force": args.force,
        "if_generation": args.if_generation,
    });
    let answer = connection
        .request("POST", "/v1/apply", Some(&request))
        .context("fulcrum apply")?;
    connection.finish(&answer, change_text)
}
