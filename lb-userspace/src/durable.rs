//! Writing a file so that a crash at any moment leaves either the old
//! content or the new, never a mix: a temporary file beside it, fsync,
//! rename over it, fsync of the directory.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Why a durable write failed, and on which path.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The path names no file.
    #[error("{0} names no file")]
    NoFile(PathBuf),
    /// A step of the write failed.
    #[error("{step} {path}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// To which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Tags an I/O error with its step and path.
fn at(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DurableError {
    let path = path.to_path_buf();
    move |source| DurableError::Io { step, path, source }
}

/// Replaces `path` with `content` atomically and durably; the file gets
/// `mode` (permission bits).
pub fn write(path: &Path, content: &[u8], mode: u32) -> Result<(), DurableError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| DurableError::NoFile(path.to_path_buf()))?;
    let temporary = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temporary)
            .map_err(at("creating", &temporary))?;
        file.write_all(content)
            .and_then(|()| file.sync_all())
            .map_err(at("writing", &temporary))?;
        std::fs::rename(&temporary, path).map_err(at("renaming it over", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(at("syncing directory", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("fulcrum-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file.toml");
        write(&path, b"old", 0o600).unwrap();
        write(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "only the file itself: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
