//! The one gate every change goes through, whichever door it comes by:
//! validate; find the backends' MACs (a backend without one is held out of
//! the table at weight 0, and the guards judge what is left); plan against
//! what is installed, judged by the guards in force; build the state; stage
//! it into the idle table bank and read it back; record it durably; then
//! make it live in one step. A refusal or a failure at any step leaves the
//! state in force untouched.

use std::{collections::HashMap, net::IpAddr, path::Path};

use crate::{
    config::{Config, MacAddr, Reach},
    daemon::records::{Record, RecordDir},
    dataplane::Dataplane,
    dataplane::state::DesiredState,
    durable,
    net::neighbours,
    policy::health::Down,
    policy::plan::{Plan, plan},
    policy::validate::{Validation, validate_with},
    problem::Problem,
};

/// The mode of a config file the controller writes back.
const CONFIG_MODE: u32 = 0o600;

/// The MAC a held-out backend's slot carries: it is in no table, so no
/// frame is ever sent to it. Validation refuses it in a config.
pub const HELD_OUT_MAC: MacAddr = MacAddr([0; 6]);

/// The config in force: its text, the backends held out for want of a
/// MAC, and the validation of what is installed (the text with those
/// backends at weight 0; tables included).
#[derive(Clone, Debug)]
pub struct InForce {
    /// The config text, as the operator wrote it.
    pub text: String,
    /// Backends without a MAC, held at weight 0.
    pub held_out: Vec<IpAddr>,
    /// The validation of what is installed.
    pub validation: Validation,
}

impl InForce {
    /// Validates `text` as the config in force, nothing held out.
    pub fn new(text: String) -> Self {
        Self::holding_out(text, Vec::new())
    }

    /// Validates `text` with the backends at `held_out` at weight 0.
    pub fn holding_out(text: String, held_out: Vec<IpAddr>) -> Self {
        let validation = validate_with(&text, |config| config.hold_out(&held_out));
        Self {
            text,
            held_out,
            validation,
        }
    }
}

/// The settings a running controller cannot change live, that differ.
fn settings_needing_restart(current: &Config, next: &Config) -> Vec<&'static str> {
    [
        ("interface", current.interface != next.interface),
        ("api.socket", current.api.socket != next.api.socket),
        ("api.metrics", current.api.metrics != next.api.metrics),
        (
            "connection_table_size",
            current.connection_table_size != next.connection_table_size,
        ),
        ("max_backends", current.max_backends != next.max_backends),
        (
            "flow_hash_seed",
            current.flow_hash_seed != next.flow_hash_seed,
        ),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect()
}

/// Finds the MACs of the given backend addresses; the ones it cannot find
/// are missing from the answer.
pub type Resolve<'a> = &'a dyn Fn(&[(IpAddr, Reach)]) -> anyhow::Result<HashMap<IpAddr, MacAddr>>;

/// A change put to the gate.
#[derive(Clone, Copy, Debug)]
pub struct Proposal<'a> {
    /// The whole config text.
    pub text: &'a str,
    /// Override the guards (recorded).
    pub force: bool,
    /// The config file to write `text` to before it goes live, if any.
    pub persist: Option<&'a Path>,
    /// Backends health checks took down, left out of what is installed.
    pub down: &'a [Down],
}

/// What the gate decided.
#[derive(Debug)]
pub enum Verdict {
    /// Live and verified.
    Applied {
        /// The plan that was applied (its `forced` lists the overrides).
        plan: Plan,
        /// The new config in force.
        in_force: Box<InForce>,
        /// Its generation.
        generation: u64,
    },
    /// Refused; nothing changed.
    Refused {
        /// Every reason: the config's own errors and the plan's.
        problems: Vec<Problem>,
        /// The plan, when one could be made.
        plan: Option<Plan>,
    },
}

/// Warnings for outer source prefixes in use that do not route to this
/// host: routers send their ICMP errors about encapsulated packets (a
/// smaller MTU on the way to a backend, say) to the outer source, so the
/// whole prefix should be this host's (`ip route add local PREFIX dev lo`).
fn outer_sources_elsewhere(config: &Config) -> Vec<Problem> {
    let encapsulated: Vec<bool> = config
        .vips
        .iter()
        .filter(|v| v.forwarding.encapsulates())
        .flat_map(|v| v.backends.iter().map(|b| b.address.is_ipv6()))
        .collect();
    [
        ("source4", config.encapsulation.source4, false),
        ("source6", config.encapsulation.source6, true),
    ]
    .into_iter()
    .filter_map(|(key, prefix, ipv6)| Some((key, prefix?, ipv6)))
    .filter(|(_, _, ipv6)| encapsulated.contains(ipv6))
    .filter(|(_, prefix, _)| {
        ![prefix.address, prefix.last()]
            .into_iter()
            .all(|address| neighbours::is_local(address).unwrap_or(false))
    })
    .map(|(key, prefix, _)| {
        Problem::error(
            "outer-source-elsewhere",
            "encapsulation",
            key,
            prefix.to_string(),
            "this host does not own the prefix its outer source addresses come from, so \
             routers' ICMP errors about encapsulated packets go astray; route it here \
             (`ip route add local PREFIX dev lo`)",
        )
        .warning()
    })
    .collect()
}

/// Takes `text` through the gate: on success it is live and recorded.
/// With `persist`, `text` is also written durably to that config file
/// after the new tables are verified and before they go live (and the old
/// text is put back if going live fails), so a change is never reported
/// applied without being on disk. `resolve` finds the MACs the config
/// does not give. Errors are failures to install, after which the previous
/// state is still the one in force.
pub fn apply(
    dataplane: &mut Dataplane,
    records: &RecordDir,
    in_force: Option<&InForce>,
    proposal: &Proposal<'_>,
    resolve: Resolve<'_>,
) -> anyhow::Result<Verdict> {
    let Proposal {
        text,
        force,
        persist,
        down,
    } = *proposal;
    let written = InForce::new(text.to_string());
    let Some(config) = written
        .validation
        .config
        .as_ref()
        .filter(|_| written.validation.is_valid())
    else {
        return Ok(Verdict::Refused {
            problems: written.validation.errors(),
            plan: None,
        });
    };
    if let Some(current) = in_force.and_then(|c| c.validation.config.as_ref()) {
        let changed = settings_needing_restart(current, config);
        if !changed.is_empty() {
            let problems = changed
                .into_iter()
                .map(|field| {
                    Problem::error(
                        "needs-restart",
                        "config",
                        field,
                        "",
                        "the running data plane was set up with the old value; change it \
                         with a restart (`fulcrum detach`, then `fulcrum run`), not a live apply",
                    )
                })
                .collect();
            return Ok(Verdict::Refused {
                problems,
                plan: None,
            });
        }
    }
    let wanted = config.unresolved_addresses();
    let macs = if wanted.is_empty() {
        HashMap::new()
    } else {
        resolve(&wanted)?
    };
    let held_out: Vec<IpAddr> = wanted
        .into_iter()
        .map(|(address, _)| address)
        .filter(|a| !macs.contains_key(a))
        .collect();
    let next = if held_out.is_empty() {
        written
    } else {
        InForce::holding_out(text.to_string(), held_out.clone())
    };
    let next_side = next.validation.side().expect("read above");
    let current_side = in_force.and_then(|c| c.validation.side());
    let mut planned = plan(current_side, next_side, force);
    for address in &held_out {
        planned.problems.push(
            Problem::error(
                "no-mac",
                "backend",
                "address",
                address.to_string(),
                "no MAC for it in the neighbour table (its own, for L2 DSR on the segment; \
                 its next hop's through the attached interface, for encapsulation): held out \
                 of the tables (weight 0) until it resolves; the guards judged the others",
            )
            .warning(),
        );
    }
    if let Some(config) = &next.validation.config {
        planned.problems.extend(outer_sources_elsewhere(config));
    }
    if !next.validation.is_valid() || !planned.accepted() {
        let problems = next
            .validation
            .errors()
            .into_iter()
            .chain(planned.problems.iter().filter(|p| p.is_error()).cloned())
            .collect();
        return Ok(Verdict::Refused {
            problems,
            plan: Some(planned),
        });
    }
    // The plan judged the operator's config; what is installed also leaves
    // out the backends health checks took down (their VIPs' tables are
    // built again without them).
    let judged = next.validation.config.as_ref().expect("valid implies read");
    let (config, tables);
    let (config, tables) = if down.is_empty() {
        (judged, &next.validation.tables)
    } else {
        let mut taken = judged.clone();
        taken.take_down(down);
        tables = taken
            .vips
            .iter()
            .zip(&next.validation.tables)
            .map(|(vip, table)| {
                let endpoint = vip.endpoint();
                table
                    .clone()
                    .filter(|_| !down.iter().any(|(e, _)| *e == endpoint))
            })
            .collect::<Vec<_>>();
        config = taken;
        (&config, &tables)
    };
    let mut state = DesiredState::build_with(config, tables, dataplane.installed(), |backend| {
        Ok(backend
            .mac
            .or_else(|| macs.get(&backend.address).copied())
            .unwrap_or(HELD_OUT_MAC))
    })?;
    state.mark_down(down);
    let staged = dataplane.stage(&state)?;
    let generation = dataplane.generation() + 1;
    records.write(
        staged.bank(),
        &Record::of(&state, text, &held_out, generation),
    )?;
    if let Some(path) = persist {
        durable::write(path, text.as_bytes(), CONFIG_MODE)?;
    }
    if let Err(e) = dataplane.commit(staged) {
        if let (Some(path), Some(old)) = (persist, in_force) {
            durable::write(path, old.text.as_bytes(), CONFIG_MODE)?;
        }
        return Err(e.into());
    }
    Ok(Verdict::Applied {
        plan: planned,
        in_force: Box::new(next),
        generation,
    })
}
