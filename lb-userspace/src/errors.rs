//! How an error is printed: its own message, then each cause below it.
//! Every error type of this crate says what failed and leaves the cause
//! to its `source`, so printing one whole means walking that chain, as
//! anyhow's `{:#}` does.

use std::{error::Error, fmt};

/// Prints an error and its causes, `what: cause: cause`.
pub struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_is_printed_once_in_order() {
        let io = std::io::Error::other("disk on fire");
        let error = crate::durable::DurableError::Io {
            step: "writing",
            path: "/x".into(),
            source: io,
        };
        assert_eq!(Chain(&error).to_string(), "writing /x: disk on fire");
        assert_eq!(
            format!("{:#}", anyhow::Error::from(error)),
            "writing /x: disk on fire"
        );
    }
}
