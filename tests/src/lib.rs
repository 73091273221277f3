//! Helpers for Fulcrum's kernel tests. Placeholder.
