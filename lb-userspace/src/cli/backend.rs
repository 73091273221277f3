//! `fulcrum backend add|remove|drain|set-weight VIP BACKEND ...`: one
//! backend change, made by the daemon on the config in force and taken
//! through the same gate as `apply`.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{apply::change_text, client::Connection};

/// Arguments of `fulcrum backend`.
#[derive(Args)]
pub struct BackendArgs {
    #[command(subcommand)]
    pub action: BackendAction,
    /// Override the guards (each override is recorded in the journal).
    #[arg(long, global = true)]
    pub force: bool,
    /// Refuse unless the generation in force is N.
    #[arg(long, global = true, value_name = "N")]
    pub if_generation: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

/// The VIP and backend a change is about.
#[derive(Args)]
pub struct Target {
    /// The VIP: its name, or ADDRESS:PORT/PROTOCOL.
    pub vip: String,
    /// The backend: its name or address (for `add`: its address).
    pub backend: String,
}

/// The backend changes.
#[derive(Subcommand)]
pub enum BackendAction {
    /// Add a backend.
    Add {
        #[command(flatten)]
        target: Target,
        /// Its weight (default 1).
        #[arg(long)]
        weight: Option<u32>,
        /// Its name.
        #[arg(long)]
        name: Option<String>,
        /// Its MAC (else found in the neighbour table).
        #[arg(long)]
        mac: Option<String>,
        /// Its port (default: the VIP's).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Remove a backend.
    Remove {
        #[command(flatten)]
        target: Target,
    },
    /// Set a backend's weight to 0: no new flows; established ones continue.
    Drain {
        #[command(flatten)]
        target: Target,
    },
    /// Set a backend's weight.
    SetWeight {
        #[command(flatten)]
        target: Target,
        /// The new weight.
        weight: u32,
    },
}

/// Sends the change and prints the verdict.
pub fn run(args: BackendArgs) -> anyhow::Result<()> {
    let (action, target, weight, extra) = match &args.action {
        BackendAction::Add {
            target,
            weight,
            name,
            mac,
            port,
        } => (
            "add",
            target,
            *weight,
            json!({"name": name, "mac": mac, "port": port}),
        ),
        BackendAction::Remove { target } => ("remove", target, None, json!({})),
        BackendAction::Drain { target } => ("drain", target, None, json!({})),
        BackendAction::SetWeight { target, weight } => {
            ("set-weight", target, Some(*weight), json!({}))
        }
    };
    let mut request = json!({
        "action": action,
        "vip": target.vip,
        "backend": target.backend,
        "weight": weight,
        "force": args.force,
        "if_generation": args.if_generation,
    });
    if let (Some(request), Some(extra)) = (request.as_object_mut(), extra.as_object()) {
        request.extend(extra.clone());
    }
    let answer = args
        .connection
        .request("POST", "/v1/backend", Some(&request))
        .with_context(|| format!("fulcrum backend {action}"))?;
    args.connection.finish(&answer, change_text)
}
