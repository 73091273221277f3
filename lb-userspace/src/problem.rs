//! A problem found in a config or a plan: where (VIP, backend), which
//! field, the value, why, and how bad. Validation collects all of them in
//! one pass instead of stopping at the first.

use std::fmt;

use serde::Serialize;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; does not block.
    Warning,
    /// Blocks validation and apply.
    Error,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// A stable machine-readable name, e.g. `duplicate-backend`.
    pub code: &'static str,
    /// Where: `config`, `vip "web"`, `vip "web" backend "b1"`, ...
    pub location: String,
    /// The field, e.g. `weight`; empty when the whole entry is at fault.
    pub field: String,
    /// The offending value as written (or computed), possibly empty.
    pub value: String,
    /// Why it is a problem, for a person.
    pub message: String,
}

impl Problem {
    /// An error.
    pub fn error(
        code: &'static str,
        location: impl Into<String>,
        field: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Error,
            code,
            location: location.into(),
            field: field.into(),
            value: value.into(),
            message: message.into(),
        }
    }

    /// The same finding as a warning.
    pub fn warning(self) -> Self {
        Self {
            severity: Severity::Warning,
            ..self
        }
    }

    /// Whether it blocks.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{severity}: {}", self.location)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
            if !self.value.is_empty() {
                write!(f, " = {}", self.value)?;
            }
        }
        write!(f, ": {} [{}]", self.message, self.code)
    }
}
