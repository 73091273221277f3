//! A scratch directory of a test's own, removed when it is dropped, also
//! when the test fails.

use std::path::PathBuf;

/// A directory under the system's temporary directory, named after the
/// test and this process.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Makes `fulcrum-NAME-PID`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fulcrum-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
