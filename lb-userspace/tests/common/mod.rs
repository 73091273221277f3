//! What the binary-level tests share: the `fulcrum` binary under test and
//! a scratch directory that removes itself.

use std::{path::PathBuf, process::Command};

/// The `fulcrum` binary cargo built for these tests.
pub fn fulcrum() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fulcrum"))
}

/// `command` under guards: killed after a minute, and unable to map more
/// than 4 GiB, so that a regression that hangs or grows without end fails
/// its test instead of stalling CI or the machine.
pub fn guarded(command: Command) -> Command {
    let mut guarded = Command::new("sh");
    guarded
        .args([
            "-c",
            "ulimit -v 4194304 && exec timeout --signal=KILL 60 \"$0\" \"$@\"",
        ])
        .arg(command.get_program())
        .args(command.get_args());
    guarded
}

/// A temporary directory, removed on drop (also when a test fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after the test.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fulcrum-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `text` to `name` inside the directory.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
