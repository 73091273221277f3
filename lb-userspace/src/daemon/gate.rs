//! The one gate every change goes through, whichever door it comes by:
//! validate; find the backends' MACs (a backend without one is held out of
//! the table at weight 0, and the guards judge what is left); plan against
//! what is installed, judged by the guards in force; build the state; stage
//! it into the idle table bank and read it back; record it durably; then
//! make it live in one step. A refusal or a failure at any step leaves the
//! state in force untouched.

use std::{collections::HashMap, fmt, net::IpAddr, path::Path};

use crate::{
    config::{Config, MacAddr, Reach},
    daemon::{
        desk::LeftOut,
        records::{Record, RecordDir},
    },
    dataplane::{Dataplane, Staged, state::DesiredState},
    durable,
    net::{
        self,
        neighbours::{self, Netlink},
    },
    policy::health::Down,
    policy::plan::{Plan, Side, plan},
    policy::refusal::Clients,
    policy::validate::{ValidConfig, Validation, validate, validate_with},
    problem::Problem,
    table::VipTable,
};

/// The mode of a config file the controller writes back.
const CONFIG_MODE: u32 = 0o600;

/// The MAC a held-out backend's slot carries: it is in no table, so no
/// frame is ever sent to it. Validation refuses it in a config.
pub const HELD_OUT_MAC: MacAddr = MacAddr([0; 6]);

/// What the gate needs of the data plane: what is installed, and a change
/// made live in steps, so that a failure at any step leaves the state in
/// force. The kernel's `Dataplane` is one; host tests use one in memory.
pub trait Install {
    /// A state written where packets do not see it yet.
    type Staged;
    /// The state in force, if any.
    fn installed(&self) -> Option<&DesiredState>;
    /// Changes made live so far.
    fn generation(&self) -> u64;
    /// Writes `state` into the table bank not in use.
    fn stage(&mut self, state: &DesiredState) -> anyhow::Result<Self::Staged>;
    /// Fails unless the kernel holds what `stage` wrote.
    fn verify(&self, staged: &Self::Staged) -> anyhow::Result<()>;
    /// The table bank a staged state was written into.
    fn bank(staged: &Self::Staged) -> u32;
    /// Makes a staged state live in one step.
    fn commit(&mut self, staged: Self::Staged) -> anyhow::Result<()>;
}

impl Install for Dataplane {
    type Staged = Staged;

    fn installed(&self) -> Option<&DesiredState> {
        Dataplane::installed(self)
    }

    fn generation(&self) -> u64 {
        Dataplane::generation(self)
    }

    fn stage(&mut self, state: &DesiredState) -> anyhow::Result<Staged> {
        Ok(Dataplane::stage(self, state)?)
    }

    fn verify(&self, staged: &Staged) -> anyhow::Result<()> {
        Ok(Dataplane::verify(self, staged)?)
    }

    fn bank(staged: &Staged) -> u32 {
        staged.bank()
    }

    fn commit(&mut self, staged: Staged) -> anyhow::Result<()> {
        Ok(Dataplane::commit(self, staged)?)
    }
}

/// What the gate needs of the host's network: the MACs backends are
/// reached at, and which addresses are this host's.
pub trait Neighbourhood {
    /// The MACs of the backends in `wanted`; the ones not found are
    /// missing from the answer.
    fn macs(&self, wanted: &[(IpAddr, Reach)]) -> anyhow::Result<HashMap<IpAddr, MacAddr>>;
    /// Whether packets to `address` are delivered to this host (no, when
    /// the kernel cannot say).
    fn is_local(&self, address: IpAddr) -> bool;
}

/// The kernel's neighbour and route tables, through the interface the
/// data plane serves, over one netlink socket kept open.
pub struct HostNetwork {
    interface: String,
    netlink: Netlink,
}

impl HostNetwork {
    /// The network through `interface`, its netlink socket driven by
    /// `runtime`.
    pub fn open(interface: &str, runtime: &tokio::runtime::Handle) -> anyhow::Result<Self> {
        Ok(Self {
            interface: interface.to_string(),
            netlink: Netlink::open(runtime)?,
        })
    }

    /// The interface the data plane serves.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The MACs of `wanted` the kernel knows now, without probing.
    pub fn known(&self, wanted: &[(IpAddr, Reach)]) -> anyhow::Result<HashMap<IpAddr, MacAddr>> {
        Ok(self
            .netlink
            .lookup(wanted, net::ifindex(&self.interface)?)?)
    }
}

impl Neighbourhood for HostNetwork {
    fn macs(&self, wanted: &[(IpAddr, Reach)]) -> anyhow::Result<HashMap<IpAddr, MacAddr>> {
        let ifindex = net::ifindex(&self.interface)?;
        Ok(self
            .netlink
            .resolve(wanted, ifindex, neighbours::RESOLVE_TIMEOUT)?)
    }

    fn is_local(&self, address: IpAddr) -> bool {
        self.netlink.is_local(address)
    }
}

/// The config in force: its text, the backends held out for want of a
/// MAC, and what is installed (the text read with those backends at
/// weight 0, and the tables built from it).
#[derive(Clone, Debug)]
pub struct InForce {
    /// The config text, as the operator wrote it.
    pub text: String,
    /// Backends without a MAC, held at weight 0.
    pub held_out: Vec<IpAddr>,
    config: Config,
    tables: Vec<Option<VipTable>>,
}

impl InForce {
    /// What the gate made live.
    fn applied(text: String, held_out: Vec<IpAddr>, valid: ValidConfig) -> Self {
        Self {
            text,
            held_out,
            config: valid.config().clone(),
            tables: valid.tables().to_vec(),
        }
    }

    /// The config a running data plane was installed from, read again
    /// with the backends at `held_out` at weight 0. It is in force even
    /// where this build's rules would refuse it (an older build judged
    /// it); only a config that cannot be read at all is an error.
    pub fn installed(text: String, held_out: Vec<IpAddr>) -> Result<Self, Vec<Problem>> {
        let validation = validate_with(&text, |config| config.hold_out(&held_out));
        let Validation {
            config: Some(config),
            tables,
            ..
        } = validation
        else {
            return Err(validation.problems);
        };
        Ok(Self {
            text,
            held_out,
            config,
            tables,
        })
    }

    /// The config as installed.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current side of a plan.
    pub fn side(&self) -> Side<'_> {
        Side {
            config: &self.config,
            tables: &self.tables,
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
    /// Backends left out of what is installed: taken down by health
    /// checks, ejected as outliers.
    pub left_out: LeftOut<'a>,
    /// The clients the data plane saw, to judge a change of source rules
    /// or limits by (none: it is judged on the rules alone).
    pub clients: Option<&'a Clients>,
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

/// The step of an install that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Finding the backends' MACs.
    Resolve,
    /// Building the state to install.
    Build,
    /// Writing it into the idle table bank.
    Stage,
    /// Reading it back.
    Verify,
    /// Recording it durably.
    Record,
    /// Writing the config file.
    Persist,
    /// Making it live.
    Commit,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Resolve => "resolving MACs",
            Step::Build => "building the state",
            Step::Stage => "staging the tables",
            Step::Verify => "verifying the staged tables",
            Step::Record => "recording the state",
            Step::Persist => "writing the config file",
            Step::Commit => "making the state live",
        })
    }
}

/// An install that failed: the previous state stays in force (and a config
/// file written for it holds the previous text again).
#[derive(Debug, thiserror::Error)]
#[error("{step}: {error:#}")]
pub struct Failure {
    /// Where it failed.
    pub step: Step,
    /// Why.
    pub error: anyhow::Error,
}

/// Tags a step's error with the step.
fn at<E: Into<anyhow::Error>>(step: Step) -> impl FnOnce(E) -> Failure {
    move |error| Failure {
        step,
        error: error.into(),
    }
}

/// Warnings for outer source prefixes in use that do not route to this
/// host: routers send their ICMP errors about encapsulated packets (a
/// smaller MTU on the way to a backend, say) to the outer source, so the
/// whole prefix should be this host's (`ip route add local PREFIX dev lo`).
fn outer_sources_elsewhere(config: &Config, network: &dyn Neighbourhood) -> Vec<Problem> {
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
            .all(|address| network.is_local(address))
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
/// applied without being on disk. `network` finds the MACs the config
/// does not give. A failure is a failure to install, after which the
/// previous state is still the one in force.
pub fn apply<D: Install>(
    dataplane: &mut D,
    records: &RecordDir,
    in_force: Option<&InForce>,
    proposal: &Proposal<'_>,
    network: &dyn Neighbourhood,
) -> Result<Verdict, Failure> {
    let Proposal {
        text,
        force,
        persist,
        left_out,
        clients,
    } = *proposal;
    let written = match validate(text).valid() {
        Ok(valid) => valid,
        Err(invalid) => {
            return Ok(Verdict::Refused {
                problems: invalid.errors(),
                plan: None,
            });
        }
    };
    if let Some(current) = in_force {
        let changed = settings_needing_restart(current.config(), written.config());
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
    let wanted = written.config().unresolved_addresses();
    let macs = if wanted.is_empty() {
        HashMap::new()
    } else {
        network.macs(&wanted).map_err(at(Step::Resolve))?
    };
    let held_out: Vec<IpAddr> = wanted
        .into_iter()
        .map(|(address, _)| address)
        .filter(|a| !macs.contains_key(a))
        .collect();
    // Held-out backends are judged at weight 0: the guards may refuse
    // what is left.
    let next = if held_out.is_empty() {
        Ok(written)
    } else {
        validate_with(text, |config| config.hold_out(&held_out)).valid()
    };
    let next_side = match &next {
        Ok(valid) => Some(valid.side()),
        Err(invalid) => invalid.side(),
    };
    let Some(next_side) = next_side else {
        return Ok(Verdict::Refused {
            problems: next
                .err()
                .map(|invalid| invalid.errors())
                .unwrap_or_default(),
            plan: None,
        });
    };
    let mut planned = plan(in_force.map(InForce::side), next_side, force, clients);
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
    planned
        .problems
        .extend(outer_sources_elsewhere(next_side.config, network));
    let next = match next {
        Ok(valid) if planned.accepted() => valid,
        next => {
            let problems = next
                .err()
                .map(|invalid| invalid.errors())
                .unwrap_or_default()
                .into_iter()
                .chain(planned.problems.iter().filter(|p| p.is_error()).cloned())
                .collect();
            return Ok(Verdict::Refused {
                problems,
                plan: Some(planned),
            });
        }
    };
    // The plan judged the operator's config; what is installed also leaves
    // out the backends health checks took down and the outliers ejected,
    // and weighs ramping backends at their fraction (their VIPs' tables
    // are built again).
    let taken;
    let out: Vec<Down> = left_out
        .down
        .iter()
        .chain(left_out.ejected)
        .cloned()
        .collect();
    let rebuilt: Vec<&str> = out
        .iter()
        .chain(left_out.ramped.iter().map(|(d, _)| d))
        .map(|(endpoint, _)| endpoint.as_str())
        .collect();
    let (config, tables) = if rebuilt.is_empty() {
        (next.config(), next.tables())
    } else {
        let mut config = next.config().clone();
        config.take_down(&out);
        config.ramp(left_out.ramped);
        let tables: Vec<Option<VipTable>> = config
            .vips
            .iter()
            .zip(next.tables())
            .map(|(vip, table)| {
                let endpoint = vip.endpoint();
                table
                    .clone()
                    .filter(|_| !rebuilt.contains(&endpoint.as_str()))
            })
            .collect();
        taken = (config, tables);
        (&taken.0, &taken.1[..])
    };
    let mut state = DesiredState::build_with(config, tables, dataplane.installed(), |backend| {
        Ok(backend
            .mac
            .or_else(|| macs.get(&backend.address).copied())
            .unwrap_or(HELD_OUT_MAC))
    })
    .map_err(at(Step::Build))?;
    // Only a dead backend's slot goes inactive: an ejected one keeps its
    // established flows, as a drained one does.
    state.mark_down(left_out.down);
    let staged = dataplane.stage(&state).map_err(at(Step::Stage))?;
    dataplane.verify(&staged).map_err(at(Step::Verify))?;
    let generation = dataplane.generation() + 1;
    records
        .write(
            D::bank(&staged),
            &Record::of(&state, text, (&held_out, &left_out), generation),
        )
        .map_err(at(Step::Record))?;
    if let Some(path) = persist {
        durable::write(path, text.as_bytes(), CONFIG_MODE).map_err(at(Step::Persist))?;
    }
    if let Err(error) = dataplane.commit(staged) {
        if let (Some(path), Some(old)) = (persist, in_force) {
            durable::write(path, old.text.as_bytes(), CONFIG_MODE).map_err(at(Step::Persist))?;
        }
        return Err(at(Step::Commit)(error));
    }
    Ok(Verdict::Applied {
        plan: planned,
        in_force: Box::new(InForce::applied(text.to_string(), held_out, next)),
        generation,
    })
}
