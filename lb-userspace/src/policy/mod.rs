//! The rules a change must pass before anything is applied: validation of
//! one config, and the plan that judges a change against the config in
//! force (concentration, blast radius, guards that may not loosen
//! themselves), and what health checks may take out of a VIP before it
//! panics. Pure: configs in, findings out.

pub mod health;
pub mod plan;
pub mod quic;
pub mod refusal;
pub mod sources;
pub mod validate;

/// What the gate made of a change: the journal's `result`, and the
/// `result` label of the apply metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Live and verified.
    Applied,
    /// Refused by validation or the plan; nothing changed.
    Refused,
    /// Installing it failed; the previous state stays in force.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order metrics list them.
    pub const ALL: [Outcome; 3] = [Outcome::Applied, Outcome::Refused, Outcome::Failed];

    /// Its name in the journal and in metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}
