//! The apply journal: one JSON line per change the gate decided, appended
//! and fsynced before the caller hears the answer: when, who (the caller's
//! uid from the socket's peer credentials), which door, the generation, the
//! plan summary, every forced override, and the result.

use std::{
    fs::OpenOptions,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::Serialize;

/// Where the journal lives unless told otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/fulcrum/journal.jsonl";

/// One journal line.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// The caller's uid (`None` for the daemon's own doors: start, SIGHUP, the file).
    pub uid: Option<u32>,
    /// Which door the change came by: `api apply`, `api backend set-weight`, `sighup`, ...
    pub source: String,
    /// The generation after the change (unchanged when refused).
    pub generation: u64,
    /// `applied`, `refused` or `failed`.
    pub result: &'static str,
    /// Per VIP: `name: change, flows moved, capacity removed`.
    pub plan: Vec<String>,
    /// The overrides `--force` let through.
    pub forced: Vec<String>,
    /// Why it was refused or failed.
    pub reasons: Vec<String>,
}

/// The append-only journal file.
#[derive(Clone, Debug)]
pub struct Journal(PathBuf);

impl Journal {
    /// The journal at `path` (created with its directory on first write).
    pub fn new(path: &Path) -> Self {
        Self(path.to_path_buf())
    }

    /// Appends one entry and syncs it to disk.
    pub fn append(&self, entry: &Entry) -> anyhow::Result<()> {
        if let Some(dir) = self.0.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .with_context(|| format!("opening the journal {}", self.0.display()))?;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("appending to the journal {}", self.0.display()))
    }
}

/// Now, in seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
