//! `fulcrum plan FILE [--against CURRENT]`: what applying FILE would do,
//! per VIP: each backend's share before and after (numbers and a bar), the
//! flows that move, the capacity taken away, and every warning and guard
//! verdict. Without `--against` it plans against what the running daemon
//! has installed: the daemon on FILE's `[api] socket`, or `--socket`. Exit
//! status 0 only when the plan could be applied.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::bail;
use clap::Args;

use super::{OutputFormat, client::Connection, load_config};
use crate::{
    config::join_problems,
    daemon::wire::{self, ApplyRequest, PlanAnswer},
    policy::plan::{Change, Plan, VipPlan, plan},
    policy::validate::Validation,
    problem::{Problem, escaped},
};

/// Arguments of `fulcrum plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The config to apply (TOML).
    pub file: PathBuf,
    /// The config in force now; without it, what the running daemon has
    /// installed.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// Plan a first install: nothing installed, no daemon asked.
    #[arg(long, conflicts_with = "against")]
    pub from_nothing: bool,
    /// Override the blast-radius guards and accept loosened guards (each
    /// override is recorded).
    #[arg(long)]
    pub force: bool,
    /// Show every VIP; without it, the unchanged ones are one line.
    #[arg(long)]
    pub all: bool,
    /// The daemon (without `--against` or `--from-nothing`), and the output
    /// format.
    /// How to reach the daemon and print its answer.
    #[command(flatten)]
    pub connection: Connection,
}

/// Why no plan can be made, if none can.
fn unplannable(args: &PlanArgs, next: &Validation, current: Option<&Validation>) -> Option<String> {
    // A current config with errors may have lost VIPs while being read; a
    // plan against it could wave through a change it should refuse.
    if let Some(current) = current
        && !current.is_valid()
    {
        let name = args
            .against
            .as_ref()
            .map_or("installed".to_string(), |p| p.display().to_string());
        return Some(format!(
            "the current config {name} is not valid, so no safe plan can be made against it: {}",
            join_problems(&current.errors())
        ));
    }
    if next.config.is_none() {
        return Some(format!(
            "{} cannot be read: {}",
            args.file.display(),
            join_problems(&next.problems)
        ));
    }
    None
}

/// The plan of the daemon `next` is for (its `[api] socket`, unless
/// `--socket` names another): against what it has installed, with the
/// backends it found dead and, for a change of source rules or limits,
/// the clients its data plane sees.
fn daemon_plan(args: &PlanArgs, next: &Validation) -> anyhow::Result<PlanAnswer> {
    let connection = match &next.config {
        Some(config) => args.connection.unless_given(config.api.socket.clone()),
        None => args.connection.clone(),
    };
    let text = crate::config::read_file(&args.file)
        .map_err(|why| anyhow::anyhow!("{}", why.problem(args.file.display().to_string())))?;
    let request = ApplyRequest {
        config: text,
        force: args.force,
        if_generation: None,
        watch_s: None,
    };
    let answer = connection.call(wire::PLAN, Some(&request))?;
    answer
        .read::<PlanAnswer>()
        .map_err(|_| anyhow::anyhow!("the daemon gave no plan: {}", answer.reason()))
}

/// Computes and prints the plan: with `--format json`, one document
/// whatever the outcome, a daemon that does not answer included.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    // FILE first: one that cannot be read is the error, and no daemon is
    // asked about it.
    let next = load_config(&args.file);
    let (current, unreachable, from_daemon) = match &args.against {
        Some(path) => (Some(load_config(path)), None, None),
        None if args.from_nothing || next.config.is_none() => (None, None, None),
        None => match daemon_plan(&args, &next) {
            Ok(answer) => (None, None, Some(answer)),
            Err(e) => (None, Some(format!("{e:#}")), None),
        },
    };
    let generation = from_daemon.as_ref().and_then(|answer| answer.generation);
    let error = unreachable
        .or_else(|| from_daemon.as_ref().and_then(|answer| answer.error.clone()))
        .or_else(|| unplannable(&args, &next, current.as_ref()));
    let planned = match (&error, &from_daemon, next.side()) {
        (None, Some(answer), _) => answer.plan.clone(),
        (None, None, Some(next_side)) => Some(plan(
            current.as_ref().and_then(Validation::side),
            next_side,
            args.force,
            None,
        )),
        _ => None,
    };
    let accepted = next.is_valid() && planned.as_ref().is_some_and(Plan::accepted);
    match args.connection.format {
        OutputFormat::Json => {
            let output = PlanAnswer {
                accepted,
                error: error.clone(),
                config_problems: next.problems.clone(),
                current_problems: current.map(|c| c.problems).unwrap_or_else(|| {
                    from_daemon
                        .map(|answer| answer.current_problems)
                        .unwrap_or_default()
                }),
                generation,
                plan: planned.clone(),
            };
            println!("{}", serde_json::to_string_pretty(&output)?);
        }
        OutputFormat::Text => {
            if let Some(planned) = &planned {
                print!(
                    "{}",
                    render(&args, generation, &next.problems, planned, accepted)
                );
            }
        }
    }
    if let Some(error) = error {
        bail!(error);
    }
    if !accepted {
        match args.connection.format {
            OutputFormat::Text => bail!("plan refused: see the errors above"),
            OutputFormat::Json => bail!("plan refused: see `problems` in the JSON"),
        }
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
    let health = match (vip.panic, vip.failures_to_panic) {
        (true, _) => "; PANIC with the backends down now (all kept)".to_string(),
        (false, Some(n)) => format!("; {n} more failures to panic"),
        (false, None) => String::new(),
    };
    let table = match vip.table {
        (before, after) if before == after => after.name().to_string(),
        (before, after) => format!("{} → {}", before.name(), after.name()),
    };
    let name = if vip.name == vip.endpoint {
        vip.endpoint.clone()
    } else {
        format!("{} {}", escaped(&vip.name), vip.endpoint)
    };
    let _ = writeln!(out, "\n{name} (table: {table}): {change}{health}");
    if let Some(refused) = &vip.refused {
        let _ = writeln!(
            out,
            "  source rules and limits: refuse {} of {} active flows, and {} of the {} flows \
             opened in the last {} s ({} by the rules, {} by the caps)",
            refused.active_flows,
            refused.active_total,
            refused.new_flows,
            refused.new_total,
            refused.window_s,
            refused.by_rules,
            refused.new_flows - refused.by_rules
        );
    }
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
        let server_id = match (&b.server_id_before, &b.server_id_after) {
            (Some(old), Some(new)) if old != new => format!("  server ID {old} → {new}"),
            (_, Some(id)) | (Some(id), None) => format!("  server ID {id}"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:<16} {:>14}  {before:<28} {after:<28}{server_id}",
            escaped(&b.name),
            weights
        );
    }
}

/// The text plan; `generation` is the daemon's the plan was made
/// against.
fn render(
    args: &PlanArgs,
    generation: Option<u64>,
    config_problems: &[Problem],
    plan: &Plan,
    accepted: bool,
) -> String {
    let mut out = String::new();
    let against = match (&args.against, generation) {
        (Some(path), _) => path.display().to_string(),
        (None, _) if args.from_nothing => {
            "nothing installed (the config's own guards apply)".into()
        }
        (None, Some(generation)) => {
            format!("what the daemon has installed, generation {generation}")
        }
        (None, None) => "what the daemon has installed".into(),
    };
    let _ = writeln!(out, "plan: {} against {against}", args.file.display());
    let (size_before, size_after) = plan.table_size;
    if !plan.first_install && size_before != size_after {
        let _ = writeln!(
            out,
            "table_size: {size_before} → {size_after}: every VIP's table is rebuilt"
        );
    }
    for vip in &plan.vips {
        if args.all || vip.change != Change::Unchanged {
            render_vip(&mut out, vip);
        }
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
    if !args.all && count(Change::Unchanged) > 0 {
        let _ = writeln!(out, "(unchanged VIPs are not shown; --all shows them)");
    }
    let problems: Vec<&Problem> = config_problems.iter().chain(&plan.problems).collect();
    if !problems.is_empty() {
        let _ = writeln!(out);
        for problem in &problems {
            let _ = writeln!(out, "{problem}");
        }
    }
    for forced in &plan.forced {
        let what = if forced.field.is_empty() {
            forced.value.clone()
        } else {
            format!("{} {}", forced.field, forced.value)
        };
        let _ = writeln!(out, "forced: {}: {what} ({})", forced.location, forced.code);
    }
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let verdict = if accepted {
        format!("verdict: accepted ({} warning(s))", problems.len() - errors)
    } else {
        format!("verdict: REFUSED ({errors} error(s))")
    };
    let _ = writeln!(out, "\n{verdict}");
    if let (true, Some(generation)) = (accepted, generation) {
        let _ = writeln!(
            out,
            "apply exactly this plan with `fulcrum apply {} --if-generation {generation}`",
            args.file.display()
        );
    }
    out
}
