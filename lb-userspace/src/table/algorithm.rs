//! The table algorithms by name, as the config chooses them per VIP, and
//! the builder behind each name.

use crate::table::{TableBuilder, maglev::Maglev, stable::Stable};

/// The table algorithms a VIP can use: `table = "maglev"` or `"stable"`
/// in the config, per VIP or for all. Maglev is the default: an upgrade
/// must not change a running fleet's tables (hosts of one ECMP group
/// would disagree while it rolls), and it builds 2-3x faster, which
/// matters for configs of 100,000 backends; the stable table moves fewer
/// flows on every change and is the better choice for large pools (see
/// docs/design.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Weighted Maglev with exact quotas.
    #[default]
    Maglev,
    /// The stable table: Maglev's balance, fewer flows moved on a change.
    Stable,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 2] = [Algorithm::Maglev, Algorithm::Stable];

    /// Its name in the config.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Maglev => "maglev",
            Algorithm::Stable => "stable",
        }
    }

    /// The algorithm called `name` in the config.
    pub fn named(name: &str) -> Option<Algorithm> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Its builder.
    pub fn builder(self) -> &'static dyn TableBuilder {
        match self {
            Algorithm::Maglev => &Maglev,
            Algorithm::Stable => &Stable,
        }
    }
}
