//! `fulcrum plan FILE [--against CURRENT]`: what applying FILE would do,
//! per VIP: each backend's share before and after (numbers and a bar), the
//! flows that move, the capacity taken away, and every warning and guard
//! verdict. Exit status 0 only when the plan could be applied.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use super::OutputFormat;
use crate::{
    plan::{Change, Plan, VipPlan, plan},
    problem::Problem,
    validate::{Validation, validate},
};

/// Arguments of `fulcrum plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The config to apply (TOML).
    pub file: PathBuf,
    /// The config in force now; without it, the plan starts from nothing.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Override the blast-radius guards (the override is recorded).
    #[arg(long)]
    pub force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

fn load(path: &PathBuf) -> anyhow::Result<Validation> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    Ok(validate(&text))
}

#[derive(Serialize)]
struct Output<'a> {
    accepted: bool,
    /// Problems of the new config itself.
    config_problems: &'a [Problem],
    #[serde(flatten)]
    plan: &'a Plan,
}

/// Computes and prints the plan.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let next = load(&args.file)?;
    let current = args.against.as_ref().map(load).transpose()?;
    // A current config with errors may have lost VIPs while being read; a
    // plan against it could wave through a change it should refuse.
    if let (Some(path), Some(validation)) = (&args.against, &current)
        && !validation.is_valid()
    {
        bail!(
            "the current config {} is not valid, so no safe plan can be made against it: {}",
            path.display(),
            crate::config::join_problems(&validation.errors())
        );
    }
    let current_side = current.as_ref().and_then(Validation::side);
    let Some(next_side) = next.side() else {
        if let OutputFormat::Json = args.format {
            let output = serde_json::json!({"accepted": false, "config_problems": next.problems});
            println!("{}", serde_json::to_string_pretty(&output)?);
        }
        bail!(
            "{} does not parse: {}",
            args.file.display(),
            crate::config::join_problems(&next.problems)
        );
    };
    let planned = plan(current_side, next_side, args.force);
    let accepted = next.is_valid() && planned.accepted();
    match args.format {
        OutputFormat::Json => {
            let output = Output {
                accepted,
                config_problems: &next.problems,
                plan: &planned,
            };
            println!("{}", serde_json::to_string_pretty(&output)?);
        }
        OutputFormat::Text => print!("{}", render(&args, &next.problems, &planned, accepted)),
    }
    if !accepted {
        bail!("plan refused: see the errors above");
    }
    Ok(())
}

const BAR_WIDTH: f64 = 20.0;

fn bar(share: f64) -> String {
    "█".repeat((share * BAR_WIDTH).round() as usize)
}

fn weight(w: Option<u32>, change: Change) -> String {
    match (w, change) {
        (Some(w), _) => w.to_string(),
        (None, Change::Added) => "new".into(),
        (None, _) => "gone".into(),
    }
}

fn render_vip(out: &mut String, vip: &VipPlan) {
    let change = match vip.change {
        Change::Added => "added".to_string(),
        Change::Removed => "removed".to_string(),
        Change::Unchanged => "unchanged".to_string(),
        Change::Changed => format!(
            "changed; {:.1}% of flows move, {:.1}% of capacity removed",
            vip.flows_moved * 100.0,
            vip.capacity_removed * 100.0
        ),
    };
    let _ = writeln!(out, "\n{} {}: {change}", vip.name, vip.endpoint);
    let _ = writeln!(
        out,
        "  {:<16} {:>14}  {:<28} {:<28}",
        "backend", "weight", "share before", "share after"
    );
    for b in &vip.backends {
        let weights = format!(
            "{} → {}",
            weight(b.weight_before, Change::Added),
            weight(b.weight_after, Change::Removed)
        );
        let before = format!("{:>5.1}% {}", b.share_before * 100.0, bar(b.share_before));
        let after = format!("{:>5.1}% {}", b.share_after * 100.0, bar(b.share_after));
        let _ = writeln!(
            out,
            "  {:<16} {:>14}  {before:<28} {after:<28}",
            b.name, weights
        );
    }
}

fn render(args: &PlanArgs, config_problems: &[Problem], plan: &Plan, accepted: bool) -> String {
    let mut out = String::new();
    let against = args
        .against
        .as_ref()
        .map_or("nothing installed".to_string(), |p| p.display().to_string());
    let _ = writeln!(out, "plan: {} against {against}", args.file.display());
    let (size_before, size_after) = plan.table_size;
    if args.against.is_some() && size_before != size_after {
        let _ = writeln!(
            out,
            "table_size: {size_before} → {size_after}: every VIP's table is rebuilt"
        );
    }
    for vip in &plan.vips {
        render_vip(&mut out, vip);
    }
    let count = |change| plan.vips.iter().filter(|v| v.change == change).count();
    let _ = writeln!(
        out,
        "\nVIPs: {} added, {} changed, {} removed, {} unchanged",
        count(Change::Added),
        count(Change::Changed),
        count(Change::Removed),
        count(Change::Unchanged)
    );
    let problems: Vec<&Problem> = config_problems.iter().chain(&plan.problems).collect();
    if !problems.is_empty() {
        let _ = writeln!(out);
        for problem in &problems {
            let _ = writeln!(out, "{problem}");
        }
    }
    for forced in &plan.forced {
        let _ = writeln!(
            out,
            "forced: {} {} ({})",
            forced.location, forced.value, forced.code
        );
    }
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let verdict = if accepted {
        format!("verdict: accepted ({} warning(s))", problems.len() - errors)
    } else {
        format!("verdict: REFUSED ({errors} error(s))")
    };
    let _ = writeln!(out, "\n{verdict}");
    out
}
