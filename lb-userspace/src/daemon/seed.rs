//! This host's flow hash seed: the config's `flow_hash_seed` when set (so
//! that a group of hosts shares one), else a seed generated once from the
//! kernel's random source and kept, readable by root only, beside the
//! journal, so that a restart or a reboot hashes flows as before.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use lb_common::flow_hash::FlowSeed;

use crate::config::Secret;
use crate::durable;

/// The kept seed's file name, in the journal's directory.
pub const FILE_NAME: &str = "flow-hash-seed";

/// Where the generated seed is kept, for a journal at `journal`.
pub fn path_beside(journal: &Path) -> PathBuf {
    journal.with_file_name(FILE_NAME)
}

/// The seed to use and where it came from.
pub fn resolve(configured: Option<Secret>, kept: &Path) -> anyhow::Result<(FlowSeed, String)> {
    if let Some(secret) = configured {
        return Ok((secret.0, "the config's flow_hash_seed".into()));
    }
    match std::fs::read_to_string(kept) {
        Ok(text) => {
            let secret: Secret = text
                .parse()
                .map_err(|why| anyhow::anyhow!("{why}"))
                .with_context(|| {
                    format!("reading the flow hash seed kept in {}", kept.display())
                })?;
            Ok((secret.0, format!("the seed kept in {}", kept.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = Secret(generate()?);
            if let Some(dir) = kept.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            durable::write(kept, format!("{secret}\n").as_bytes(), 0o600)
                .with_context(|| format!("keeping the flow hash seed in {}", kept.display()))?;
            Ok((
                secret.0,
                format!("a new seed, generated and kept in {}", kept.display()),
            ))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", kept.display())),
    }
}

/// 128 bits from the kernel's random source.
fn generate() -> anyhow::Result<FlowSeed> {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        bail!(
            "getrandom gave {got} of 16 bytes: {}",
            std::io::Error::last_os_error()
        );
    }
    let (a, b) = bytes.split_at(8);
    let word = |half: &[u8]| u64::from_le_bytes(half.try_into().expect("8 bytes"));
    Ok(FlowSeed([word(a), word(b)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_seed_is_kept_and_read_back() {
        let dir = std::env::temp_dir().join(format!("fulcrum-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kept = dir.join(FILE_NAME);
        let (first, from) = resolve(None, &kept).unwrap();
        assert!(from.contains("generated"), "{from}");
        assert_ne!(first, FlowSeed::default());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only root reads the seed");
        let (again, from) = resolve(None, &kept).unwrap();
        assert_eq!(again, first, "{from}");
        let configured: Secret = "000102030405060708090a0b0c0d0e0f".parse().unwrap();
        assert_eq!(resolve(Some(configured), &kept).unwrap().0, configured.0);
        std::fs::write(&kept, "not hex\n").unwrap();
        let err = resolve(None, &kept).unwrap_err();
        assert!(format!("{err:#}").contains("32 hex digits"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
