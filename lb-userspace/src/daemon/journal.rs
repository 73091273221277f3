//! The apply journal: one JSON line per change the gate decided, appended
//! and fsynced before the caller hears the answer: when, who (the caller's
//! uid from the socket's peer credentials), which door, the generation, the
//! plan summary, every forced override, and the result.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{monitor::LastChange, policy::Outcome};

/// How much of the journal's end `last_changes` reads.
const TAIL: u64 = 8 << 20;

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
    /// What the gate made of it.
    pub result: Outcome,
    /// Per VIP: `name: change, flows moved, capacity removed`.
    pub plan: Vec<String>,
    /// The endpoints (`address:port/protocol`) of the VIPs an applied
    /// change changed.
    pub changed: Vec<String>,
    /// The overrides `--force` let through.
    pub forced: Vec<String>,
    /// Why it was refused or failed.
    pub reasons: Vec<String>,
}

/// What `last_changes` reads of a line.
#[derive(Deserialize)]
struct Applied {
    time: f64,
    source: String,
    generation: u64,
    result: String,
    #[serde(default)]
    changed: Vec<String>,
}

/// The append-only journal file.
#[derive(Clone, Debug)]
pub struct Journal(PathBuf);

impl Journal {
    /// The journal at `path` (created with its directory on first write).
    pub fn new(path: &Path) -> Self {
        Self(path.to_path_buf())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Per VIP endpoint, the last applied change that changed it, from the
    /// journal's last 8 MiB (empty when there is no journal; lines it
    /// cannot read are skipped).
    pub fn last_changes(&self) -> HashMap<String, LastChange> {
        let mut changes = HashMap::new();
        let Ok(mut file) = File::open(&self.0) else {
            return changes;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let from = len.saturating_sub(TAIL);
        if file.seek(SeekFrom::Start(from)).is_err() {
            return changes;
        }
        let mut lines = BufReader::new(file).lines();
        if from > 0 {
            // The seek landed inside a line.
            lines.next();
        }
        for line in lines.map_while(Result::ok) {
            let Ok(entry) = serde_json::from_str::<Applied>(&line) else {
                continue;
            };
            if entry.result != "applied" {
                continue;
            }
            for endpoint in entry.changed {
                changes.insert(
                    endpoint,
                    LastChange {
                        generation: entry.generation,
                        time: entry.time,
                        source: entry.source.clone(),
                    },
                );
            }
        }
        changes
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
