//! `fulcrum tables [SOURCE]`: every VIP's lookup table in backend
//! identities, with its digest and the seed's fingerprint, from a running
//! daemon (its API socket; the kernel's tables read back), a config file
//! (the tables it builds) or an earlier `--format json` dump. `fulcrum
//! compare` reads the same sources.

use std::{os::unix::fs::FileTypeExt as _, path::Path};

use anyhow::{Context as _, bail};
use clap::Args;

use super::{
    OutputFormat,
    client::{Connection, NO_BODY},
    load_config, print_all,
};
use crate::{daemon::wire, group::Tables, problem::escaped};

/// Arguments of `fulcrum tables`.
#[derive(Args)]
pub struct TablesArgs {
    /// A daemon's API socket, a config file or a JSON dump; the daemon on
    /// --socket when left out.
    pub source: Option<String>,
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

/// The tables `source` holds: a Unix socket is a daemon's API, a file
/// whose text starts with `{` a dump, anything else a config.
pub fn load(source: &str, connection: &Connection) -> anyhow::Result<Tables> {
    let path = Path::new(source);
    let kind = std::fs::metadata(path)
        .with_context(|| format!("{source}: not a socket or file"))?
        .file_type();
    if kind.is_socket() {
        let daemon = Connection {
            socket: Some(path.to_path_buf()),
            ..connection.clone()
        };
        let answer = daemon.call(wire::TABLES, NO_BODY)?;
        if !answer.ok() {
            bail!("{source}: the daemon answered: {}", answer.reason());
        }
        let mut tables: Tables = answer
            .read()
            .with_context(|| format!("{source}: the daemon's tables"))?;
        tables.source = format!("{} ({source})", tables.source);
        return Ok(tables);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {source}"))?;
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(&text)
            .with_context(|| format!("{source}: not a `fulcrum tables --format json` dump"));
    }
    let validation = load_config(path);
    if !validation.is_valid() {
        let errors: Vec<String> = validation
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect();
        bail!("{source}: the config is not valid: {}", errors.join("; "));
    }
    Tables::of_config(&format!("the config {source}"), &validation)
        .with_context(|| format!("{source}: a table could not be built"))
}

/// One line per VIP: its size, digest and backends. Every text comes from
/// a daemon or a dump, so it is printed escaped.
pub fn summary(tables: &Tables) -> String {
    let mut text = format!(
        "tables of {}: group {}, flow hash seed fingerprint {}\n",
        escaped(&tables.source),
        escaped(tables.group.as_deref().unwrap_or("(none)")),
        escaped(
            tables
                .seed_fingerprint
                .as_deref()
                .unwrap_or("(none: each host generates its own)")
        )
    );
    for vip in &tables.vips {
        text.push_str(&format!(
            "  VIP {} ({}): {} slots over {} backends, digest {}\n",
            escaped(&vip.name),
            escaped(&vip.endpoint),
            vip.slots.len(),
            vip.backends.len(),
            escaped(&vip.digest)
        ));
    }
    text
}

/// Prints the tables.
pub fn run(args: TablesArgs) -> anyhow::Result<()> {
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| args.connection.socket().display().to_string());
    let tables = load(&source, &args.connection).map_err(|e| args.connection.fail(e))?;
    let output = match args.connection.format {
        OutputFormat::Json => serde_json::to_string(&tables)? + "\n",
        OutputFormat::Text => summary(&tables),
    };
    print_all(&output)
}
