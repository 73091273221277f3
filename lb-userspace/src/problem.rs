//! A problem found in a config or a plan: where (VIP, backend), which
//! field, the value, why, and how bad. Validation collects all of them in
//! one pass instead of stopping at the first. What a problem echoes of
//! the config is cut short and has its control characters escaped, so a
//! hostile value can neither flood the output nor forge a line or drive
//! the terminal.

use std::{borrow::Cow, fmt};

use serde::{Deserialize, Serialize};

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; does not block.
    Warning,
    /// Blocks validation and apply.
    Error,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// A stable machine-readable name, e.g. `duplicate-backend` (one of
    /// this build's own, unless read from an answer of the daemon's).
    pub code: Cow<'static, str>,
    /// Where: `config`, `vip "web"`, `vip "web" backend "b1"`, ...
    pub location: String,
    /// The field, e.g. `weight`; empty when the whole entry is at fault.
    pub field: String,
    /// The offending value as written (or computed), possibly empty.
    pub value: String,
    /// Why it is a problem, for a person.
    pub message: String,
}

/// The most characters of a field or value a problem echoes: enough for
/// any address, key or number.
const ECHOED_CHARS: usize = 64;

/// The most characters of a location or message: ours, with values in
/// them.
const PROSE_CHARS: usize = 1024;

/// Whether `c` would act instead of being shown: a control character
/// (newline, ESC, ...) or a bidirectional formatting character, which
/// reorders the text after it.
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A name as a location shows it: quoted and escaped as Rust's `{:?}`
/// does, and cut after `ECHOED_CHARS` characters, so that a hostile name
/// repeated in the location of each of its backends' problems costs
/// little.
pub fn quoted(name: &str) -> String {
    match name.char_indices().nth(ECHOED_CHARS) {
        None => format!("{name:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &name[..end], name.len()),
    }
}

/// `text` to print as it is but inert: each unprintable character escaped.
pub fn escaped(text: &str) -> String {
    printable(text, usize::MAX)
}

/// `text` to print: each unprintable character escaped (`\n`, `\u{1b}`),
/// and at most `limit` characters of it, then `… (N bytes)`.
pub fn printable(text: &str, limit: usize) -> String {
    let mut shown = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == limit {
            shown.push_str(&format!("… ({} bytes)", text.len()));
            break;
        }
        if is_unprintable(c) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
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
            code: Cow::Borrowed(code),
            location: printable(&location.into(), PROSE_CHARS),
            field: printable(&field.into(), ECHOED_CHARS),
            value: printable(&value.into(), ECHOED_CHARS),
            message: printable(&message.into(), PROSE_CHARS),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_problem_echoes_is_short_and_inert() {
        let huge = "a".repeat(50 << 20);
        let problem = Problem::error(
            "test",
            "vip \"web\u{1b}[2J\"",
            "name\nerror: forged",
            huge.as_str(),
            format!("{huge} is bad"),
        );
        assert_eq!(problem.location, "vip \"web\\u{1b}[2J\"");
        assert_eq!(problem.field, "name\\nerror: forged");
        assert_eq!(
            problem.value,
            format!("{}… (52428800 bytes)", "a".repeat(64))
        );
        assert_eq!(
            problem.message,
            format!("{}… (52428807 bytes)", "a".repeat(1024))
        );
        let shown = problem.to_string();
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(!shown.chars().any(is_unprintable), "{shown:?}");
    }

    #[test]
    fn ordinary_text_is_echoed_as_it_is() {
        let problem = Problem::error(
            "test",
            "vip \"web\" backend \"b1\"",
            "weight",
            "100 ✓",
            "ünïcode stays",
        );
        assert_eq!(problem.location, "vip \"web\" backend \"b1\"");
        assert_eq!(problem.value, "100 ✓");
        assert_eq!(problem.message, "ünïcode stays");
        assert_eq!(printable("a\u{202e}b\tc", 10), "a\\u{202e}b\\tc");
        assert_eq!(quoted("b1\n"), "\"b1\\n\"");
        assert_eq!(
            quoted(&"é".repeat(100)),
            format!("{:?}… (200 bytes)", "é".repeat(64))
        );
    }
}
