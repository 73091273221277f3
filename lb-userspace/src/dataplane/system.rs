//! What loading, attaching and pinning BPF needs from the host: the
//! privileges to do it, bpffs mounted at `/sys/fs/bpf`, and whether the
//! pins on it outlive this process.

use std::{os::unix::fs::MetadataExt as _, path::Path};

use serde::{Deserialize, Serialize};

/// Why this host is not ready to load, attach or pin BPF. Each message
/// names the file or step; the underlying error, if any, is its source.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// This process's status could not be read.
    #[error("reading /proc/self/status")]
    Status(#[source] std::io::Error),
    /// This process's status does not say its effective capabilities.
    #[error("no CapEff line in /proc/self/status")]
    NoCapabilities,
    /// This process lacks a capability XDP needs.
    #[error(
        "missing privileges: loading, attaching and verifying XDP needs root \
         (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    )]
    Privileges,
    /// bpffs's directory could not be made.
    #[error("creating {BPFFS}")]
    CreateBpffs(#[source] std::io::Error),
    /// bpffs could not be mounted.
    #[error("mounting bpffs at {BPFFS}")]
    MountBpffs(#[source] std::io::Error),
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Fails unless this process may load and attach XDP programs.
pub fn require_bpf_privileges() -> Result<(), SystemError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(SystemError::Status)?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or(SystemError::NoCapabilities)?;
    let has = |cap: u32| effective & (1 << cap) != 0;
    // CAP_SYS_ADMIN too: reading a lookup table back goes through
    // BPF_MAP_GET_FD_BY_ID, which the kernel allows only with it.
    if !(has(CAP_NET_ADMIN) && has(CAP_BPF) && has(CAP_SYS_ADMIN)) {
        return Err(SystemError::Privileges);
    }
    Ok(())
}

/// bpffs's `f_type` (filesystem magic numbers are 32-bit; the width of
/// `f_type` depends on the architecture).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at `/sys/fs/bpf` unless it is already there. Returns
/// whether it mounted it.
pub fn ensure_bpffs() -> Result<bool, SystemError> {
    if rustix::fs::statfs(BPFFS).is_ok_and(|stats| stats.f_type as u32 == BPF_FS_MAGIC) {
        return Ok(false);
    }
    std::fs::create_dir_all(BPFFS).map_err(SystemError::CreateBpffs)?;
    rustix::mount::mount(
        "bpf",
        BPFFS,
        "bpf",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|errno| SystemError::MountBpffs(errno.into()))?;
    Ok(true)
}

/// Whether the pinned data plane outlives this process: pinned objects
/// live as long as their bpffs is mounted somewhere, and a bpffs mounted
/// only in a mount namespace of this process's own goes with it. A crash
/// or restart then detaches the data plane: every flow stops.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PinSurvival {
    /// Whether the pins outlive this process.
    pub survives: bool,
    /// Why, in a sentence an operator can act on.
    pub why: String,
}

/// What the host says about the bpffs holding the pins.
#[derive(Clone, Copy, Debug)]
struct MountFacts {
    /// This process is in the host's (initial) PID namespace, so PID 1 is
    /// the host's init.
    host_pids: bool,
    /// Whether PID 1 sees the same filesystem at the pins' path (`None`:
    /// PID 1's mounts cannot be read here).
    init_sees_it: Option<bool>,
    /// `fulcrum` mounted this bpffs itself at start.
    mounted_here: bool,
    /// Another process is in this process's mount namespace.
    shared: bool,
}

/// The inode the kernel gives the initial PID namespace
/// (`PROC_PID_INIT_INO`).
const INIT_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// Judges whether the pins under `pin_dir` outlive this process;
/// `mounted_here`: `ensure_bpffs` mounted bpffs at this start.
pub fn pin_survival(pin_dir: &Path, mounted_here: bool) -> PinSurvival {
    let host_pids = std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino() == INIT_PID_NAMESPACE)
        .unwrap_or(false);
    // Through /proc/1/root the path resolves in PID 1's mount namespace.
    let init_sees_it = std::fs::metadata(pin_dir).ok().and_then(|ours| {
        let theirs = Path::new("/proc/1/root").join(pin_dir.strip_prefix("/").unwrap_or(pin_dir));
        match std::fs::metadata(theirs) {
            Ok(theirs) => Some(theirs.dev() == ours.dev()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
            Err(_) => None,
        }
    });
    judge(
        pin_dir,
        MountFacts {
            host_pids,
            init_sees_it,
            mounted_here,
            shared: mount_namespace_shared(),
        },
    )
}

/// Whether any other process (that this one may inspect) is in this
/// process's mount namespace.
fn mount_namespace_shared() -> bool {
    let Ok(ours) = std::fs::read_link("/proc/self/ns/mnt") else {
        return false;
    };
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let pid = name.to_string_lossy();
        pid.bytes().all(|b| b.is_ascii_digit())
            && pid != me
            && std::fs::read_link(entry.path().join("ns/mnt")).is_ok_and(|theirs| theirs == ours)
    })
}

fn judge(pin_dir: &Path, facts: MountFacts) -> PinSurvival {
    let dir = pin_dir.display();
    let dies = "a crash or restart of fulcrum detaches the data plane and every flow stops";
    let (survives, why) = match facts {
        MountFacts {
            host_pids: true,
            init_sees_it: Some(true),
            ..
        } => (
            true,
            format!("{dir} is on the bpffs of the host's init mount namespace"),
        ),
        MountFacts {
            host_pids: true,
            init_sees_it: Some(false),
            ..
        } => (
            false,
            format!(
                "{dir} is on a bpffs that the host's init process does not see (a mount \
                 namespace of fulcrum's own, as under `ip netns exec`): {dies}; run fulcrum \
                 in the host's mount namespace (`nsenter --net=/run/netns/NAME` enters only \
                 the network namespace)"
            ),
        ),
        MountFacts {
            host_pids: false,
            mounted_here: true,
            ..
        } => (
            false,
            format!(
                "fulcrum mounted the bpffs holding {dir} inside its container, whose mount \
                 namespace ends with it: {dies}; give the container the host's /sys/fs/bpf \
                 (a bind mount)"
            ),
        ),
        MountFacts {
            mounted_here: true,
            shared: false,
            ..
        } => (
            false,
            format!(
                "fulcrum mounted the bpffs holding {dir} in a mount namespace no other \
                 process shares (as under `ip netns exec`): {dies}; run fulcrum in the \
                 host's mount namespace, with the host's /sys/fs/bpf"
            ),
        ),
        MountFacts {
            mounted_here: true,
            shared: true,
            ..
        } => (
            true,
            format!(
                "fulcrum mounted the bpffs holding {dir} in a mount namespace other \
                 processes share: it lasts while they run"
            ),
        ),
        MountFacts {
            mounted_here: false,
            ..
        } => (
            true,
            format!(
                "{dir} is on a bpffs mounted before fulcrum started (in a container: it \
                 outlives fulcrum when it is the host's /sys/fs/bpf)"
            ),
        ),
    };
    PinSurvival { survives, why }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(
        host_pids: bool,
        init_sees_it: Option<bool>,
        mounted_here: bool,
        shared: bool,
    ) -> bool {
        let facts = MountFacts {
            host_pids,
            init_sees_it,
            mounted_here,
            shared,
        };
        judge(Path::new("/sys/fs/bpf/fulcrum/eth0"), facts).survives
    }

    #[test]
    fn pins_survive_on_the_bpffs_the_hosts_init_sees() {
        assert!(judged(true, Some(true), false, true));
        assert!(
            judged(true, Some(true), true, true),
            "mounted by fulcrum on the host"
        );
    }

    #[test]
    fn pins_die_on_a_bpffs_the_hosts_init_does_not_see() {
        assert!(!judged(true, Some(false), true, false), "ip netns exec");
        assert!(
            !judged(true, Some(false), false, true),
            "another bpffs than PID 1's"
        );
    }

    #[test]
    fn in_a_container_pins_die_on_a_bpffs_fulcrum_mounted() {
        assert!(!judged(false, None, true, true));
        assert!(
            !judged(false, Some(true), true, true),
            "PID 1 is the container's"
        );
        assert!(
            judged(false, Some(true), false, true),
            "the bpffs it was given"
        );
    }

    #[test]
    fn unable_to_see_pid_1_a_bpffs_fulcrum_mounted_alone_dies() {
        assert!(!judged(true, None, true, false), "ip netns exec");
        assert!(judged(true, None, true, true), "others hold the namespace");
        assert!(judged(true, None, false, false), "mounted before fulcrum");
    }
}
