//! `fulcrum validate FILE`: every problem in the config in one pass, each
//! naming the VIP or backend, the field, the value and why. Exit status 0
//! only when there is no error (warnings are allowed).

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use super::{OutputFormat, load_config_keeping};
use crate::{policy::validate::Validation, problem::Problem};

/// Arguments of `fulcrum validate`.
#[derive(Args)]
pub struct ValidateArgs {
    /// The config file (TOML).
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Serialize)]
struct Output<'a> {
    valid: bool,
    errors: usize,
    warnings: usize,
    problems: &'a [Problem],
    vips: Vec<VipShares>,
}

#[derive(Serialize)]
struct VipShares {
    name: String,
    endpoint: String,
    backends: Vec<BackendShare>,
}

#[derive(Serialize)]
struct BackendShare {
    name: String,
    address: String,
    weight: u32,
    share: f64,
}

/// Each backend's share of its VIP's table: all `validate` keeps of a
/// table, so that it holds no more than a table per core at a time.
type Shares = Vec<f64>;

fn shares(validation: &Validation<Shares>) -> Vec<VipShares> {
    let Some(config) = &validation.config else {
        return Vec::new();
    };
    config
        .vips
        .iter()
        .zip(&validation.tables)
        .filter_map(|(vip, table)| {
            let table = table.as_ref()?;
            Some(VipShares {
                name: vip.label(),
                endpoint: vip.endpoint(),
                backends: vip
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BackendShare {
                        name: b.label(),
                        address: vip.backend_addr(b).to_string(),
                        weight: b.weight,
                        share: table[i],
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Validates the file and prints the verdict.
pub fn run(args: ValidateArgs) -> anyhow::Result<()> {
    let validation = load_config_keeping(&args.file, |table| {
        (0..table.slots.len()).map(|i| table.share(i)).collect()
    });
    let errors = validation.problems.iter().filter(|p| p.is_error()).count();
    let warnings = validation.problems.len() - errors;
    let valid = validation.is_valid();
    match args.format {
        OutputFormat::Json => {
            let output = Output {
                valid,
                errors,
                warnings,
                problems: &validation.problems,
                vips: shares(&validation),
            };
            println!("{}", serde_json::to_string_pretty(&output)?);
        }
        OutputFormat::Text => {
            for problem in &validation.problems {
                println!("{problem}");
            }
            if let Some(config) = validation.config.as_ref().filter(|_| valid) {
                let backends: usize = config.vips.iter().map(|v| v.backends.len()).sum();
                println!(
                    "{}: valid: {} VIPs, {backends} backends, {warnings} warning(s)",
                    args.file.display(),
                    config.vips.len()
                );
            }
        }
    }
    if !valid {
        bail!(
            "{} is invalid: {errors} error(s), {warnings} warning(s)",
            args.file.display()
        );
    }
    Ok(())
}
