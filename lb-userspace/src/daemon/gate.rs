//! The one gate every change goes through, whichever door it comes by:
//! validate; plan against what is installed, judged by the guards in force;
//! build the state; stage it into the idle table bank and read it back;
//! record it durably; then make it live in one step. A refusal or a failure
//! at any step leaves the state in force untouched.

use std::path::Path;

use crate::{
    config::{BackendConfig, MacAddr},
    daemon::durable,
    daemon::records::{Record, RecordDir},
    dataplane::Dataplane,
    dataplane::state::DesiredState,
    policy::plan::{Plan, plan},
    policy::validate::{Validation, validate},
    problem::Problem,
};

/// The mode of a config file the controller writes back.
const CONFIG_MODE: u32 = 0o600;

/// The config in force: its text and its validation (tables included).
#[derive(Clone, Debug)]
pub struct InForce {
    /// The config text.
    pub text: String,
    /// Its validation.
    pub validation: Validation,
}

impl InForce {
    /// Validates `text` as the config in force.
    pub fn new(text: String) -> Self {
        let validation = validate(&text);
        Self { text, validation }
    }
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

/// Takes `text` through the gate: on success it is live and recorded.
/// With `persist`, `text` is also written durably to that config file
/// after the new tables are verified and before they go live (and the old
/// text is put back if going live fails), so a change is never reported
/// applied without being on disk. `mac_of` finds each backend's MAC.
/// Errors are failures to install, after which the previous state is
/// still the one in force.
pub fn apply(
    dataplane: &mut Dataplane,
    records: &RecordDir,
    in_force: Option<&InForce>,
    text: &str,
    force: bool,
    persist: Option<&Path>,
    mac_of: impl FnMut(&BackendConfig) -> anyhow::Result<MacAddr>,
) -> anyhow::Result<Verdict> {
    let next = InForce::new(text.to_string());
    let Some(next_side) = next.validation.side() else {
        return Ok(Verdict::Refused {
            problems: next.validation.problems.clone(),
            plan: None,
        });
    };
    let current_side = in_force.and_then(|c| c.validation.side());
    let planned = plan(current_side, next_side, force);
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
    let config = next.validation.config.as_ref().expect("valid implies read");
    let state = DesiredState::build_with(
        config,
        &next.validation.tables,
        dataplane.installed(),
        mac_of,
    )?;
    let staged = dataplane.stage(&state)?;
    let generation = dataplane.generation() + 1;
    records.write(staged.bank(), &Record::of(&state, text, generation))?;
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
