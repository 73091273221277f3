//! The change desk: the config in force, the data plane that holds it, and
//! the one way to change them. A change by any door is checked against
//! the generation its caller planned on and against the file it would be
//! written back to, taken through the gate, and journalled; what the
//! daemon then tells the operator, the monitor and the announcer is its
//! own business. Generic over the data plane, so all of it runs on any
//! host in tests.

use std::path::{Path, PathBuf};

use crate::{
    daemon::{
        gate::{self, Failure, InForce, Install, Neighbourhood, Proposal, Verdict},
        journal::{Entry, Journal},
        records::RecordDir,
    },
    monitor::unix_now,
    policy::{
        Outcome,
        health::Down,
        plan::{Change, Plan},
        refusal::Clients,
    },
    problem::Problem,
};

/// What a reconciliation (health checks, outliers) asks the gate to
/// install: the same config, with other backends left out.
#[derive(Clone, Debug, PartialEq)]
pub struct TableChange {
    /// For the journal: per VIP, what changed and why.
    pub details: Vec<String>,
    /// The endpoints of the VIPs whose tables change.
    pub vips: Vec<String>,
}

/// The backends left out of what is installed (or partly out, while they
/// ramp up), beside what the operator's config says.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeftOut<'a> {
    /// Found dead by health checks: out of the tables, their slots
    /// inactive (their flows move).
    pub down: &'a [Down],
    /// Ejected as outliers: out of the tables for new flows, their
    /// established flows kept.
    pub ejected: &'a [Down],
    /// Ramping up after they joined their table (slow start): each with
    /// the fraction of its weight it takes now.
    pub ramped: &'a [Ramped],
}

/// A backend ramping up: its VIP's endpoint and identity, and the
/// fraction of its weight it takes now.
pub type Ramped = (Down, f64);

/// Which door a change came by.
#[derive(Clone, Debug)]
pub enum Door {
    /// The API, with the caller's uid and the verb.
    Api(Option<u32>, String),
    /// SIGHUP: the file re-read.
    Sighup,
    /// The config file changed on disk.
    FileChanged,
    /// Start-up, for a file that changed while no controller ran.
    Start,
    /// The neighbour table: a backend's MAC appeared or changed.
    Neighbours,
    /// Health checks: backends went down or came back.
    Health(TableChange),
    /// The outlier detector: backends ejected, or back after their
    /// ejection.
    Outlier(TableChange),
    /// Slow start: ramping backends take a larger part of their weight.
    SlowStart(TableChange),
    /// A watched change made things worse: the config before it, back
    /// (written back to the file, like an API change).
    Rollback(TableChange),
}

impl Door {
    /// Its name in the journal and the log.
    pub fn name(&self) -> String {
        match self {
            Door::Api(_, verb) => format!("api {verb}"),
            Door::Sighup => "sighup".into(),
            Door::FileChanged => "file".into(),
            Door::Start => "start".into(),
            Door::Neighbours => "neighbours".into(),
            Door::Health(_) => "health".into(),
            Door::Outlier(_) => "outlier".into(),
            Door::SlowStart(_) => "slow-start".into(),
            Door::Rollback(_) => "rollback".into(),
        }
    }

    /// What the door itself says changed: health and outlier changes per
    /// VIP.
    pub fn details(&self) -> (&[String], &[String]) {
        match self {
            Door::Health(change)
            | Door::Outlier(change)
            | Door::SlowStart(change)
            | Door::Rollback(change) => (&change.details, &change.vips),
            _ => (&[], &[]),
        }
    }

    fn uid(&self) -> Option<u32> {
        match self {
            Door::Api(uid, _) => *uid,
            _ => None,
        }
    }
}

/// A change put to the desk.
#[derive(Clone, Debug)]
pub struct Request {
    /// The whole config text.
    pub text: String,
    /// Override the guards (recorded).
    pub force: bool,
    /// Refuse unless this is the generation in force.
    pub if_generation: Option<u64>,
    /// Which door it came by.
    pub door: Door,
    /// The clients the data plane saw, when the change touches source
    /// rules or limits.
    pub clients: Option<Clients>,
}

/// What came of a change.
#[derive(Debug)]
pub enum Decision {
    /// The caller planned against another generation; nothing changed.
    Stale {
        /// The generation in force.
        generation: u64,
        /// The one the caller expected.
        expected: u64,
    },
    /// The text is the config in force already; nothing changed.
    Unchanged {
        /// The generation in force.
        generation: u64,
    },
    /// The config file holds an edit that is not in force, which writing
    /// the change back would overwrite; nothing changed.
    FileDiffers(PathBuf),
    /// The config file could not be read; nothing changed.
    FileUnreadable(String),
    /// Live and verified (and journalled).
    Applied {
        /// The plan applied.
        plan: Plan,
        /// The new generation.
        generation: u64,
    },
    /// Refused by validation or the plan (and journalled).
    Refused {
        /// Every reason.
        problems: Vec<Problem>,
        /// The plan, when one could be made.
        plan: Option<Plan>,
        /// The generation in force.
        generation: u64,
    },
    /// Installing failed; the previous state stays in force (journalled).
    Failed {
        /// What failed.
        failure: Failure,
        /// The generation in force.
        generation: u64,
    },
}

impl Decision {
    /// What the gate made of it, when the gate judged it.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Decision::Applied { .. } => Some(Outcome::Applied),
            Decision::Refused { .. } => Some(Outcome::Refused),
            Decision::Failed { .. } => Some(Outcome::Failed),
            Decision::Stale { .. }
            | Decision::Unchanged { .. }
            | Decision::FileDiffers(_)
            | Decision::FileUnreadable(_) => None,
        }
    }
}

/// The config in force and the data plane that holds it.
pub struct Desk<D> {
    /// The data plane.
    pub dataplane: D,
    records: RecordDir,
    in_force: InForce,
    config_path: PathBuf,
    journal: Journal,
}

fn lines(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

/// Per changed VIP: `name endpoint: change, flows moved, capacity removed`.
fn summary(plan: &Plan) -> Vec<String> {
    plan.vips
        .iter()
        .filter(|v| v.change != Change::Unchanged)
        .map(|v| {
            format!(
                "{} {}: {}, {:.1}% of flows move, {:.1}% of capacity removed",
                v.name,
                v.endpoint,
                v.change.name(),
                v.flows_moved * 100.0,
                v.capacity_removed * 100.0
            )
        })
        .collect()
}

/// The endpoints of the VIPs a plan changes.
pub fn changed_vips(plan: &Plan) -> Vec<String> {
    plan.vips
        .iter()
        .filter(|v| v.change != Change::Unchanged)
        .map(|v| v.endpoint.clone())
        .collect()
}

impl<D: Install> Desk<D> {
    /// A desk for `dataplane`, which holds `in_force`; API changes are
    /// written back to `config_path`.
    pub fn new(
        dataplane: D,
        records: RecordDir,
        in_force: InForce,
        (config_path, journal): (&Path, Journal),
    ) -> Self {
        Self {
            dataplane,
            records,
            in_force,
            config_path: config_path.to_path_buf(),
            journal,
        }
    }

    /// The config in force.
    pub fn in_force(&self) -> &InForce {
        &self.in_force
    }

    /// The config file the controller runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The installed records.
    pub fn records(&self) -> &RecordDir {
        &self.records
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Takes a change through the gate, leaving out the backends in
    /// `left_out`. An API change is written back to the config file (durably)
    /// before it goes live, and refused when the file holds an edit not in
    /// force. The text in force is taken again only by the doors that
    /// change what is installed without changing the text (neighbours,
    /// health, outliers).
    pub fn change(
        &mut self,
        request: Request,
        left_out: LeftOut<'_>,
        network: &dyn Neighbourhood,
    ) -> Decision {
        let Request {
            text,
            force,
            if_generation,
            door,
            clients,
        } = request;
        let generation = self.dataplane.generation();
        if let Some(expected) = if_generation
            && expected != generation
        {
            return Decision::Stale {
                generation,
                expected,
            };
        }
        let reconciles = matches!(
            door,
            Door::Neighbours | Door::Health(_) | Door::Outlier(_) | Door::SlowStart(_)
        );
        if text == self.in_force.text && !reconciles {
            return Decision::Unchanged { generation };
        }
        let persist =
            matches!(door, Door::Api(..) | Door::Rollback(_)).then_some(self.config_path.as_path());
        if persist.is_some() {
            // An edit of the file that is not in force (refused, or not seen
            // yet) would be overwritten by the write-back: refuse instead.
            match crate::config::read_file(&self.config_path) {
                // Writing back what is on disk overwrites nothing.
                Ok(on_disk) if on_disk == self.in_force.text || on_disk == text => {}
                Ok(_) => return Decision::FileDiffers(self.config_path.clone()),
                Err(e) => {
                    return Decision::FileUnreadable(format!(
                        "reading {}: {e}",
                        self.config_path.display()
                    ));
                }
            }
        }
        let proposal = Proposal {
            text: &text,
            force,
            persist,
            left_out,
            clients: clients.as_ref(),
        };
        let verdict = gate::apply(
            &mut self.dataplane,
            &self.records,
            Some(&self.in_force),
            &proposal,
            network,
        );
        let decision = match verdict {
            Ok(Verdict::Applied {
                plan,
                in_force,
                generation,
            }) => {
                self.in_force = *in_force;
                Decision::Applied { plan, generation }
            }
            Ok(Verdict::Refused { problems, plan }) => Decision::Refused {
                problems,
                plan,
                generation,
            },
            Err(failure) => Decision::Failed {
                failure,
                generation,
            },
        };
        self.journal_decision(&door, &decision);
        decision
    }

    /// The first install of a fresh start, which `plan` described.
    pub fn started(&self, plan: &Plan) {
        self.journal_entry(&Door::Start, Outcome::Applied, Some(plan), Vec::new());
    }

    fn journal_decision(&self, door: &Door, decision: &Decision) {
        let (outcome, plan, reasons) = match decision {
            Decision::Applied { plan, .. } => (Outcome::Applied, Some(plan), Vec::new()),
            Decision::Refused { problems, plan, .. } => {
                (Outcome::Refused, plan.as_ref(), lines(problems))
            }
            Decision::Failed { failure, .. } => (
                Outcome::Failed,
                None,
                vec![format!("{failure}; the previous state stays in force")],
            ),
            _ => return,
        };
        self.journal_entry(door, outcome, plan, reasons);
    }

    /// Appends one journal line for a decision of the gate (a failure to
    /// write it is logged, never fatal).
    fn journal_entry(
        &self,
        door: &Door,
        result: Outcome,
        plan: Option<&Plan>,
        reasons: Vec<String>,
    ) {
        let (details, vips) = door.details();
        let entry = Entry {
            time: unix_now(),
            uid: door.uid(),
            source: door.name(),
            generation: self.dataplane.generation(),
            result,
            plan: plan
                .map(summary)
                .unwrap_or_default()
                .into_iter()
                .chain(details.iter().cloned())
                .collect(),
            changed: match result {
                Outcome::Applied => plan
                    .map(changed_vips)
                    .unwrap_or_default()
                    .into_iter()
                    .chain(vips.iter().cloned())
                    .collect(),
                Outcome::Refused | Outcome::Failed => Vec::new(),
            },
            forced: plan.map(|p| lines(&p.forced)).unwrap_or_default(),
            reasons,
        };
        if let Err(e) = self.journal.append(&entry) {
            crate::note!("the journal: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests;
